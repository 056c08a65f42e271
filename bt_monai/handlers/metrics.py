"""Ignite/MONAI handlers for the project's metrics (see :mod:`bt_monai.metrics`)."""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler, from_engine

from bt_monai.data.discovery import patient_id_from_name, patient_id_of
from bt_monai.metrics import DetectionMetric, PatientVolumeMetric, SliceSegmentationMetric

__all__ = [
    "SliceSegmentationHandler",
    "PatientVolumeHandler",
    "DetectionHandler",
]

PRED_AND_LABEL = from_engine(["pred", "label"])


class SliceSegmentationHandler(IgniteMetricHandler):
    """Mean per-slice Dice / IoU / pixel accuracy (:class:`SliceSegmentationMetric`) of ``pred`` against ``label``."""

    def __init__(
        self,
        metric_name: str = "dice",
        ignore_empty: bool = False,
        output_transform: Callable = PRED_AND_LABEL,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=SliceSegmentationMetric(metric_name, ignore_empty),
            output_transform=output_transform,
            save_details=save_details,
        )


class PatientVolumeHandler(IgniteMetricHandler):
    """Mean per-patient volume Dice or IoU (:class:`PatientVolumeMetric`); ids from :func:`patient_id_of`."""

    def __init__(
        self,
        metric_name: str = "dice",
        patient_key: str = "patient_id",
        output_transform: Callable = PRED_AND_LABEL,
    ) -> None:
        super().__init__(
            metric_fn=PatientVolumeMetric(metric_name), output_transform=output_transform, save_details=False
        )
        self.patient_key = patient_key

    def iteration_completed(self, engine) -> None:
        y_pred, y = self._output_transform(engine.state.output)
        batch = engine.state.batch
        if isinstance(batch, list):
            ids = [patient_id_of(item, self.patient_key) for item in batch]
        elif self.patient_key in batch:
            ids = [str(p) for p in batch[self.patient_key]]
        else:
            ids = [patient_id_from_name(name) for name in batch["image"].meta["filename_or_obj"]]
        self.metric_fn(y_pred, y, ids)

    def update(self, output) -> None:  # iteration_completed feeds the metric directly
        raise NotImplementedError("PatientVolumeHandler reads patient ids from the engine; attach it to an engine")


class DetectionHandler(IgniteMetricHandler):
    """Slice-level detection metric (accuracy, sensitivity, ..., roc_auc) of probabilities ``pred`` vs ``label``."""

    def __init__(
        self,
        metric_name: str = "accuracy",
        threshold: float = 0.5,
        output_transform: Callable = PRED_AND_LABEL,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=DetectionMetric(metric_name, threshold),
            output_transform=output_transform,
            save_details=save_details,
        )


# The name of bt_monai 0.x: bundle copies made before (``bt-monai bundle copy``) name it in their train.json.
ClassificationHandler = DetectionHandler
