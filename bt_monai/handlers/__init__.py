"""MONAI/ignite handlers: the project's metrics and an atomic checkpoint saver."""

from bt_monai.handlers.checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    keep_previous_model,
    remove_stale_checkpoint_temporaries,
    should_resume,
)
from bt_monai.handlers.metrics import (
    ClassificationHandler,  # the older name of DetectionHandler, kept for bundle copies whose train.json names it
    DetectionHandler,
    PatientVolumeHandler,
    SliceSegmentationHandler,
)
from bt_monai.handlers.report import EvaluationReportHandler

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ClassificationHandler",
    "DetectionHandler",
    "EvaluationReportHandler",
    "PatientVolumeHandler",
    "SliceSegmentationHandler",
    "keep_previous_model",
    "remove_stale_checkpoint_temporaries",
    "should_resume",
]
