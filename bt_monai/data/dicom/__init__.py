"""DICOM input, one home for it: folders scanned into series (:mod:`.scan`), their slices and geometry
(:mod:`.series`), pixels decoded alike on every path (:mod:`.decode`), the series to segment (:mod:`.select`),
and DICOMweb servers (:mod:`.dicomweb`, imported on its own: it needs ``dicomweb-client``).

Layers run downwards: ``scan`` uses ``decode`` and ``series``; ``decode`` uses ``series``; ``series`` uses
neither. Output formats (DICOM SEG, NIfTI, overlays) live in :mod:`bt_monai.writers`.
"""

from bt_monai.data.dicom.decode import (
    DicomSliceReader,
    decode_frame,
    invert_monochrome1,
    iter_frame_pixels,
    to_channel_first,
)
from bt_monai.data.dicom.scan import DicomScan, is_dicom_file, read_header, scan_dicom_folder
from bt_monai.data.dicom.select import DEFAULT_RULE, SeriesChoice, choose_series, compile_series_pattern
from bt_monai.data.dicom.series import DicomFrame, DicomSeries, dicom_voxel_volume_mm3

__all__ = [
    "DEFAULT_RULE",
    "DicomFrame",
    "DicomScan",
    "DicomSeries",
    "DicomSliceReader",
    "SeriesChoice",
    "choose_series",
    "compile_series_pattern",
    "decode_frame",
    "dicom_voxel_volume_mm3",
    "invert_monochrome1",
    "is_dicom_file",
    "iter_frame_pixels",
    "read_header",
    "scan_dicom_folder",
    "to_channel_first",
]
