"""Metrics, defined once (:mod:`.functional`), wrapped as MONAI metrics (:mod:`.metrics`) and summarized for
reports (:mod:`.summary`)."""

from bt_monai.metrics.functional import (
    SEGMENTATION_METRICS,
    confusion_matrix,
    detection_summary,
    dice_from_counts,
    iou_from_counts,
    patient_volume_counts,
    pixel_accuracy_from_counts,
    roc_auc,
    segmentation_counts,
    segmentation_scores,
)
from bt_monai.metrics.metrics import (
    DetectionMetric,
    PatientVolumeMetric,
    SliceSegmentationMetric,
)
from bt_monai.metrics.summary import HEADLINE_METRICS, SliceResult, summarize

__all__ = [
    "HEADLINE_METRICS",
    "SliceResult",
    "summarize",
    "SEGMENTATION_METRICS",
    "DetectionMetric",
    "PatientVolumeMetric",
    "SliceSegmentationMetric",
    "confusion_matrix",
    "detection_summary",
    "dice_from_counts",
    "iou_from_counts",
    "patient_volume_counts",
    "pixel_accuracy_from_counts",
    "roc_auc",
    "segmentation_counts",
    "segmentation_scores",
]
