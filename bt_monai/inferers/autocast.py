"""An inferer that runs the network under autocast (bf16 on CPU, fp16/bf16 on CUDA) and in channels-last."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from bt_monai.inferers.execution import autocast_dtype, cpu_supports_bf16, run_network

__all__ = ["AutocastInferer", "cpu_supports_bf16"]


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
        return autocast_dtype(device_type, self.enabled, self.dtype)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        meta = inputs if isinstance(inputs, MetaTensor) else None
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        out = run_network(network, x, self.autocast_dtype(x.device.type), self.channels_last, *args, **kwargs)
        if meta is not None:
            out = MetaTensor(out).copy_meta_from(meta)  # keeps is_batch, meta and applied operations
        return out
