"""What both entry points (:func:`.folder.infer_dicom`, :func:`.dicomweb.infer_dicomweb`) share: a run's start
(:func:`check_environment`, :func:`start_run`), each chosen series in turn, reused or predicted
(:func:`run_all`), and its finish (:func:`finish_run`: storing back, then the reports).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bt_monai import __version__
from bt_monai.apps.dicom.naming import claim_folder_name
from bt_monai.apps.dicom.reports import REPORTS, patient_cells, series_entry, write_reports
from bt_monai.apps.dicom.resume import finished_marker, object_uids, publish_series, reuse_key_for
from bt_monai.apps.dicom.series import (
    NO_HIGHDICOM,
    SeriesJob,
    SeriesSkipped,
    output_failure,
    process_series,
    series_plan,
)
from bt_monai.apps.dicom.store import store_report, store_results
from bt_monai.apps.dicom_input import is_own_output_dir
from bt_monai.data.dicom import DicomScan, DicomSeries, compile_series_pattern, scan_dicom_folder
from bt_monai.data.dicom.dicomweb import RETRIEVED_MARKER, DicomWebServer
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import make_temporary_dir, relative_path, remove_stale_temporaries
from bt_monai.writers.seg import ALGORITHM

__all__ = ["DicomRun", "DicomRunSummary", "check_environment", "finish_run", "run_all", "scan_folder", "start_run"]


@dataclass
class DicomRunSummary:
    """What a run did: series processed now or reused from an earlier run, series skipped, slices, files."""

    processed: list[str] = field(default_factory=list)  # series folders written by this run
    reused: list[str] = field(default_factory=list)  # series folders already done by an earlier run
    skipped_series: list[dict] = field(default_factory=list)  # {"series_instance_uid", "modality", "reason"}
    slices: int = 0
    tumor_slices: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # files: (path relative to INPUT, reason)
    warnings: list[str] = field(default_factory=list)  # outputs not written for want of highdicom
    failed_series: list[dict] = field(default_factory=list)  # {"series_instance_uid", "folder", "reason"}
    header_repairs: list[dict] = field(default_factory=list)  # {"folder", "series_instance_uid", "repairs"}
    studies: list[dict] = field(default_factory=list)  # DICOMweb input: {"study_instance_uid", "status", ...}
    stored: list[dict] = field(default_factory=list)  # --store / --store-to: one entry per SEG or SR
    geometry: list[dict] = field(default_factory=list)  # {"folder", "series_instance_uid", "reason"}: not plain axial

    @property
    def series_done(self) -> int:
        return len(self.processed) + len(self.reused)

    @property
    def studies_incomplete(self) -> list[dict]:
        """DICOMweb input: the requested studies not every chosen series of which was processed."""
        return [s for s in self.studies if s["status"] != "processed"]

    @property
    def store_failed(self) -> list[dict]:
        """The SEG / SR objects that --store / --store-to could not store."""
        return [s for s in self.stored if s["status"] == "not stored"]


@dataclass
class DicomRun:
    """One run of :func:`.folder.infer_dicom` or :func:`.dicomweb.infer_dicomweb`: its settings, and what it has
    done so far (made by :func:`start_run`)."""

    predictor: TumorPredictor
    output: Path
    root: Path  # the input folder (or the DICOMweb cache), which reported paths are relative to
    source: str  # what summary.json names as the input: the folder, or the server's URL
    options: dict  # the options summary.json records (the entry point's, batch size apart)
    provenance: dict | None  # what the models are (TumorPredictor.provenance()), for summary.json
    batch_size: int
    predictor_fingerprint: str  # a finished series is reused only for the same (in its reuse key)
    algorithm: tuple[str, str] = ALGORITHM  # (name, version) named by the SEG and the SR
    summary: DicomRunSummary = field(default_factory=DicomRunSummary)
    entries: list[dict] = field(default_factory=list)  # the "series" of summary.json
    rows: list[dict] = field(default_factory=list)  # the rows of predictions.csv
    used: set[str] = field(default_factory=set)  # the series folder names this run has taken
    series_label: Callable[[DicomSeries], str] | None = None  # how skipped.csv names a series (default: its folder)

    @property
    def anonymize(self) -> bool:
        return self.options["anonymize"]

    @property
    def always_seg(self) -> bool:
        return self.options["always_seg"]

    @property
    def overwrite(self) -> bool:
        return self.options["overwrite"]

    def skip(self, label: str, reason: str) -> None:
        """Record a skipped file (``label``: a path, or "path [frame n]") relative to the input folder."""
        path, _, frame = label.partition(" [frame ")
        shown = relative_path(path, self.root) + (f" [frame {frame}" if frame else "")
        self.summary.skipped.append((shown, reason))

    def skip_series(self, series: DicomSeries, reason: str) -> None:
        self.entries.append({**series_entry(series, None, self.anonymize), "status": "skipped", "reason": reason})
        skipped = {"series_instance_uid": series.uid, "modality": series.modality, "reason": reason}
        self.summary.skipped_series.append(skipped)

    def skip_listed(self, attributes: dict, reason: str) -> None:
        """Record a series of a DICOMweb server not processed (not chosen, or not retrieved): summary.json, and
        skipped.csv under its server path ``studies/<uid>/series/<uid>``."""
        uid = attributes["SeriesInstanceUID"]
        self.skip_series(DicomSeries(uid, attributes.get("Modality", ""), attributes, []), reason)
        self.summary.skipped.append((f"studies/{attributes['StudyInstanceUID']}/series/{uid}", reason))

    def fail_series(self, series: DicomSeries, folder: str, reason: str) -> None:
        """Record a series whose SEG or SR could not be written: a failure of the run (summary.json, skipped.csv,
        the exit status), although its other outputs are in its folder."""
        self.summary.failed_series.append({"series_instance_uid": series.uid, "folder": folder, "reason": reason})
        label = self.series_label(series) if self.series_label else _series_folder(series, self.root)
        self.summary.skipped.append((label, f"series {series.uid}: {reason}"))

    def record(
        self, series: DicomSeries, folder: str, status: str, summary: dict, rows: list[dict], reason: str = ""
    ) -> None:
        """Add a series done (``status``: now, earlier, or failed with ``reason``) to the reports and the totals."""
        entry = {**series_entry(series, folder, self.anonymize), "status": status}
        if reason:
            entry["reason"] = reason
        entry.update(summary)
        entry.setdefault("header_repairs", [])  # the markers of earlier versions have none
        self.entries.append(entry)
        self.rows += [{**row, **patient_cells(series, self.anonymize)} for row in rows]
        self.summary.slices += summary["slices"]
        self.summary.tumor_slices += summary["tumor_slices"]


def _series_folder(series: DicomSeries, root: Path) -> str:
    """The folder holding a series' instances, relative to the input folder (``.``: the input folder itself)."""
    common = Path(os.path.commonpath([str(p.parent) for p in series.instance_paths()]))
    try:
        return common.relative_to(root).as_posix()
    except ValueError:  # one file given as INPUT, or a path outside it
        return common.as_posix()


