"""ImageNet weights for MobileNetV2: torchvision's weights API (hub cache or download) or a local file."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
from torchvision.models import MobileNet_V2_Weights

from bt_monai.utils import unwrap_state_dict

__all__ = ["PretrainedWeightsError", "hub_cache_file", "load_mobilenet_v2_features"]


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be had; the message says which file to place."""


def hub_cache_file(weights: MobileNet_V2_Weights) -> Path:
    """Where torchvision looks for ``weights`` before downloading (``$TORCH_HOME/hub/checkpoints/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _resolve(pretrained: bool | str | os.PathLike) -> MobileNet_V2_Weights | Path:
    if pretrained is True:
        return MobileNet_V2_Weights.IMAGENET1K_V1
    if isinstance(pretrained, str) and pretrained in MobileNet_V2_Weights.__members__:
        return MobileNet_V2_Weights[pretrained]
    return Path(pretrained).expanduser()


def load_mobilenet_v2_features(pretrained: bool | str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``features.*`` part of a MobileNetV2 state dict, keys without the ``features.`` prefix.

    ``pretrained``: True (torchvision's ``IMAGENET1K_V1``), a weights name (``"IMAGENET1K_V2"``), or the path
    of a local file holding a torchvision ``mobilenet_v2`` state dict (also accepted: a dict with a
    ``state_dict`` or ``model`` entry, or a bt_monai network's state dict). Files load with
    ``weights_only=True``: no code in them runs.
    """
    source = _resolve(pretrained)
    if isinstance(source, Path):
        if not source.is_file():
            raise PretrainedWeightsError(
                f"pretrained weights file not found: {source}. Give the path of a torchvision mobilenet_v2 "
                "state dict, or set pretrained=False to train from scratch."
            )
        state = torch.load(source, map_location="cpu", weights_only=True)
        origin = str(source)
    else:
        cache = hub_cache_file(source)
        try:
            state = source.get_state_dict(progress=False)
        except (URLError, OSError, ConnectionError) as e:
            raise PretrainedWeightsError(
                f"ImageNet weights {source} for MobileNetV2 are not in the torch hub cache and could not be "
                f"downloaded ({e}). Place the file {cache.name} (from {source.url}) at {cache}, or pass "
                "pretrained='/path/to/mobilenet_v2.pth', or set pretrained=False to train from scratch."
            ) from e
        origin = str(cache)
    state = unwrap_state_dict(state, ("state_dict", "model"))
    for prefix in ("features.", "encoder.features."):
        features = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if features:
            return features
    raise PretrainedWeightsError(f"{origin} holds no MobileNetV2 'features.*' weights")
