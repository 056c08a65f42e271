"""The run's reports: ``OUT/predictions.csv`` (one row per slice), ``OUT/summary.json`` (per series, with the
options, the models and the totals) and ``OUT/skipped.csv`` (:func:`bt_monai.writers.skipped.write_skipped`).

They are written once, at the end of a run (:func:`write_reports`), from the series done now and those an
earlier run did (whose rows come from their markers): a re-run's reports cover every series.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bt_monai import __version__
from bt_monai.data.dicom import DicomSeries, SeriesChoice
from bt_monai.utils import atomic_write_bytes, write_csv
from bt_monai.writers.skipped import SKIPPED_FILE, write_skipped

if TYPE_CHECKING:
    from bt_monai.apps.dicom.run import DicomRun

__all__ = [
    "DICOM_PREDICTION_COLUMNS",
    "PATIENT_COLUMNS",
    "REPORTS",
    "patient_cells",
    "read_predictions",
    "selection_report",
    "series_entry",
    "write_reports",
]

DICOM_PREDICTION_COLUMNS = (
    "path",
    "tumor_probability",
    "tumor_score",
    "tumor",
    "tumor_area_px",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "frame",
    "slice_index",
    "series_folder",
    "overlay",
)
PATIENT_COLUMNS = ("PatientID", "PatientName")  # left out with anonymize
REPORTS = ("predictions.csv", "summary.json", SKIPPED_FILE)  # in OUT; never read back as inputs


def series_entry(series: DicomSeries, folder: str | None, anonymize: bool) -> dict:
    """The identifiers that open the series' entry of ``summary.json`` (``folder``: None when it got none)."""
    a = series.attributes
    entry = {
        "folder": folder,
        "series_instance_uid": series.uid,
        "study_instance_uid": a.get("StudyInstanceUID", ""),
        "modality": series.modality,
        "series_number": a.get("SeriesNumber", ""),
        "series_description": a.get("SeriesDescription", ""),
        "study_date": a.get("StudyDate", ""),
    }
    if not anonymize:
        entry = {"patient_id": a.get("PatientID", ""), "patient_name": a.get("PatientName", ""), **entry}
    return entry


def patient_cells(series: DicomSeries, anonymize: bool) -> dict:
    """The :data:`PATIENT_COLUMNS` cells of the series' rows of ``predictions.csv`` (none with ``anonymize``)."""
    if anonymize:
        return {}
    return {
        "PatientID": series.attributes.get("PatientID", ""),
        "PatientName": series.attributes.get("PatientName", ""),
    }


def selection_report(choice: SeriesChoice, uid_of: Callable) -> dict:
    """What summary.json says about the series choice: the rule, the chosen series, the others and why."""
    return {
        "rule": choice.rule,
        "chosen": [uid_of(s) for s in choice.chosen],
        "not_chosen": [{"series_instance_uid": uid_of(s), "reason": reason} for s, reason in choice.not_chosen],
    }


def write_reports(run: DicomRun, extra: dict) -> None:
    """``predictions.csv``, ``skipped.csv`` and ``summary.json`` of the run (``extra``: more summary keys, after
    the totals and before the series)."""
    columns = DICOM_PREDICTION_COLUMNS + (() if run.anonymize else PATIENT_COLUMNS)
    write_csv(run.output / "predictions.csv", columns, ([row.get(c, "") for c in columns] for row in run.rows))
    write_skipped(run.output, run.summary.skipped)
    totals = {
        "series_processed": len(run.summary.processed),
        "series_done_earlier": len(run.summary.reused),
        "series_skipped": len(run.summary.skipped_series),
        "series_failed": len(run.summary.failed_series),  # processed, but the SEG or SR could not be written
        "slices": run.summary.slices,
        "tumor_slices": run.summary.tumor_slices,
        "files_skipped": len(run.summary.skipped),
    }
    if run.summary.studies:
        totals["studies_processed"] = len(run.summary.studies) - len(run.summary.studies_incomplete)
        totals["studies_incomplete"] = len(run.summary.studies_incomplete)
    report = {
        "generator": {"name": "bt_monai", "version": __version__},
        "input": run.source,
        "options": {**run.options, **run.predictor.settings.as_dict()},  # every predictor setting
        "models": run.provenance,
        "totals": totals,
        **extra,
        "series": run.entries,
    }
    atomic_write_bytes(run.output / "summary.json", (json.dumps(report, indent=2) + "\n").encode())


def read_predictions(output: str | os.PathLike) -> list[dict]:
    """The rows of ``OUT/predictions.csv`` as dicts (for tests and scripts)."""
    with open(Path(output) / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))
