"""MONAI/ignite handlers: the project's metrics and an atomic checkpoint saver."""

from bt_monai.handlers.checkpoint import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    keep_previous_model,
    remove_stale_checkpoint_temporaries,
    should_resume,
)
from bt_monai.handlers.metrics import ClassificationHandler, PatientVolumeHandler, SliceSegmentationHandler
from bt_monai.handlers.report import EvaluationReportHandler

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ClassificationHandler",
    "EvaluationReportHandler",
    "PatientVolumeHandler",
    "SliceSegmentationHandler",
    "keep_previous_model",
    "remove_stale_checkpoint_temporaries",
    "should_resume",
]