# --- the start ----------------------------------------------------------------------------------------------


def check_environment(series: str | None) -> re.Pattern | None:
    """What both entry points check before any work: pydicom 3, and ``--series`` (compiled; a malformed one fails)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:  # its pixel API (pydicom.pixels) is new in 3
        raise ValueError(
            f"DICOM folder inference needs pydicom 3, this environment has {pydicom.__version__}: "
            "pip install 'bt_monai[dicom]' (in a venv without the MONAI Label extra)"
        )
    return compile_series_pattern(series)


def _algorithm(provenance: dict | None) -> tuple[str, str]:
    """(name, version) of the segmentation bundle (from :meth:`bt_monai.inferers.TumorPredictor.provenance`)."""
    model = (provenance or {}).get("segmentation_model") or {}
    if not model.get("bundle"):
        return ALGORITHM
    return Path(model["bundle"]).name, str(model.get("version") or __version__)


def start_run(
    predictor: TumorPredictor,
    output: str | os.PathLike,
    root: Path,
    source: str,
    options: dict,
    batch_size: int,
    provenance: dict | None,
) -> DicomRun:
    """Create OUT (removing what killed runs left half-written there) and the run that writes into it.

    ``options`` must hold ``anonymize``, ``always_seg`` and ``overwrite``; summary.json records it as it is.
    """
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    return DicomRun(
        predictor,
        output,
        root,
        source,
        options,
        provenance,
        batch_size,
        predictor.fingerprint(),
        _algorithm(provenance),
    )


def scan_folder(source: Path, output: Path) -> DicomScan:
    """The series below ``source``, leaving out this tool's outputs (OUT may lie inside INPUT)."""
    own_reports = {os.path.realpath(output / name) for name in REPORTS}
    return scan_dicom_folder(
        source,
        skip_dir=is_own_output_dir,
        skip_file=lambda p: p.name == RETRIEVED_MARKER or os.path.realpath(p) in own_reports,
    )


