"""Image readers for single 2D MRI slices, used through MONAI's ``LoadImage``.

MONAI's convention holds for every reader here: the first spatial axis is the image column (x) and the second
the row (y), i.e. arrays are ``(W, H)`` or ``(W, H, C)``, transposed with respect to PIL/tifffile's ``(H, W)``.
Reading image and mask with readers that share this convention keeps them aligned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader, MetaTensor, NibabelReader, PILReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.transforms import LoadImage
from monai.utils import MetaKeys, ensure_tuple

from bt_monai.data.dicom.decode import DicomSliceReader
from bt_monai.data.pixels import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    PIL_SUFFIXES,
    TIFF_SUFFIXES,
    _has_suffix,
    check_slice_pixels,
    monai_axes,
    read_tiff,
    slice_format,
    strip_image_suffix,
)
from bt_monai.utils import quiet_loggers

__all__ = [
    "TIFF_SUFFIXES",
    "PIL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "TiffReader",
    "NiftiSliceReader",
    "slice_format",
    "strip_image_suffix",
    "make_slice_readers",
    "SliceLoader",
]


class TiffReader(ImageReader):
    """Read 2D TIFF slices with tifffile: 8- or 16-bit (or float), 1, 3 or 4 samples per pixel.

    PIL cannot read 16-bit multi-sample TIFFs and MONAI would route ``.tif`` to ITK; tifffile reads them all.
    Output follows MONAI's axis convention: ``(W, H)`` or ``(W, H, C)`` (see module docstring).
    """

    def __init__(self, reverse_indexing: bool = True, **kwargs) -> None:
        super().__init__()
        self.reverse_indexing = reverse_indexing
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(_has_suffix(Path(f), TIFF_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> list[np.ndarray] | np.ndarray:
        arrays = [read_tiff(f, **{**self.kwargs, **kwargs}) for f in ensure_tuple(data)]
        for f, array in zip(ensure_tuple(data), arrays, strict=True):
            monai_axes(array, f)  # not a 2D slice: fail here, where the file's name is known
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, dict]:
        img_array: list[np.ndarray] = []
        compatible_meta: dict = {}
        for arr in img if isinstance(img, list) else [img]:  # ensure_tuple would split an array's rows
            arr = np.asarray(arr)
            data = monai_axes(arr, "TIFF", self.reverse_indexing)
            header = {
                MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape[:2]),
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if data.ndim == 3 else float("nan"),
                "dtype": str(arr.dtype),
            }
            img_array.append(data)
            _copy_compatible_dict(header, compatible_meta)
        return _stack_images(img_array, compatible_meta), compatible_meta


class NiftiSliceReader(NibabelReader):
    """MONAI's ``NibabelReader`` for 2D NIfTI slices; a singleton third axis ``(W, H, 1)`` is dropped."""

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)
        if data.ndim == 3 and data.shape[-1] == 1:
            data = data[..., 0]
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(data.shape)
        return data, meta


def make_slice_readers() -> dict[str, ImageReader]:
    """One reader instance per format name returned by :func:`slice_format`."""
    return {
        "tiff": TiffReader(),
        "pil": PILReader(),
        "dicom": DicomSliceReader(),
        "nifti": NiftiSliceReader(),
    }


class SliceLoader:
    """Load one 2D slice as a float32 ``MetaTensor`` of shape ``(C, W, H)``, C = 1, 3 or 4.

    The reader is chosen explicitly from the file (see :func:`slice_format`): TIFF via tifffile, PNG/JPEG via
    PIL, DICOM via pydicom, NIfTI via nibabel, all through MONAI's ``LoadImage``. Values keep the file's own
    range (e.g. 0..255 for 8-bit, rescaled HU-like for DICOM). A file that is not a 2D slice, has no pixels or
    holds NaN/Inf values raises ``ValueError`` naming it. The one reading path of the project: the
    ``LoadSlice`` transform, dataset discovery and evaluation all read through it.
    """

    def __init__(self) -> None:
        self.readers = make_slice_readers()
        # LoadImage also builds MONAI's default readers; the GPU DICOM one warns on every CPU machine.
        with quiet_loggers("monai.data.nvimgcodec_pydicom_plugin"):
            self.loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        fmt = slice_format(filename)
        if fmt is None:
            raise ValueError(f"{filename}: not a supported slice file (TIFF, PNG, JPEG, DICOM or NIfTI expected)")
        img = self.loader(filename, reader=self.readers[fmt])
        check_slice_pixels(img.as_tensor().numpy(), filename)
        return img
