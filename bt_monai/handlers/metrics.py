"""Ignite/MONAI handlers for the project's metrics (see :mod:`bt_monai.metrics`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from monai.handlers import IgniteMetricHandler, from_engine

from bt_monai.data.readers import strip_image_suffix
from bt_monai.metrics import ClassificationMetric, PatientVolumeMetric, SliceSegmentationMetric

__all__ = [
    "SliceSegmentationHandler",
    "PatientVolumeHandler",
    "ClassificationHandler",
    "patient_id_of",
    "patient_id_from_name",
]

PRED_AND_LABEL = from_engine(["pred", "label"])
_SLICE_NAME = re.compile(r"^(?P<patient>.+)_\d+$")


def patient_id_of(item: Mapping, patient_key: str = "patient_id", image_key: str = "image") -> str:
    """The patient of one datalist item: its ``patient_key``, else taken from the image's file name.

    Datalists made by bt_monai carry ``patient_id``; MONAI Label's carry only ``image`` and ``label``, so
    there a kaggle_3m name ``<patient>_<n>.tif`` gives ``<patient>``, and any other name counts as its own
    patient (per-slice Dice).
    """
    if patient_key in item:
        return str(item[patient_key])
    image = item.get(image_key)
    source = getattr(image, "meta", {}).get("filename_or_obj") if image is not None else None
    if not source:
        raise KeyError(f"no {patient_key!r} in the batch and no image file name to take the patient from")
    return patient_id_from_name(source)


def patient_id_from_name(path: str) -> str:
    """``<patient>`` of a kaggle_3m slice file ``<patient>_<n>.<ext>``; any other file name is its own patient."""
    stem = strip_image_suffix(Path(str(path)).name)
    match = _SLICE_NAME.match(stem)
    return match["patient"] if match else stem


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


class ClassificationHandler(IgniteMetricHandler):
    """Slice-level detection metric (accuracy, sensitivity, ..., roc_auc) of probabilities ``pred`` vs ``label``."""

    def __init__(
        self,
        metric_name: str = "accuracy",
        threshold: float = 0.5,
        output_transform: Callable = PRED_AND_LABEL,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=ClassificationMetric(metric_name, threshold),
            output_transform=output_transform,
            save_details=save_details,
        )
