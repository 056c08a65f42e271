"""Output formats, one home for them: DICOM SEG and SR, NIfTI masks, PNG masks and overlays, evaluation reports.

Writers may use :mod:`bt_monai.utils` and :mod:`bt_monai.data`, never the apps, inferers or handlers. Heavy
libraries (highdicom, nibabel, PIL, scipy, matplotlib) are imported inside the functions: importing this package
is cheap.
"""

from bt_monai.writers.masks import write_mask_png
from bt_monai.writers.nifti import nifti_bytes
from bt_monai.writers.overlays import outline, overlay_png, overlay_rgb
from bt_monai.writers.seg import seg_bytes
from bt_monai.writers.sr import TumorMeasurements, sr_bytes

__all__ = [
    "TumorMeasurements",
    "nifti_bytes",
    "outline",
    "overlay_png",
    "overlay_rgb",
    "seg_bytes",
    "sr_bytes",
    "write_mask_png",
]
