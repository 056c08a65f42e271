"""Masks as image files beside their slices."""

from __future__ import annotations

import io
import os

import numpy as np

from bt_monai.utils import atomic_write_bytes

__all__ = ["write_mask_png"]


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a 0/1 ``(H, W)`` mask as an 8-bit PNG of 0 and 255, atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
