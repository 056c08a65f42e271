"""DICOM input, one home for it: folders scanned into series (:mod:`.scan`), their slices and geometry
(:mod:`.series`), pixels decoded alike on every path (:mod:`.decode`), the series to segment (:mod:`.select`),
and DICOMweb servers (:mod:`.dicomweb`, imported on its own: it needs ``dicomweb-client``).

Layers run downwards: ``scan`` uses ``decode`` and ``series``; ``decode`` uses ``series``; ``series`` uses
neither. Output formats (DICOM SEG, NIfTI, overlays) live in :mod:`bt_monai.writers`.
"""

from bt_monai.utils.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_RULE": "bt_monai.data.dicom.select",
    "DicomFrame": "bt_monai.data.dicom.series",
    "DicomScan": "bt_monai.data.dicom.scan",
    "DicomSeries": "bt_monai.data.dicom.series",
    "DicomSliceReader": "bt_monai.data.dicom.decode",
    "SeriesChoice": "bt_monai.data.dicom.select",
    "choose_series": "bt_monai.data.dicom.select",
    "compile_series_pattern": "bt_monai.data.dicom.select",
    "decode_frame": "bt_monai.data.dicom.decode",
    "dicom_voxel_volume_mm3": "bt_monai.data.dicom.series",
    "invert_monochrome1": "bt_monai.data.dicom.decode",
    "is_dicom_file": "bt_monai.data.dicom.scan",
    "iter_frame_pixels": "bt_monai.data.dicom.decode",
    "read_header": "bt_monai.data.dicom.scan",
    "scan_dicom_folder": "bt_monai.data.dicom.scan",
    "to_channel_first": "bt_monai.data.dicom.decode",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