# --- each series --------------------------------------------------------------------------------------------


def _note_geometry(run: DicomRun, series: DicomSeries, folder: str, plan) -> None:
    """One line for a series that is not plain axial: reformatted, or predicted as acquired and why."""
    if plan.reformat or plan.plane != "axial":
        level = "warning" if plan.plane is None or not plan.reformat else "note"
        run.summary.geometry.append(
            {"folder": folder, "series_instance_uid": series.uid, "level": level, "reason": plan.reason}
        )


def _run_series(run: DicomRun, series: DicomSeries, progress: tqdm) -> None:
    """Reuse the series' finished folder, or predict the series into a temporary folder and publish it."""
    folder = claim_folder_name(run.output, series, run.anonymize, run.used)
    plan = series_plan(series, run.predictor.settings)
    reformat = run.predictor.settings.reformat_values() if plan.reformat else None
    reuse_key = reuse_key_for(series, run.predictor_fingerprint, reformat)
    marker = None if run.overwrite else finished_marker(run.output / folder, reuse_key)
    if marker is not None:
        marker["summary"].setdefault("geometry", plan.as_dict())  # folders of versions before the reformat
        run.record(series, folder, "done earlier", marker["summary"], marker["rows"])
        run.summary.reused.append(folder)
        _note_geometry(run, series, folder, plan)
        progress.update(len(series.frames))
        return
    uids = {kind: object_uids(series.uid, reuse_key, kind) for kind in ("SEG", "SR")}
    temporary = make_temporary_dir(run.output, folder)
    job = SeriesJob(series, folder, temporary, run.root, run.skip, progress, uids, run.algorithm, plan)
    try:
        summary, rows = process_series(run.predictor, job, run.batch_size, run.always_seg)
        publish_series(job.temporary, run.output / folder, series, reuse_key, summary, rows)
    except SeriesSkipped as e:
        shutil.rmtree(job.temporary, ignore_errors=True)
        run.skip_series(series, str(e))
        return
    except BaseException:
        shutil.rmtree(job.temporary, ignore_errors=True)
        raise
    _note_geometry(run, series, folder, job.plan)
    failure = output_failure(summary["outputs"])
    run.record(series, folder, "failed" if failure else "processed", summary, rows, failure or "")
    run.summary.processed.append(folder)
    if failure:
        run.fail_series(series, folder, failure)
    for kind, key in (("DICOM SEG", "seg_error"), ("DICOM SR", "sr_error")):
        if summary["outputs"].get(key) == NO_HIGHDICOM:  # an optional extra not installed: said, not a failure
            run.summary.warnings.append(f"{folder}: no {kind}: {NO_HIGHDICOM}")
    if summary["header_repairs"]:
        run.summary.header_repairs.append(
            {"folder": folder, "series_instance_uid": series.uid, "repairs": summary["header_repairs"]}
        )


def run_all(run: DicomRun, chosen: list[DicomSeries]) -> None:
    """Each chosen series in turn, with progress bars (series, slices) on a terminal."""
    progress = tqdm(total=sum(len(s.frames) for s in chosen), desc="slices", unit="slice", disable=None, position=1)
    try:
        for series in tqdm(chosen, desc="series", unit="series", disable=None, position=0):
            _run_series(run, series, progress)
    finally:
        progress.close()


# --- the finish ---------------------------------------------------------------------------------------------


def finish_run(run: DicomRun, store_to: DicomWebServer | None, extra: dict) -> DicomRunSummary:
    """The end of every run: store the SEG and SR of each series done into ``store_to`` (when given), then write
    the reports (``extra``: the entry point's keys of summary.json, e.g. ``series_selection``); return the summary."""
    if store_to is not None:
        run.summary.stored += store_results(run.entries, run.output, store_to)
    write_reports(run, {**extra, **store_report(store_to, run.summary.stored)})
    return run.summary
