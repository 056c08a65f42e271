"""Networks: the MobileNetV2 encoder, U-Net and classifier (importing this registers the encoder in MONAI)."""

from bt_monai.networks.averaging import average_weights, epoch_snapshots, recompute_batch_norm, save_state_dict
from bt_monai.networks.mobilenet_v2 import MobileNetV2Classifier, MobileNetV2Encoder, MobileNetV2UNet
from bt_monai.networks.pretrained import PretrainedWeightsError, hub_cache_file, load_mobilenet_v2_features

__all__ = [
    "MobileNetV2Classifier",
    "MobileNetV2Encoder",
    "MobileNetV2UNet",
    "PretrainedWeightsError",
    "average_weights",
    "epoch_snapshots",
    "hub_cache_file",
    "load_mobilenet_v2_features",
    "recompute_batch_norm",
    "save_state_dict",
]
