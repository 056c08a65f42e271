"""MONAI/ignite handlers: the project's metrics and an atomic checkpoint saver."""

from bt_monai.handlers.checkpoint import (
    AtomicDiskSaver,
    CheckpointSaver,
    keep_previous_model,
    remove_stale_temporaries,
    should_resume,
)
from bt_monai.handlers.metrics import ClassificationHandler, PatientVolumeHandler, SliceSegmentationHandler
from bt_monai.handlers.report import EvaluationReportHandler

__all__ = [
    "AtomicDiskSaver",
    "CheckpointSaver",
    "ClassificationHandler",
    "EvaluationReportHandler",
    "PatientVolumeHandler",
    "SliceSegmentationHandler",
    "keep_previous_model",
    "remove_stale_temporaries",
    "should_resume",
]
