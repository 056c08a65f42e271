"""Masks as a NIfTI volume: what research viewers overlay on the source series."""

from __future__ import annotations

import gzip

import numpy as np

__all__ = ["nifti_bytes"]


def nifti_bytes(masks: list[np.ndarray], affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 of ``(H, W)`` masks stacked as a ``(W, H, D)`` uint8 volume (0/1) with ``affine`` (RAS)."""
    import nibabel as nib

    volume = np.stack([m.T for m in masks], axis=-1).astype(np.uint8)
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)  # scanner coordinates: overlays the source in research viewers
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)  # no time stamp: the same masks, the same bytes
