"""A handler that gives a bundle's evaluation the same report as ``python -m bt_monai evaluate``."""

from __future__ import annotations

import os

import torch
from ignite.engine import Engine, Events

from bt_monai.data.discovery import patient_id_of
from bt_monai.metrics import SliceResult, segmentation_counts
from bt_monai.utils import gather_in_sampler_order, is_main_process
from bt_monai.writers.report import write_report

__all__ = ["EvaluationReportHandler"]


class EvaluationReportHandler:
    """Collect per-slice results while a MONAI evaluator runs, then write metrics.json, per_slice.csv,
    per_patient.csv, the figures and report.html under ``output_dir`` (:func:`bt_monai.writers.report.write_report`).

    Args:
        output_dir: where to write.
        task: ``"segmentation"`` (``pred`` and ``label`` are binary masks, compared at the network's
            resolution) or ``"detection"`` (``pred`` is the tumor probability, ``label`` 0/1).
        threshold: the decision threshold the report states (and applies to probabilities).
        n_bootstrap: patient bootstrap resamples for the 95% intervals.
        patient_key: the batch key with the patient id (else from the image's file name, :func:`patient_id_of`).
        evaluated: what was evaluated (dataset, split, weights...), copied into metrics.json.

    In a ``torch.distributed`` run (``multi_gpu_evaluate.json``) attach it on every rank: each collects its shard
    of an unshuffled ``DistributedSampler``, and rank 0 writes the report of all the slices, in the order one
    process sees them (:func:`bt_monai.utils.gather_in_sampler_order`), so the files equal a one-process run's.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        task: str = "segmentation",
        threshold: float = 0.5,
        n_bootstrap: int = 1000,
        patient_key: str = "patient_id",
        evaluated: dict | None = None,
    ) -> None:
        if task not in ("segmentation", "detection"):
            raise ValueError(f"task must be 'segmentation' or 'detection', got {task!r}")
        self.output_dir, self.task, self.threshold = output_dir, task, threshold
        self.n_bootstrap, self.patient_key, self.evaluated = n_bootstrap, patient_key, dict(evaluated or {})
        self.slices: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.slices.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        for item, out in zip(batch, output, strict=True):
            meta = getattr(item["image"], "meta", {})
            path = str(meta.get("filename_or_obj", f"slice_{len(self.slices)}"))
            patient = patient_id_of(item, self.patient_key)
            index = int(item.get("slice_index", len(self.slices)))
            pred, label = out["pred"].detach().cpu(), out["label"].detach().cpu()
            if self.task == "segmentation":
                tp, fp, fn, tn = segmentation_counts(pred[None], label[None])[0].int().tolist()
                truth, called = int(tp + fn > 0), int(tp + fp > 0)
                probability = float(called)
            else:
                tp = fp = fn = tn = 0
                probability = float(torch.as_tensor(pred).reshape(-1)[0])
                truth = int(round(float(torch.as_tensor(label).reshape(-1)[0])))
                called = int(probability >= self.threshold)
            self.slices.append(SliceResult(patient, index, path, truth, probability, called, tp, fp, fn, tn))

    def completed(self, engine: Engine) -> None:
        # Under torchrun each rank saw its shard: rank 0 writes them all, in the one-process order, once.
        slices = gather_in_sampler_order(self.slices)
        if slices and is_main_process():
            write_report(self.output_dir, slices, self.threshold, self.evaluated, self.n_bootstrap, tasks=(self.task,))
