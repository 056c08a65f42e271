"""Evaluation summaries: per-slice results aggregated into the headline metrics, with patient-bootstrap intervals.

One home for what ``python -m bt_monai evaluate``, the bundles' evaluation (``EvaluationReportHandler``) and
the reports print: :func:`summarize` turns :class:`SliceResult` rows into ``metrics.json``'s ``detection``,
``segmentation`` and ``confidence_intervals``, computing every number through :mod:`bt_monai.metrics.functional`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bt_monai.metrics.functional import (
    detection_summary,
    dice_from_counts,
    iou_from_counts,
    pixel_accuracy_from_counts,
)

__all__ = ["HEADLINE_METRICS", "SliceResult", "summarize", "worst_patients"]

HEADLINE_METRICS = {
    "detection": ("accuracy", "sensitivity", "specificity", "roc_auc"),
    "segmentation": ("dice_per_patient_mean", "iou_per_patient_mean", "dice_tumor_slices_mean"),
}


@dataclass
class SliceResult:
    """One evaluated slice: truth, both predictions, and the pixel counts (tp, fp, fn, tn) of its mask.

    ``tumor_probability``: the detector's; ``tumor_score``: the slice score ``tumor_pred`` was called on (the
    predictor's ``slice_score``; default: the detector's probability). Detection metrics rank and threshold
    ``tumor_score``.
    """

    patient_id: str
    slice_index: int
    path: str
    tumor_true: int
    tumor_probability: float
    tumor_pred: int
    tp: int
    fp: int
    fn: int
    tn: int
    voxel_mm3: float | None = None
    tumor_score: float | None = None

    def __post_init__(self) -> None:
        if self.tumor_score is None:
            self.tumor_score = self.tumor_probability

    @property
    def counts(self) -> torch.Tensor:
        return torch.tensor([self.tp, self.fp, self.fn, self.tn], dtype=torch.float64)


def _segmentation(slices: Sequence[SliceResult]) -> tuple[dict, dict[str, dict]]:
    counts = torch.stack([s.counts for s in slices]) if slices else torch.zeros(0, 4, dtype=torch.float64)
    patients: dict[str, list[SliceResult]] = {}
    for s in slices:
        patients.setdefault(s.patient_id, []).append(s)
    per_patient = {}
    for pid, items in patients.items():
        pooled = torch.stack([s.counts for s in items]).sum(0)
        voxel = items[0].voxel_mm3
        true_px, pred_px = int(pooled[0] + pooled[2]), int(pooled[0] + pooled[1])
        per_patient[pid] = {
            "patient_id": pid,
            "slices": len(items),
            "tumor_slices": sum(s.tumor_true for s in items),
            "dice": float(dice_from_counts(pooled)),
            "iou": float(iou_from_counts(pooled)),
            "true_volume_px": true_px,
            "pred_volume_px": pred_px,
            "true_volume_mm3": None if voxel is None else true_px * voxel,
            "pred_volume_mm3": None if voxel is None else pred_px * voxel,
        }
    tumor = counts[(counts[:, 0] + counts[:, 2]) > 0]
    dice_patients = np.array([p["dice"] for p in per_patient.values()])
    summary = {
        "dice_per_patient_mean": float(dice_patients.mean()) if len(dice_patients) else math.nan,
        "dice_per_patient_median": float(np.median(dice_patients)) if len(dice_patients) else math.nan,
        "iou_per_patient_mean": float(np.mean([p["iou"] for p in per_patient.values()])) if per_patient else math.nan,
        "dice_tumor_slices_mean": float(dice_from_counts(tumor).mean()) if len(tumor) else math.nan,
        "iou_tumor_slices_mean": float(iou_from_counts(tumor).mean()) if len(tumor) else math.nan,
        "pixel_accuracy": float(pixel_accuracy_from_counts(counts.sum(0))) if len(counts) else math.nan,
        "n_patients": len(per_patient),
        "n_slices": len(slices),
        "n_tumor_slices": int(len(tumor)),
        "worst_patients": worst_patients(slices, per_patient),
    }
    return summary, per_patient


def worst_patients(slices: Sequence[SliceResult], per_patient: dict[str, dict], n: int = 3) -> list[dict]:
    """The ``n`` patients with the lowest volume Dice, each with its slice of largest true tumor area.

    Those slices are what a report shows of each (an overlay); a patient without tumor has no such slice.
    """
    largest: dict[str, SliceResult] = {}
    for s in slices:
        best = largest.get(s.patient_id)
        if s.tp + s.fn > 0 and (best is None or s.tp + s.fn > best.tp + best.fn):
            largest[s.patient_id] = s
    ranked = sorted(per_patient.values(), key=lambda p: (p["dice"], p["patient_id"]))[:n]
    return [
        {
            "patient_id": p["patient_id"],
            "dice": p["dice"],
            "true_volume_px": p["true_volume_px"],
            "pred_volume_px": p["pred_volume_px"],
            "largest_tumor_slice": largest[p["patient_id"]].path if p["patient_id"] in largest else None,
        }
        for p in ranked
    ]


def _detection(slices: Sequence[SliceResult], threshold: float) -> dict:
    summary = detection_summary([s.tumor_score for s in slices], [s.tumor_true for s in slices], threshold)
    return {**summary, "n_slices": len(slices), "threshold": threshold}


def _bootstrap(slices: Sequence[SliceResult], threshold: float, n: int, seed: int) -> dict:
    """95% intervals of the headline metrics, resampling patients (not slices) with replacement."""
    ids = sorted({s.patient_id for s in slices})
    if n <= 0 or len(ids) < 2:
        return {}
    index = {pid: i for i, pid in enumerate(ids)}
    patient = np.array([index[s.patient_id] for s in slices])
    probability = np.array([s.tumor_score for s in slices])
    label = np.array([s.tumor_true for s in slices])
    counts = torch.stack([s.counts for s in slices])
    slice_dice = dice_from_counts(counts).numpy()
    has_tumor = (counts[:, 0] + counts[:, 2]).numpy() > 0
    pooled = torch.zeros(len(ids), 4, dtype=torch.float64).index_add_(0, torch.from_numpy(patient), counts)
    patient_dice, patient_iou = dice_from_counts(pooled).numpy(), iou_from_counts(pooled).numpy()
    members = [np.flatnonzero(patient == i) for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {f"{g}.{m}": [] for g, ms in HEADLINE_METRICS.items() for m in ms}
    for _ in range(n):
        chosen = rng.integers(0, len(ids), len(ids))
        rows = np.concatenate([members[i] for i in chosen])
        det = detection_summary(probability[rows], label[rows], threshold)
        tumor_rows = rows[has_tumor[rows]]
        values = {
            **{f"detection.{m}": det[m] for m in HEADLINE_METRICS["detection"]},
            "segmentation.dice_per_patient_mean": patient_dice[chosen].mean(),
            "segmentation.iou_per_patient_mean": patient_iou[chosen].mean(),
            "segmentation.dice_tumor_slices_mean": slice_dice[tumor_rows].mean() if len(tumor_rows) else math.nan,
        }
        for key, value in values.items():
            if not math.isnan(value):
                draws[key].append(float(value))
    return {
        key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None for key, v in draws.items()
    }


def summarize(
    slices: Sequence[SliceResult], threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0
) -> tuple[dict, dict[str, dict]]:
    """metrics.json's ``detection``, ``segmentation`` and ``confidence_intervals``, and the per-patient rows."""
    segmentation, per_patient = _segmentation(slices)
    metrics = {
        "detection": _detection(slices, threshold),
        "segmentation": segmentation,
        "confidence_intervals": _bootstrap(slices, threshold, n_bootstrap, seed),
    }
    return metrics, per_patient
