"""DICOM pixels: one decoding for every DICOM path (series slices, multi-frame objects, single files).

Pixels are decoded with pydicom and its pixel-data plugins (compressed transfer syntaxes: python-gdcm for
JPEG baseline, JPEG lossless and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pydicom itself for RLE), with
RescaleSlope / Intercept (per frame for enhanced multi-frame objects) and MONOCHROME1 inverted by
:func:`invert_monochrome1`, which :class:`DicomSliceReader` (single files through MONAI's ``LoadImage``) uses too,
so that every DICOM path agrees.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from monai.data import PydicomReader

from bt_monai.data.dicom.series import DicomFrame
from bt_monai.utils import quiet_loggers

__all__ = ["DicomSliceReader", "decode_frame", "invert_monochrome1", "iter_frame_pixels", "to_channel_first"]


def invert_monochrome1(data: np.ndarray) -> np.ndarray:
    """MONOCHROME1 (bright = low value) to MONOCHROME2 within the array's own range, as float32.

    One definition for every DICOM path (single slices, series, multi-frame objects), so that they agree.
    """
    data = np.asarray(data, dtype=np.float32)
    return data.max() + data.min() - data


class DicomSliceReader(PydicomReader):
    """MONAI's ``PydicomReader`` (which applies RescaleSlope/Intercept) plus MONOCHROME1 inversion.

    MONOCHROME1 stores bright tissue as low values; inverting within the slice's own value range keeps
    intensities comparable with MONOCHROME2 series after per-slice scaling.
    """

    def _get_array_data(self, img, filename):
        data = super()._get_array_data(img, filename)
        if str(getattr(img, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            data = invert_monochrome1(data)
        return data


def decode_frame(frame: DicomFrame, ds=None) -> np.ndarray:
    """Pixels of one slice as float32 ``(rows, columns)`` (grayscale) or ``(rows, columns, 3)`` (colour).

    Rescale slope / intercept applied; MONOCHROME1 inverted (:func:`invert_monochrome1`); YBR turned into
    RGB and palette colour applied by pydicom. ``ds``: the instance's dataset if already read (saves a read).
    Raises when the pixel data cannot be decoded (truncated, or no plugin for its transfer syntax).
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    if ds is None:
        with quiet_loggers("pydicom", level=logging.CRITICAL):  # the caller reports problems
            ds = pydicom.dcmread(frame.path)
    with quiet_loggers("pydicom", level=logging.CRITICAL):
        pixels = pixel_array(ds, index=frame.frame)
        if frame.photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
    pixels = np.asarray(pixels)
    if pixels.shape[:2] != (frame.rows, frame.columns):
        raise ValueError(f"decoded pixels of shape {pixels.shape}, expected ({frame.rows}, {frame.columns})")
    pixels = pixels.astype(np.float32)
    if pixels.ndim == 2 and frame.rescale is not None:
        slope, intercept = frame.rescale
        pixels = pixels * np.float32(slope) + np.float32(intercept)  # as MONAI's PydicomReader: float32
    if frame.photometric == "MONOCHROME1":
        pixels = invert_monochrome1(pixels)
    return pixels


def iter_frame_pixels(frames: Iterable[DicomFrame]) -> Iterator[tuple[DicomFrame, np.ndarray | Exception]]:
    """Decode ``frames`` in order, yielding ``(frame, pixels)`` or ``(frame, exception)`` for a failed one.

    The last instance read is kept, so the frames of one multi-frame object are read from disk once.
    """
    import pydicom

    cached: tuple[Path, object] | None = None
    for frame in frames:
        try:
            if cached is None or cached[0] != frame.path:
                cached = None
                with quiet_loggers("pydicom", level=logging.CRITICAL):
                    cached = (frame.path, pydicom.dcmread(frame.path))
            yield frame, decode_frame(frame, cached[1])
        except Exception as e:
            yield frame, e


def to_channel_first(pixels: np.ndarray) -> np.ndarray:
    """``(rows, columns)`` or ``(rows, columns, C)`` to MONAI's ``(C, W, H)`` (first spatial axis = column)."""
    return pixels.T[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 1, 0))
