"""``python -m bt_monai evaluate``: both models on a dataset with masks, as numbers and as a readable report.

Writes under OUT: ``metrics.json`` (detection and segmentation metrics with patient-bootstrap 95% confidence
intervals, and what was evaluated), ``per_slice.csv``, ``per_patient.csv``, PNG figures (confusion matrix,
ROC curve, per-patient Dice, overlay gallery) and ``report.html`` (one self-contained page). Every metric
comes from :mod:`bt_monai.metrics`, the module the bundles' handlers use too.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import bt_monai
from bt_monai.apps.files import atomic_write_bytes, write_csv
from bt_monai.data import DatasetError, discover_kaggle3m
from bt_monai.inferers import TumorPredictor
from bt_monai.metrics import (
    classification_summary,
    dice_from_counts,
    iou_from_counts,
    pixel_accuracy_from_counts,
    segmentation_counts,
)
from bt_monai.transforms import BinarizeMask, LoadSlice

__all__ = ["SliceResult", "summarize", "evaluate_dataset", "write_report", "HEADLINE_METRICS"]

HEADLINE_METRICS = {
    "detection": ("accuracy", "sensitivity", "specificity", "roc_auc"),
    "segmentation": ("dice_per_patient_mean", "iou_per_patient_mean", "dice_tumor_slices_mean"),
}


@dataclass
class SliceResult:
    """One evaluated slice: truth, both predictions, and the pixel counts (tp, fp, fn, tn) of its mask."""

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

    @property
    def counts(self) -> torch.Tensor:
        return torch.tensor([self.tp, self.fp, self.fn, self.tn], dtype=torch.float64)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


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
    }
    return summary, per_patient


def _detection(slices: Sequence[SliceResult], threshold: float) -> dict:
    summary = classification_summary([s.tumor_probability for s in slices], [s.tumor_true for s in slices], threshold)
    return {**summary, "n_slices": len(slices), "threshold": threshold}


def _bootstrap(slices: Sequence[SliceResult], threshold: float, n: int, seed: int) -> dict:
    """95% intervals of the headline metrics, resampling patients (not slices) with replacement."""
    ids = sorted({s.patient_id for s in slices})
    if n <= 0 or len(ids) < 2:
        return {}
    index = {pid: i for i, pid in enumerate(ids)}
    patient = np.array([index[s.patient_id] for s in slices])
    probability = np.array([s.tumor_probability for s in slices])
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
        det = classification_summary(probability[rows], label[rows], threshold)
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


def voxel_volume_mm3(path: str | os.PathLike) -> float | None:
    """Volume of one pixel times the slice spacing, in mm³, where the file says (DICOM, NIfTI); else None."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            zooms = nib.load(str(path)).header.get_zooms()
            return float(np.prod(zooms[:3])) if len(zooms) >= 3 else None
        from bt_monai.data.readers import slice_format

        if slice_format(path) == "dicom":
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            spacing = getattr(ds, "SpacingBetweenSlices", None) or getattr(ds, "SliceThickness", None)
            if getattr(ds, "PixelSpacing", None) is None or spacing is None:
                return None
            return float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1]) * float(spacing)
    except Exception:
        return None
    return None


