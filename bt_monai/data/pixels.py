"""Slice files as pixel arrays without MONAI: formats by suffix, TIFF/PNG/JPEG decoding, sanity checks.

The light half of the reading path. :class:`bt_monai.data.readers.SliceLoader` (MONAI's ``LoadImage``, every
format, metadata) and :func:`read_slice_pixels` (TIFF, PNG, JPEG: what ``bt-monai infer`` reads most) decode
with the same functions here and give the same ``(C, W, H)`` float32 pixels, so inference over a folder needs
neither MONAI nor ITK.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "TIFF_SUFFIXES",
    "PIL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "PIXEL_FORMATS",
    "slice_format",
    "strip_image_suffix",
    "read_tiff",
    "read_pil",
    "monai_axes",
    "read_slice_pixels",
    "check_slice_pixels",
]

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES
PIXEL_FORMATS = ("tiff", "pil")
"""The formats :func:`read_slice_pixels` decodes (the others need :class:`~bt_monai.data.readers.SliceLoader`)."""


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def strip_image_suffix(name: str) -> str:
    """``name`` without its image extension (``.nii.gz`` counts as one); other names are returned as they are."""
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def slice_format(path: str | os.PathLike) -> str | None:
    """Return ``"tiff"``, ``"pil"``, ``"nifti"`` or ``"dicom"`` for ``path``, or None if it is none of them.

    The suffix decides; a file without a known suffix is DICOM when it carries the ``DICM`` preamble
    (PACS exports often have no extension).
    """
    path = Path(path)
    if _has_suffix(path, TIFF_SUFFIXES):
        return "tiff"
    if _has_suffix(path, PIL_SUFFIXES):
        return "pil"
    if _has_suffix(path, NIFTI_SUFFIXES):
        return "nifti"
    if _has_suffix(path, DICOM_SUFFIXES) or _has_dicom_preamble(path):
        return "dicom"
    return None


def read_tiff(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """The first image of a TIFF as stored, ``(H, W)`` or ``(H, W, S)`` (samples last, planar ones moved there).

    tifffile reads 8- and 16-bit, float and multi-sample TIFFs (PIL cannot read 16-bit multi-sample ones).
    """
    import tifffile

    with tifffile.TiffFile(os.fspath(path)) as tif:
        series = tif.series[0]
        array = series.asarray(**kwargs)
        axes = series.axes
    if "S" in axes and axes.index("S") != len(axes) - 1:
        array = np.moveaxis(array, axes.index("S"), -1)  # planar (separate) samples -> interleaved
    return array


def read_pil(path: str | os.PathLike) -> np.ndarray:
    """A PNG or JPEG as PIL decodes it: ``(H, W)`` or ``(H, W, C)``, the mode's own dtype (as MONAI's PILReader)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def monai_axes(stored: np.ndarray, source: str | os.PathLike, reverse_indexing: bool = True) -> np.ndarray:
    """A 2D slice as tifffile and PIL decode it, ``(H, W)`` or ``(H, W, S)``, in MONAI's axis order ``(W, H)`` or
    ``(W, H, S)`` (first axis = image column; a view, values and dtype as stored).

    A single sample axis ``(H, W, 1)`` is dropped. ``reverse_indexing=False`` keeps ``(H, W)``. Anything but a
    2D image raises ``ValueError`` naming ``source``. The one axis rule of :func:`read_slice_pixels` and
    :class:`bt_monai.data.readers.TiffReader`.
    """
    if stored.ndim == 3 and stored.shape[-1] == 1:
        stored = stored[..., 0]
    if stored.ndim not in (2, 3):
        raise ValueError(f"{source}: expected a 2D slice, got an image of shape {tuple(stored.shape)}")
    return np.moveaxis(stored, 0, 1) if reverse_indexing else stored


def check_slice_pixels(pixels: np.ndarray, filename: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``filename`` unless ``pixels`` is a non-empty ``(C, W, H)`` slice, all finite."""
    if pixels.ndim != 3:
        raise ValueError(f"{filename}: expected a 2D slice, got an image of shape {tuple(pixels.shape)}")
    if pixels.size == 0:
        raise ValueError(f"{filename}: the image has no pixels (shape {tuple(pixels.shape)})")
    if np.issubdtype(pixels.dtype, np.floating):  # integer pixels are finite by construction
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        if bad:  # NaN/Inf would turn the whole network input into NaN after intensity scaling
            raise ValueError(f"{filename}: {bad} pixel value(s) are NaN or infinite")


def read_slice_pixels(path: str | os.PathLike) -> np.ndarray:
    """One TIFF, PNG or JPEG slice as float32 ``(C, W, H)`` (MONAI's axis order), C = 1 to 4; values as stored.

    The same array :class:`~bt_monai.data.readers.SliceLoader` returns for the file, without MONAI. Other
    formats (DICOM, NIfTI) raise ``ValueError``: read them with ``SliceLoader``.
    """
    fmt = slice_format(path)
    if fmt not in PIXEL_FORMATS:
        raise ValueError(f"{path}: read_slice_pixels decodes TIFF, PNG and JPEG only (this is {fmt or 'unknown'})")
    pixels = monai_axes(read_tiff(path) if fmt == "tiff" else read_pil(path), path)  # (W, H[, C])
    pixels = np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 else pixels[None]
    check_slice_pixels(pixels, path)
    return pixels.astype(np.float32)
