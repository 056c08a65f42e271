"""One slice file to pixels, whatever its format: the streaming path's decoder."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from bt_monai.data.pixels import PIXEL_FORMATS, read_slice_pixels, slice_format

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["SliceDecoder"]


class SliceDecoder:
    """Decode a slice file to ``(C, W, H)`` float32: TIFF/PNG/JPEG without MONAI, other formats with SliceLoader."""

    def __init__(self) -> None:
        self._loader = None
        self._lock = threading.Lock()

    def __call__(self, path) -> np.ndarray | torch.Tensor:
        if slice_format(path) in PIXEL_FORMATS:
            return read_slice_pixels(path)
        with self._lock:  # built once, on the first DICOM or NIfTI file
            if self._loader is None:
                from bt_monai.data.readers import SliceLoader

                self._loader = SliceLoader()
        return self._loader(path).as_tensor()
