"""State dicts as they come in checkpoint files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["unwrap_state_dict"]


def unwrap_state_dict(obj: object, keys: Sequence[str] = ("model", "state_dict", "network")) -> object:
    """The state dict inside a checkpoint: ``obj[key]`` for the first of ``keys`` holding a dict, repeatedly.

    Bundle checkpoints hold ``{"model": ..., "optimizer": ...}``, torchvision / Lightning files
    ``{"state_dict": ...}``; a plain state dict is returned as it is.
    """
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj
