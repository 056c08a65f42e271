"""Running a network under autocast and in channels-last, without MONAI (the predictor's path; see
:class:`bt_monai.inferers.AutocastInferer` for the same as a MONAI ``Inferer``)."""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["cpu_supports_bf16", "autocast_dtype", "run_network"]


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device_type: str, enabled: bool = True, dtype: torch.dtype | None = None) -> torch.dtype | None:
    """The dtype autocast uses on ``device_type``, or None for plain float32.

    ``dtype`` None picks fp16 on CUDA and bf16 on CPUs with native bf16 (:func:`cpu_supports_bf16`).
    """
    if not enabled:
        return None
    if dtype is not None:
        return dtype
    if device_type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def run_network(
    network: Any, x: torch.Tensor, dtype: torch.dtype | None, channels_last: bool = True, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """``network(x)`` under autocast to ``dtype`` (None: float32), channels-last for 4D input; float32 out."""
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = network(x, *args, **kwargs)
    return out.float().contiguous()