def evaluate_dataset(
    predictor: TumorPredictor,
    dataset: str | os.PathLike,
    output: str | os.PathLike,
    provenance: dict | None = None,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    seed: int = 0,
    patients: Collection[str] | None = None,
) -> dict:
    """Evaluate both models on a kaggle_3m-style dataset with masks and write the report under ``output``.

    ``patients``: evaluate only these patients (e.g. a split's test patients); all of them must be in ``dataset``.
    """
    skipped: list[tuple[str, str]] = []  # (path, reason): unusable files, reported in skipped.csv
    records = {r.image: r for r in discover_kaggle3m(dataset, skipped)}
    if patients is not None:
        missing = sorted(set(patients) - {r.patient_id for r in records.values()})
        if missing:
            raise DatasetError(f"{len(missing)} patient(s) to evaluate are not in {dataset}: {', '.join(missing[:5])}")
        records = {image: r for image, r in records.items() if r.patient_id in set(patients)}
    load, binarize = LoadSlice(), BinarizeMask()
    slices: list[SliceResult] = []

    def skip(path: str, error: Exception) -> None:
        skipped.append((path, f"{type(error).__name__}: {error}".splitlines()[0]))

    for prediction in tqdm(
        predictor.predict_paths(list(records), batch_size, on_error=skip), total=len(records), desc="evaluating"
    ):
        record = records[prediction.path]
        truth = binarize(load(record.mask))[0].numpy().T > 0  # (H, W), as the prediction
        if truth.shape != prediction.mask.shape:
            skip(record.mask, ValueError(f"mask is {truth.shape[::-1]} but its image {prediction.mask.shape[::-1]}"))
            continue
        tp, fp, fn, tn = (
            segmentation_counts(torch.from_numpy(prediction.mask[None, None]), torch.from_numpy(truth[None, None]))[0]
            .int()
            .tolist()
        )
        slices.append(
            SliceResult(
                record.patient_id,
                record.slice_index,
                record.image,
                record.tumor,
                prediction.tumor_probability,
                prediction.tumor,
                tp,
                fp,
                fn,
                tn,
                voxel_volume_mm3(record.image),
            )
        )
    if not slices:
        raise ValueError(f"no slice of {dataset} could be evaluated ({len(skipped)} skipped)")
    evaluated = {
        "dataset": str(Path(dataset).expanduser().resolve()),
        "dataset_counts": {
            "patients": len({r.patient_id for r in records.values()}),
            "slices": len(records),
            "tumor_slices": sum(r.tumor for r in records.values()),
            "evaluated_slices": len(slices),
            "skipped_files": len(skipped),
        },
        **(provenance or {}),
    }
    return write_report(output, slices, predictor.threshold, evaluated, n_bootstrap, seed, predictor, skipped)


def write_report(
    output: str | os.PathLike,
    slices: Sequence[SliceResult],
    threshold: float,
    evaluated: dict,
    n_bootstrap: int = 1000,
    seed: int = 0,
    predictor: TumorPredictor | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    tasks: Sequence[str] = ("detection", "segmentation"),
) -> dict:
    """Summarize ``slices`` and write metrics.json, the CSVs, the figures and report.html under ``output``.

    ``tasks`` limits metrics.json to the tasks that were evaluated (a bundle evaluates one). The overlay
    gallery needs a ``predictor`` to redraw the slices; without one it is left out.
    """
    from bt_monai.apps import report

    output = Path(output).expanduser()
    metrics, per_patient = summarize(slices, threshold, n_bootstrap, seed)
    metrics = {k: v for k, v in metrics.items() if k not in ("detection", "segmentation") or k in tasks}
    metrics["confidence_intervals"] = {
        k: v for k, v in metrics["confidence_intervals"].items() if k.split(".")[0] in tasks
    }
    metrics["evaluated"] = {
        "bt_monai_version": bt_monai.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **evaluated,
        "bootstrap": {"resamples": n_bootstrap, "unit": "patient", "seed": seed},
        "threshold": threshold,
    }
    metrics = json.loads(json.dumps(metrics, default=float), parse_constant=lambda c: None)  # NaN -> null
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    slice_columns = [
        "patient_id", "slice_index", "path", "tumor_true", "tumor_probability", "tumor_pred",
        "dice", "iou", "pixel_accuracy", "true_area_px", "pred_area_px",
    ]  # fmt: skip
    rows = []
    for s in slices:
        c = s.counts
        rows.append(
            [s.patient_id, s.slice_index, s.path, s.tumor_true, f"{s.tumor_probability:.6f}", s.tumor_pred]
            + [f"{float(f(c)):.6f}" for f in (dice_from_counts, iou_from_counts, pixel_accuracy_from_counts)]
            + [s.tp + s.fn, s.tp + s.fp]
        )
    write_csv(output / "per_slice.csv", slice_columns, rows)
    patient_columns = list(next(iter(per_patient.values())))
    write_csv(
        output / "per_patient.csv",
        patient_columns,
        [["" if p[k] is None else p[k] for k in patient_columns] for p in per_patient.values()],
    )
    if skipped:
        write_csv(output / "skipped.csv", ("path", "reason"), skipped)
    report.write_figures(output, slices, per_patient, metrics, predictor)
    report.write_html(output, metrics, per_patient)
    return metrics
