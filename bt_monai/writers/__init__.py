"""Output formats, one home for them: DICOM SEG and SR, NIfTI masks, PNG masks and overlays, evaluation reports,
the list of skipped inputs (``skipped.csv``).

Writers may use :mod:`bt_monai.utils` and :mod:`bt_monai.data`, never the apps, inferers or handlers. Heavy
libraries (highdicom, nibabel, PIL, scipy, matplotlib) are imported inside the functions: importing this package
is cheap.
"""

from bt_monai.utils.lazy import lazy_exports

_EXPORTS = {
    "TumorMeasurements": "bt_monai.writers.sr",
    "nifti_bytes": "bt_monai.writers.nifti",
    "outline": "bt_monai.writers.overlays",
    "overlay_png": "bt_monai.writers.overlays",
    "overlay_rgb": "bt_monai.writers.overlays",
    "seg_bytes": "bt_monai.writers.seg",
    "source_headers": "bt_monai.writers.derived",
    "sr_bytes": "bt_monai.writers.sr",
    "write_mask_png": "bt_monai.writers.masks",
    "write_skipped": "bt_monai.writers.skipped",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
