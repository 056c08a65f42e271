"""``bt-monai evaluate``: both models on a dataset with masks, as numbers and as a readable report.

Predicts every slice with the one predictor, compares with the masks, and hands the per-slice results to
:func:`bt_monai.writers.report.write_report`, which writes under OUT ``metrics.json`` (detection and
segmentation metrics with patient-bootstrap 95% intervals, from :func:`bt_monai.metrics.summarize`, and what
was evaluated), ``per_slice.csv``, ``per_patient.csv``, PNG figures and ``report.html``.

Under ``torchrun --nproc_per_node N -m bt_monai evaluate ...`` each rank predicts one contiguous share of the
slices (:func:`bt_monai.utils.distributed.block_of`); rank 0 gathers the per-slice results and writes the
report, the same files as one process writes.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bt_monai.data import DatasetError, SliceLoader, discover_kaggle3m, load_truth_mask
from bt_monai.inferers import TumorPredictor
from bt_monai.metrics import HEADLINE_METRICS, SliceResult, segmentation_counts
from bt_monai.utils import error_summary
from bt_monai.utils.distributed import broadcast_from_main, gather_blocks, init_process_group, is_main_process, share
from bt_monai.writers.report import write_report

__all__ = ["HEADLINE_METRICS", "evaluate_dataset", "voxel_volume_mm3"]


def voxel_volume_mm3(path: str | os.PathLike) -> float | None:
    """Volume of one pixel times the slice spacing, in mm³, where the file says (DICOM, NIfTI); else None."""
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        try:
            import nibabel as nib

            zooms = nib.load(str(path)).header.get_zooms()
        except Exception:
            return None
        return float(np.prod(zooms[:3])) if len(zooms) >= 3 else None
    from bt_monai.data.readers import slice_format

    if slice_format(path) != "dicom":
        return None
    from bt_monai.data.dicom import dicom_voxel_volume_mm3

    return dicom_voxel_volume_mm3(path)


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
    Under torchrun every rank calls it alike and each predicts its share; every rank returns the metrics.
    """
    init_process_group(getattr(predictor, "device", None))  # a torchrun launch: join its group (else nothing)
    unusable: list[tuple[str, str]] = []  # (path, reason): files discovery left out, reported in skipped.csv
    records = {r.image: r for r in discover_kaggle3m(dataset, unusable)}
    if patients is not None:
        missing = sorted(set(patients) - {r.patient_id for r in records.values()})
        if missing:
            raise DatasetError(f"{len(missing)} patient(s) to evaluate are not in {dataset}: {', '.join(missing[:5])}")
        records = {image: r for image, r in records.items() if r.patient_id in set(patients)}
    loader = SliceLoader()
    mine = share(list(records), batch_size)  # all of them for one process
    slices: list[SliceResult] = []
    skipped: list[tuple[str, str]] = []  # files left out while predicting

    def skip(path: str, error: Exception) -> None:
        skipped.append((path, error_summary(error)))

    shown = None if is_main_process() else True  # one progress bar: rank 0's
    predictions = predictor.predict_paths(mine, batch_size, on_error=skip)
    for prediction in tqdm(predictions, total=len(mine), desc="evaluating", disable=shown):
        record = records[prediction.path]
        truth = load_truth_mask(record.mask, loader)  # (H, W), as the prediction
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
                prediction.tumor_score,
            )
        )
    shares = gather_blocks([(slices, skipped)])  # rank order: the one-process order
    slices = [s for share_slices, _ in shares for s in share_slices]
    skipped = unusable + [s for _, share_skipped in shares for s in share_skipped]
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
        "input_mode": predictor.input_mode,
        "settings": predictor.settings.as_dict(),
        **(provenance or {}),
    }
    threshold = predictor.detection_threshold
    metrics = None
    if is_main_process():  # one report, by rank 0
        metrics = write_report(output, slices, threshold, evaluated, n_bootstrap, seed, predictor, skipped)
    return broadcast_from_main(metrics)
