"""MONAI metric classes over :mod:`bt_monai.metrics.functional` (buffered, distributed-safe, per-sample details)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from monai.metrics import Cumulative, CumulativeIterationMetric

from bt_monai.metrics.functional import (
    SEGMENTATION_METRICS,
    detection_summary,
    patient_volume_counts,
    segmentation_counts,
)

__all__ = ["SEGMENTATION_METRICS", "SliceSegmentationMetric", "PatientVolumeMetric", "DetectionMetric"]


class SliceSegmentationMetric(CumulativeIterationMetric):
    """Per-slice Dice, IoU or pixel accuracy of binary masks, averaged over slices.

    ``y_pred`` and ``y``: ``(B, 1, H, W)`` binary (values > 0.5 are tumor). A slice where both are empty
    scores 1. ``ignore_empty=True`` leaves out slices whose truth is empty (like MONAI's ``ignore_empty``):
    the mean is then over tumor slices only. Details (``get_buffer``) are the per-slice scores ``(N, 1)``.
    """

    def __init__(self, metric_name: str = "dice", ignore_empty: bool = False) -> None:
        super().__init__()
        if metric_name not in SEGMENTATION_METRICS:
            raise ValueError(f"unknown metric {metric_name!r}: use one of {sorted(SEGMENTATION_METRICS)}")
        self.metric_name, self.ignore_empty = metric_name, ignore_empty

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        counts = segmentation_counts(y_pred, y)
        scores = SEGMENTATION_METRICS[self.metric_name](counts)
        if self.ignore_empty:
            truth_empty = (counts[:, 0] + counts[:, 2]) == 0
            scores = torch.where(truth_empty, torch.full_like(scores, float("nan")), scores)
        return scores[:, None]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        scores = self.get_buffer()
        if not isinstance(scores, torch.Tensor) or scores.numel() == 0:
            return torch.tensor(float("nan"))
        return scores.nanmean()


def _patient_key(patient_id: str) -> int:
    """A stable 48-bit integer for a patient id: exact in float64, so ids travel in tensors (and across ranks)."""
    return int.from_bytes(hashlib.sha1(str(patient_id).encode()).digest()[:6], "little")


class PatientVolumeMetric(Cumulative):
    """Mean over patients of Dice or IoU, each patient's slices pooled into one volume.

    Call with ``(y_pred, y, patient_ids)``: masks ``(B, 1, H, W)`` (or lists of ``(1, H, W)``) and one id per
    slice. A patient with no tumor in truth nor prediction scores 1.
    """

    def __init__(self, metric_name: str = "dice") -> None:
        super().__init__()
        if metric_name not in ("dice", "iou"):
            raise ValueError(f"unknown metric {metric_name!r}: use 'dice' or 'iou'")
        self.metric_name = metric_name

    def __call__(self, y_pred, y, patient_ids: Sequence[str]) -> torch.Tensor:
        y_pred = torch.stack(list(y_pred)) if isinstance(y_pred, (list, tuple)) else y_pred
        y = torch.stack(list(y)) if isinstance(y, (list, tuple)) else y
        counts = segmentation_counts(y_pred.detach().cpu(), y.detach().cpu())
        keys = torch.tensor([[_patient_key(p)] for p in patient_ids], dtype=torch.float64)
        rows = torch.cat([keys, counts], 1)
        self.extend(rows)
        return rows

    def per_patient(self) -> torch.Tensor:
        """One score per patient (hashed id order)."""
        rows = self.get_buffer()
        if not isinstance(rows, torch.Tensor) or rows.numel() == 0:
            return torch.zeros(0, dtype=torch.float64)
        ids = [str(int(i)) for i in rows[:, 0].tolist()]
        pooled = torch.stack(list(patient_volume_counts(rows[:, 1:], ids).values()))
        return SEGMENTATION_METRICS[self.metric_name](pooled)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        scores = self.per_patient()
        return scores.mean() if scores.numel() else torch.tensor(float("nan"))


class DetectionMetric(CumulativeIterationMetric):
    """One of accuracy, sensitivity, specificity, precision, f1, roc_auc over all buffered slices.

    ``y_pred``: tumor probabilities ``(B, 1)`` (or ``(B,)``), ``y``: 0/1 labels of the same length.
    Details (``get_buffer``) are ``(N, 2)`` rows of (probability, label).
    """

    names = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")

    def __init__(self, metric_name: str = "accuracy", threshold: float = 0.5) -> None:
        super().__init__()
        if metric_name not in self.names:
            raise ValueError(f"unknown metric {metric_name!r}: use one of {self.names}")
        self.metric_name, self.threshold = metric_name, threshold

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([y_pred.reshape(-1).float(), y.reshape(-1).float()], 1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        rows = self.get_buffer()
        if not isinstance(rows, torch.Tensor) or rows.numel() == 0:
            return torch.tensor(float("nan"))
        summary = detection_summary(rows[:, 0].tolist(), rows[:, 1].round().int().tolist(), self.threshold)
        return torch.tensor(summary[self.metric_name])
