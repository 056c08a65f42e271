"""An inferer that runs the network under autocast (bf16 on CPU, fp16/bf16 on CUDA) and in channels-last."""

from __future__ import annotations

import functools
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

__all__ = ["AutocastInferer", "cpu_supports_bf16"]


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class AutocastInferer(Inferer):
    """Call ``network(inputs)`` under ``torch.autocast`` and return float32 outputs.

    Args:
        enabled: use autocast at all (False: plain float32).
        dtype: autocast dtype; None picks bf16 (on CPU only where :func:`cpu_supports_bf16`) and fp16 on CUDA.
        channels_last: feed the network channels-last inputs (pair it with a channels-last network).

    MetaTensor inputs are run as plain tensors (no per-op metadata overhead); the output gets the input's
    metadata back, so MONAI postprocessing (``Invertd``, ``SaveImaged``) still works.
    """

    def __init__(self, enabled: bool = True, dtype: torch.dtype | str | None = None, channels_last: bool = True):
        super().__init__()
        self.enabled = enabled
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.channels_last = channels_last

    def autocast_dtype(self, device_type: str) -> torch.dtype | None:
        """The dtype autocast will use on ``device_type``, or None for plain float32."""
        if not self.enabled:
            return None
        if self.dtype is not None:
            return self.dtype
        if device_type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        meta = inputs if isinstance(inputs, MetaTensor) else None
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = network(x, *args, **kwargs)
        out = out.float().contiguous()
        if meta is not None:
            out = MetaTensor(out).copy_meta_from(meta)  # keeps is_batch, meta and applied operations
        return out
