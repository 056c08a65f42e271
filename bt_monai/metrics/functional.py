"""The project's metric definitions, in one place: every handler, report and test computes through these.

Segmentation metrics come from pixel counts (tp, fp, fn, tn) of binary masks:

- Dice = 2 tp / (2 tp + fp + fn); IoU = tp / (tp + fp + fn); pixel accuracy = (tp + tn) / all pixels.
- Both masks empty (no tumor, none predicted): Dice = IoU = 1 (a perfect answer), unless ``empty`` says
  otherwise (``float("nan")`` leaves such slices out of a mean, as MONAI's ``ignore_empty`` does).
- Empty prediction against a non-empty truth, or the reverse: Dice = IoU = 0.
- Volume metrics of a patient pool the counts of all its slices before the formula (one 3D volume).

Detection metrics come from probabilities and 0/1 labels at a threshold (probability >= threshold is tumor):
accuracy, sensitivity (recall), specificity, precision, F1 and the confusion matrix ``[[tn, fp], [fn, tp]]``.
A ratio whose denominator is 0 (e.g. specificity with no negative slice) is NaN. ROC-AUC is undefined with
one class only: :func:`roc_auc` returns NaN and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "SEGMENTATION_METRICS",
    "segmentation_counts",
    "segmentation_scores",
    "dice_from_counts",
    "iou_from_counts",
    "pixel_accuracy_from_counts",
    "patient_volume_counts",
    "confusion_matrix",
    "detection_summary",
    "roc_auc",
]


def segmentation_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample pixel counts ``(B, 4)`` = (tp, fp, fn, tn) of binary masks shaped ``(B, C, *spatial)``.

    Values above 0.5 are foreground. Counts are float64 so sums over large volumes stay exact.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    p = (pred > 0.5).flatten(1)
    t = (target > 0.5).flatten(1)
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    tn = (~p & ~t).sum(1)
    return torch.stack([tp, fp, fn, tn], 1).to(torch.float64)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, empty: float) -> torch.Tensor:
    out = numerator / denominator.clamp(min=1)
    return torch.where(denominator > 0, out, torch.full_like(out, empty))


def dice_from_counts(counts: torch.Tensor, empty: float = 1.0) -> torch.Tensor:
    """Dice per row of ``(..., 4)`` counts; ``empty`` where truth and prediction are both empty."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(2 * tp, 2 * tp + fp + fn, empty)


def iou_from_counts(counts: torch.Tensor, empty: float = 1.0) -> torch.Tensor:
    """IoU (Jaccard) per row of ``(..., 4)`` counts; ``empty`` where both masks are empty."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return _ratio(tp, tp + fp + fn, empty)


def pixel_accuracy_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Share of correctly labelled pixels per row of ``(..., 4)`` counts."""
    return (counts[..., 0] + counts[..., 3]) / counts.sum(-1).clamp(min=1)


SEGMENTATION_METRICS = {
    "dice": dice_from_counts,
    "iou": iou_from_counts,
    "pixel_accuracy": pixel_accuracy_from_counts,
}
"""The per-slice segmentation metrics by name: ``name -> f(counts (..., 4)) -> (...)``, each in ``[0, 1]``."""


def segmentation_scores(counts: torch.Tensor) -> dict[str, float]:
    """Dice, IoU and pixel accuracy (:data:`SEGMENTATION_METRICS`, in that order) of one slice's ``(4,)`` counts.

    Each in ``[0, 1]``; both masks empty scores 1 (Dice, IoU). What a report's per-slice row shows.
    """
    return {name: float(metric(counts)) for name, metric in SEGMENTATION_METRICS.items()}


def patient_volume_counts(counts: torch.Tensor, patient_ids: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pool per-slice ``(N, 4)`` counts into one ``(4,)`` row per patient (insertion order kept)."""
    if len(patient_ids) != len(counts):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(counts)} slices")
    pooled: dict[str, torch.Tensor] = {}
    for pid, row in zip(patient_ids, counts, strict=True):
        pooled[str(pid)] = pooled.get(str(pid), torch.zeros(4, dtype=torch.float64)) + row
    return pooled


def confusion_matrix(probabilities: Sequence[float], labels: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """``[[tn, fp], [fn, tp]]`` of 0/1 ``labels`` against ``probabilities >= threshold``."""
    p = np.asarray(probabilities, dtype=float) >= threshold
    t = np.asarray(labels).astype(bool)
    return np.array([[np.sum(~p & ~t), np.sum(p & ~t)], [np.sum(~p & t), np.sum(p & t)]], dtype=np.int64)


def _safe(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def detection_summary(
    probabilities: Sequence[float], labels: Sequence[int], threshold: float = 0.5
) -> dict[str, float | list[list[int]]]:
    """Slice-level detection metrics of tumor ``probabilities`` in ``[0, 1]`` against 0/1 ``labels``: accuracy,
    sensitivity, specificity, precision, f1, roc_auc (with ``roc_auc_undefined_reason`` when it is NaN) and the
    confusion matrix."""
    (tn, fp), (fn, tp) = confusion_matrix(probabilities, labels, threshold)
    precision, sensitivity = _safe(tp, tp + fp), _safe(tp, tp + fn)
    f1 = _safe(2 * tp, 2 * tp + fp + fn)
    auc, reason = roc_auc(probabilities, labels)
    summary = {
        "accuracy": _safe(tp + tn, tp + tn + fp + fn),
        "sensitivity": sensitivity,
        "specificity": _safe(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "roc_auc": auc,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }
    if reason:
        summary["roc_auc_undefined_reason"] = reason
    return summary


def roc_auc(probabilities: Sequence[float], labels: Sequence[int]) -> tuple[float, str | None]:
    """Area under the ROC curve and None, or NaN and the reason it is undefined."""
    from sklearn.metrics import roc_auc_score

    t = np.asarray(labels).astype(int)
    if t.size == 0:
        return math.nan, "no slices"
    if t.min() == t.max():
        return math.nan, f"only one class present (all slices are {'tumor' if t[0] else 'non-tumor'})"
    return float(roc_auc_score(t, np.asarray(probabilities, dtype=float))), None
