"""Metrics, defined once (:mod:`.functional`), wrapped as MONAI metrics (:mod:`.metrics`) and summarized for
reports (:mod:`.summary`)."""

from bt_monai.metrics.functional import (
    classification_summary,
    confusion_matrix,
    dice_from_counts,
    iou_from_counts,
    patient_volume_counts,
    pixel_accuracy_from_counts,
    roc_auc,
    segmentation_counts,
)
from bt_monai.metrics.metrics import (
    SEGMENTATION_METRICS,
    ClassificationMetric,
    PatientVolumeMetric,
    SliceSegmentationMetric,
)
from bt_monai.metrics.summary import HEADLINE_METRICS, SliceResult, summarize

__all__ = [
    "HEADLINE_METRICS",
    "SliceResult",
    "summarize",
    "SEGMENTATION_METRICS",
    "ClassificationMetric",
    "PatientVolumeMetric",
    "SliceSegmentationMetric",
    "classification_summary",
    "confusion_matrix",
    "dice_from_counts",
    "iou_from_counts",
    "patient_volume_counts",
    "pixel_accuracy_from_counts",
    "roc_auc",
    "segmentation_counts",
]
