"""MobileNetV2 networks: the encoder (a MONAI ``BaseEncoder``), the U-Net built on it, and the classifier.

Both networks share one encoder class, so their weights are interchangeable: ``encoder.features.*`` of a
trained classifier can initialise the U-Net's encoder.
"""

from __future__ import annotations

import os

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn
from torchvision.models import mobilenet_v2

from bt_monai.networks.pretrained import load_mobilenet_v2_features

__all__ = ["MobileNetV2Encoder", "MobileNetV2UNet", "MobileNetV2Classifier"]

Pretrained = bool | str | os.PathLike


class MobileNetV2Encoder(BaseEncoder, nn.Module):
    """torchvision's ``mobilenet_v2().features`` cut into five stages for a U-Net.

    Input ``(B, in_channels, H, W)``; output a list of five feature maps at strides 2, 4, 8, 16, 32 with
    16, 24, 32, 96 and 1280 channels (the last is the classifier's pre-pooling feature map).
    Registered in MONAI's ``FLEXUNET_BACKBONE`` as ``"mobilenet_v2"``.
    """

    channels = (16, 24, 32, 96, 1280)
    # Index of the last `features` layer of each stage (strides 2, 4, 8, 16, 32).
    stage_ends = (1, 3, 6, 13, 18)

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, pretrained: Pretrained = False) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"MobileNetV2Encoder is 2D only, got spatial_dims={spatial_dims}")
        self.features = mobilenet_v2(weights=None).features
        if in_channels != 3:
            stem = self.features[0][0]
            self.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=2, padding=1, bias=False)
        self.frozen = False
        self.stage_end_indices: list[int] = list(self.stage_ends)  # an instance list, for TorchScript
        if pretrained:
            self.load_pretrained(pretrained)

    def load_pretrained(self, pretrained: Pretrained) -> None:
        """Load ImageNet weights (see :func:`load_mobilenet_v2_features`); a non-RGB stem keeps its init."""
        state = load_mobilenet_v2_features(pretrained)
        own = self.features.state_dict()
        state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        missing = sorted(set(own) - set(state) - {"0.0.weight"})
        if missing:
            raise RuntimeError(f"pretrained weights lack {len(missing)} encoder tensors, e.g. {missing[:5]}")
        self.features.load_state_dict(state, strict=False)

    def freeze(self, frozen: bool = True) -> None:
        """Stop training the encoder: no gradients, and batch norm keeps its running statistics (eval mode)."""
        self.frozen = frozen
        for p in self.features.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> MobileNetV2Encoder:
        super().train(mode and not self.frozen)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.stage_end_indices:
                outputs.append(x)
        return outputs

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 3, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [cls.channels]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(cls.channels)]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return ["mobilenet_v2"]


FLEXUNET_BACKBONE.register_class(MobileNetV2Encoder)


def _require_bool(name: str, value) -> bool:
    # `monai.bundle run --freeze_encoder false` passes the string "false", which would read as True.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} (on the command line write True or False)")
    return value


class MobileNetV2UNet(FlexibleUNet):
    """U-Net with a MobileNetV2 encoder and skip connections: MONAI's ``FlexibleUNet(backbone="mobilenet_v2")``.

    Input ``(B, in_channels, H, W)``, any H and W (zero-padded to multiples of 32 inside, then cropped back);
    output ``(B, out_channels, H, W)`` logits (apply a sigmoid for the tumor probability).

    Args:
        pretrained: False, True (ImageNet through torchvision: hub cache or download), a torchvision
            weights name, or a local weights file.
        freeze_encoder: train the decoder only (the original design's transfer learning).
        decoder_channels, **kwargs: passed to ``FlexibleUNet``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        pretrained: Pretrained = False,
        freeze_encoder: bool = False,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone="mobilenet_v2",
            pretrained=pretrained,
            decoder_channels=decoder_channels,
            spatial_dims=2,
            **kwargs,
        )
        if _require_bool("freeze_encoder", freeze_encoder):
            self.encoder.freeze()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        height, width = inputs.shape[-2], inputs.shape[-1]
        pad_h, pad_w = (32 - height % 32) % 32, (32 - width % 32) % 32
        x = nn.functional.pad(inputs, (0, pad_w, 0, pad_h)) if pad_h or pad_w else inputs
        # FlexibleUNet.forward, spelled out: TorchScript cannot call super().forward.
        logits = self.segmentation_head(self.decoder(self.encoder(x), self.skip_connect))
        return logits[..., :height, :width]


class MobileNetV2Classifier(nn.Module):
    """Tumor detector: MobileNetV2 features, global average pooling, dropout, one dense logit.

    Input ``(B, in_channels, H, W)``; output ``(B, 1)`` logits (sigmoid gives the tumor probability;
    training uses BCE on the logits, which is the sigmoid + BCE of the original design, computed stably).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        pretrained: Pretrained = False,
        freeze_encoder: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = MobileNetV2Encoder(spatial_dims=2, in_channels=in_channels, pretrained=pretrained)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(self.encoder.channels[-1], num_classes))
        if _require_bool("freeze_encoder", freeze_encoder):
            self.encoder.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.encoder(x)[-1]))
