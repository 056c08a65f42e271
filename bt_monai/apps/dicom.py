"""``python -m bt_monai infer DICOM_FOLDER``: both models over every MR series of a DICOM export.

Outputs under OUT (see the README's "DICOM input"):

- ``OUT/<series folder>/seg.dcm``: a DICOM SEG (highdicom, binary, one "Tumor" segment) referencing the source
  instances; written when a tumor pixel was found, or always with ``always_seg``;
- ``OUT/<series folder>/mask.nii.gz``: the mask as a ``(W, H, D)`` uint8 NIfTI volume with the series' affine;
- ``OUT/<series folder>/overlays/<slice>.png``: the slice with its tumor in red, for each tumor slice;
- ``OUT/<series folder>/series.json``: what was done for the series (written last: the "done" marker);
- ``OUT/predictions.csv`` (one row per slice), ``OUT/summary.json`` (per series), ``OUT/skipped.csv``.

This module orchestrates: DICOM is read by :mod:`bt_monai.data.dicom`, the formats are written by
:mod:`bt_monai.writers`.

Safety: series folder names come from DICOM attributes through :func:`bt_monai.utils.safe_name`, so no
value can leave OUT; a series is written into a temporary folder and renamed into place when complete, so an
interrupted run leaves no half-written output; inputs are never modified nor overwritten (OUT may be INPUT:
this tool's outputs are never read back as inputs); a re-run reuses the series already done with the same
slices and the same predictor (:meth:`bt_monai.inferers.TumorPredictor.fingerprint`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bt_monai import __version__
from bt_monai.apps.dicom_input import (
    GENERATOR,
    SERIES_MARKER,
    is_own_output_dir,
    looks_like_dicom_input,
    read_marker,
)
from bt_monai.data.dicom import (
    DicomFrame,
    DicomScan,
    DicomSeries,
    iter_frame_pixels,
    scan_dicom_folder,
    to_channel_first,
)
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import (
    atomic_write_bytes,
    inside,
    make_temporary_dir,
    remove_stale_temporaries,
    safe_name,
    write_csv,
)
from bt_monai.writers import nifti_bytes, overlay_png, seg_bytes

__all__ = [
    "DICOM_PREDICTION_COLUMNS",
    "PATIENT_COLUMNS",
    "DicomRunSummary",
    "infer_dicom",
    "looks_like_dicom_input",
    "series_folder_name",
]

DICOM_PREDICTION_COLUMNS = (
    "path",
    "tumor_probability",
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
REPORTS = ("predictions.csv", "summary.json", "skipped.csv")
SERIES_OUTPUTS = {SERIES_MARKER, "seg.dcm", "mask.nii.gz", "overlays"}  # all a series folder may hold


class SeriesSkipped(Exception):
    """A series that yields no output (e.g. none of its slices decodes); the message is the reason."""


@dataclass
class DicomRunSummary:
    """What a run did: series processed now or reused from an earlier run, series skipped, slices, files."""

    processed: list[str] = field(default_factory=list)  # series folders written by this run
    reused: list[str] = field(default_factory=list)  # series folders already done by an earlier run
    skipped_series: list[dict] = field(default_factory=list)  # {"series_instance_uid", "modality", "reason"}
    slices: int = 0
    tumor_slices: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # files: (path relative to INPUT, reason)
    warnings: list[str] = field(default_factory=list)  # outputs that could not be written (e.g. a SEG)

    @property
    def series_done(self) -> int:
        return len(self.processed) + len(self.reused)


# --- names and folders --------------------------------------------------------------------------------------


def series_folder_name(series: DicomSeries, anonymize: bool = False) -> str:
    """``<PatientID>_<StudyDate>_S<SeriesNumber>_<Modality>_<SeriesDescription>_<uid hash>``, made safe.

    Every part comes through :func:`safe_name` (no separator, ``..``, control character or leading dot can
    survive); the hash of the SeriesInstanceUID keeps two series apart. ``anonymize`` leaves out PatientID.
    """
    a = series.attributes
    parts = [] if anonymize else [a.get("PatientID", "")]
    parts += [a.get("StudyDate", ""), f"S{a['SeriesNumber']}" if a.get("SeriesNumber") else ""]
    parts += [a.get("Modality", ""), a.get("SeriesDescription", "")]
    base = safe_name("_".join(safe_name(p, 40) for p in parts if safe_name(p, 40)), 100)
    digest = hashlib.sha1(series.uid.encode()).hexdigest()[:8]
    return f"{base}_{digest}" if base else f"series_{digest}"


def _fingerprint(series: DicomSeries) -> str:
    """Identifies the slices a series had when it was processed: new or removed instances mean redo."""
    keys = sorted(f"{f.sop_instance_uid}/{f.frame}" for f in series.frames)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _ours_for(folder: Path, series: DicomSeries) -> bool:
    """Whether ``folder`` is this tool's output for ``series``, holding nothing else (so it may be replaced)."""
    marker = read_marker(folder)
    return (
        marker is not None
        and marker.get("series_instance_uid") == series.uid
        and all(p.name in SERIES_OUTPUTS for p in folder.iterdir())
    )


def _publish(temporary: Path, target: Path) -> None:
    """Move a finished series folder into place; an older one of ours is swapped out, then removed."""
    old = None
    if target.exists():
        old = make_temporary_dir(target.parent, target.name)
        os.replace(target, old / "series")
    os.replace(temporary, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _series_entry(series: DicomSeries, folder: str | None, anonymize: bool) -> dict:
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


def _patient(series: DicomSeries, anonymize: bool) -> dict:
    if anonymize:
        return {}
    return {
        "PatientID": series.attributes.get("PatientID", ""),
        "PatientName": series.attributes.get("PatientName", ""),
    }


# --- one series ---------------------------------------------------------------------------------------------


@dataclass
class _SeriesJob:
    """One series to predict: where its outputs go, and how its skipped slices are reported."""

    series: DicomSeries
    folder: str  # its folder's name in OUT
    temporary: Path  # where its outputs are written until they are complete
    root: Path  # the input folder, which reported paths are relative to
    skip: Callable[[str, str], None]  # skip(label, reason): record a slice left out
    progress: tqdm


def _prediction_row(job: _SeriesJob, frame: DicomFrame, prediction, index: int, overlay: str) -> dict:
    return {
        "path": _relative(frame.path, job.root),
        "tumor_probability": f"{prediction.tumor_probability:.6f}",
        "tumor": prediction.tumor,
        "tumor_area_px": prediction.tumor_area_px,
        "SeriesInstanceUID": job.series.uid,
        "SOPInstanceUID": frame.sop_instance_uid,
        "InstanceNumber": "" if frame.instance_number is None else frame.instance_number,
        "frame": "" if frame.frame is None else frame.frame + 1,
        "slice_index": index,
        "series_folder": job.folder,
        "overlay": overlay,
    }


def _predict_series(
    predictor: TumorPredictor, job: _SeriesJob, batch_size: int
) -> tuple[list[DicomFrame], list[np.ndarray], list[dict]]:
    """Decode and predict every slice of the series, writing the overlays: (slices done, masks, rows)."""
    frames: dict[str, DicomFrame] = {}
    pending: dict[str, np.ndarray] = {}  # decoded pixels awaiting their prediction (for the overlays)

    def decoded() -> Iterator[tuple[str, np.ndarray]]:
        for index, (frame, pixels) in enumerate(iter_frame_pixels(job.series.frames)):
            job.progress.update()
            if isinstance(pixels, Exception):
                job.skip(frame.label, f"pixel data could not be decoded: {type(pixels).__name__}: {pixels}")
                continue
            key = str(index)
            frames[key], pending[key] = frame, pixels
            yield key, to_channel_first(pixels)

    def failed(key: str, error: Exception) -> None:
        job.skip(frames[key].label, f"{type(error).__name__}: {error}".splitlines()[0])
        pending.pop(key, None)

    done: list[DicomFrame] = []
    masks: list[np.ndarray] = []
    rows: list[dict] = []
    for prediction in predictor.predict_arrays(decoded(), batch_size, on_error=failed):
        frame, pixels = frames[prediction.path], pending.pop(prediction.path)
        overlay = ""
        if prediction.tumor or prediction.tumor_area_px:
            name = f"overlays/{len(done) + 1:04d}.png"
            atomic_write_bytes(job.temporary / name, overlay_png(pixels, prediction.mask))
            overlay = f"{job.folder}/{name}"
        rows.append(_prediction_row(job, frame, prediction, len(done) + 1, overlay))
        done.append(frame)
        masks.append(prediction.mask)
    return done, masks, rows


def _series_summary(predicted: DicomSeries, masks: list[np.ndarray], rows: list[dict]) -> dict:
    """The numbers of a predicted series (``predicted``: the series restricted to the slices done)."""
    tumor_px = int(sum(int(m.sum()) for m in masks))
    spacing, spacing_note = predicted.slice_spacing()
    pixel_spacing = predicted.pixel_spacing()
    volume = predicted.volume_mm3(tumor_px)
    return {
        "slices": len(rows),
        "tumor_slices": sum(int(r["tumor"]) for r in rows),
        "max_tumor_probability": round(max(float(r["tumor_probability"]) for r in rows), 6),
        "tumor_area_px": tumor_px,
        "tumor_volume_mm3": None if volume is None else round(volume, 3),
        "pixel_spacing_mm": None if pixel_spacing is None else list(pixel_spacing),
        "slice_spacing_mm": None if spacing is None else round(spacing, 6),
        "ordered_by": predicted.ordered_by,
        "notes": [n for n in (spacing_note,) if n],
    }


def _write_volumes(
    job: _SeriesJob, predicted: DicomSeries, masks: list[np.ndarray], summary: dict, always_seg: bool
) -> dict:
    """Write the NIfTI mask and the DICOM SEG of a predicted series; return what was written (notes added)."""
    outputs: dict = {}
    affine, affine_note = predicted.affine()
    if predicted.slice_spacing()[0] is None and len(masks) > 1:
        outputs["nifti"] = None
        summary["notes"].append("no NIfTI volume: the slices do not form one volume")
    else:
        atomic_write_bytes(job.temporary / "mask.nii.gz", nifti_bytes(masks, affine))
        outputs["nifti"] = f"{job.folder}/mask.nii.gz"
        if affine_note:
            summary["notes"].append(affine_note)
    outputs["seg"] = None
    if summary["tumor_area_px"] or always_seg:
        try:
            atomic_write_bytes(job.temporary / "seg.dcm", seg_bytes(job.series, predicted.frames, masks))
            outputs["seg"] = f"{job.folder}/seg.dcm"
        except ImportError:
            outputs["seg_error"] = "highdicom is not installed (pip install 'bt_monai[dicom]')"
        except Exception as e:  # a source the SEG standard cannot reference (no frame of reference, ...)
            outputs["seg_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    else:
        summary["notes"].append("no DICOM SEG: no tumor pixel found (--always-seg writes an empty one)")
    return outputs


def _process_series(
    predictor: TumorPredictor, job: _SeriesJob, batch_size: int, always_seg: bool
) -> tuple[dict, list[dict]]:
    """Predict every slice of the series and write its outputs into ``job.temporary``; return (summary, rows)."""
    done, masks, rows = _predict_series(predictor, job, batch_size)
    if not done:
        raise SeriesSkipped("no slice of this series could be decoded (reasons in skipped.csv)")
    predicted = job.series.with_frames(done)
    summary = _series_summary(predicted, masks, rows)
    overlays = sum(1 for r in rows if r["overlay"])
    summary["outputs"] = {"overlays": overlays, **_write_volumes(job, predicted, masks, summary, always_seg)}
    return summary, rows


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One run of :func:`infer_dicom`: its settings, and what it has done so far."""

    predictor: TumorPredictor
    output: Path
    root: Path  # the input folder, which reported paths are relative to
    anonymize: bool
    always_seg: bool
    overwrite: bool
    batch_size: int
    models: str  # what makes the masks (the predictor's fingerprint): a finished series is reused only for it
    summary: DicomRunSummary = field(default_factory=DicomRunSummary)
    entries: list[dict] = field(default_factory=list)  # the "series" of summary.json
    rows: list[dict] = field(default_factory=list)  # the rows of predictions.csv
    used: set[str] = field(default_factory=set)  # the series folder names this run has taken

    def skip(self, label: str, reason: str) -> None:
        """Record a skipped file (``label``: a path, or "path [frame n]") relative to the input folder."""
        path, _, frame = label.partition(" [frame ")
        shown = _relative(Path(path), self.root) + (f" [frame {frame}" if frame else "")
        self.summary.skipped.append((shown, reason))

    def skip_series(self, series: DicomSeries, reason: str) -> None:
        self.entries.append({**_series_entry(series, None, self.anonymize), "status": "skipped", "reason": reason})
        skipped = {"series_instance_uid": series.uid, "modality": series.modality, "reason": reason}
        self.summary.skipped_series.append(skipped)

    def record(self, series: DicomSeries, folder: str, status: str, summary: dict, rows: list[dict]) -> None:
        """Add a series done (``status``: now or earlier) to the reports and the totals."""
        self.entries.append({**_series_entry(series, folder, self.anonymize), "status": status, **summary})
        self.rows += [{**row, **_patient(series, self.anonymize)} for row in rows]
        self.summary.slices += summary["slices"]
        self.summary.tumor_slices += summary["tumor_slices"]


def _require_pydicom_3() -> None:
    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:  # its pixel API (pydicom.pixels) is new in 3
        raise ValueError(
            f"DICOM folder inference needs pydicom 3, this environment has {pydicom.__version__}: "
            "pip install 'bt_monai[dicom]' (in a venv without the MONAI Label extra)"
        )


def _scan(source: Path, output: Path) -> DicomScan:
    """The series below ``source``, leaving out this tool's outputs (OUT may lie inside INPUT)."""
    own_reports = {os.path.realpath(output / name) for name in REPORTS}
    return scan_dicom_folder(
        source,
        skip_dir=is_own_output_dir,
        skip_file=lambda p: os.path.realpath(p) in own_reports,
    )


def _choose_series(run: _Run, scan: DicomScan, all_modalities: bool) -> list[DicomSeries]:
    """The series to process: MR ones (all with ``all_modalities``); the others are skipped with the reason."""
    chosen = []
    for series in scan.series:
        if series.modality == "MR" or all_modalities:
            chosen.append(series)
            continue
        reason = f"modality {series.modality or 'unknown'}, not MR (--all-modalities processes it)"
        run.skip_series(series, reason)
        for path in series.instance_paths():
            run.skip(str(path), f"series {series.uid}: {reason}")
    return chosen


def _folder_for(run: _Run, series: DicomSeries) -> str:
    """The name of the series' folder in OUT: its own name, numbered when that folder holds something else."""
    name = series_folder_name(series, run.anonymize)
    base, n = name, 1
    while name in run.used or ((run.output / name).exists() and not _ours_for(run.output / name, series)):
        n += 1  # a folder of that name holds something else (another series, a user's files): leave it
        name = f"{base}_{n}"
    run.used.add(name)
    if not inside(run.output / name, run.output):  # safe_name makes this impossible; checked all the same
        raise RuntimeError(f"refusing to write outside {run.output}: {run.output / name}")
    return name


def _reuse(run: _Run, series: DicomSeries, folder: str, fingerprint: dict) -> bool:
    """Whether an earlier run finished ``folder`` with these slices and this predictor; if so, report it."""
    target = run.output / folder
    marker = read_marker(target) if target.exists() else None
    if not marker or run.overwrite or marker.get("fingerprint") != fingerprint or "rows" not in marker:
        return False
    run.record(series, folder, "done earlier", marker["summary"], marker["rows"])
    run.summary.reused.append(folder)
    return True


def _finish(job: _SeriesJob, target: Path, fingerprint: dict, summary: dict, rows: list[dict]) -> None:
    """Write the series' marker (last: it says the folder is complete) and move the folder into place."""
    marker = {
        "generator": GENERATOR,
        "version": __version__,
        "series_instance_uid": job.series.uid,
        "fingerprint": fingerprint,
        "summary": summary,
        "rows": rows,  # no patient name or ID here: the reports add them from the headers unless anonymized
    }
    atomic_write_bytes(job.temporary / SERIES_MARKER, json.dumps(marker, indent=1).encode())
    _publish(job.temporary, target)


def _run_series(run: _Run, series: DicomSeries, progress: tqdm) -> None:
    """Reuse the series' finished folder, or predict the series into a temporary folder and publish it."""
    folder = _folder_for(run, series)
    fingerprint = {"slices": _fingerprint(series), "models": run.models}
    if _reuse(run, series, folder, fingerprint):
        progress.update(len(series.frames))
        return
    job = _SeriesJob(series, folder, make_temporary_dir(run.output, folder), run.root, run.skip, progress)
    try:
        summary, rows = _process_series(run.predictor, job, run.batch_size, run.always_seg)
        _finish(job, run.output / folder, fingerprint, summary, rows)
    except SeriesSkipped as e:
        shutil.rmtree(job.temporary, ignore_errors=True)
        run.skip_series(series, str(e))
        return
    except BaseException:
        shutil.rmtree(job.temporary, ignore_errors=True)
        raise
    run.record(series, folder, "processed", summary, rows)
    run.summary.processed.append(folder)
    if summary["outputs"].get("seg_error"):
        run.summary.warnings.append(f"{folder}: no DICOM SEG: {summary['outputs']['seg_error']}")


def _input(source: str | os.PathLike) -> tuple[Path, Path]:
    """(what to scan, the folder reported paths are relative to) for a folder, a DICOMDIR or one file."""
    source = Path(source).expanduser()
    if source.is_file() and source.name.upper() == "DICOMDIR":
        source = source.parent  # the DICOMDIR lists the files of its folder: scan the folder
    return source, source if source.is_dir() else source.parent


def _run_all(run: _Run, chosen: list[DicomSeries]) -> None:
    """Each chosen series in turn, with progress bars (series, slices) on a terminal."""
    progress = tqdm(total=sum(len(s.frames) for s in chosen), desc="slices", unit="slice", disable=None, position=1)
    try:
        for series in tqdm(chosen, desc="series", unit="series", disable=None, position=0):
            _run_series(run, series, progress)
    finally:
        progress.close()


def _write_reports(run: _Run, source: Path, options: dict, provenance: dict | None) -> None:
    """``predictions.csv``, ``skipped.csv`` and ``summary.json`` of the run."""
    columns = DICOM_PREDICTION_COLUMNS + (() if run.anonymize else PATIENT_COLUMNS)
    write_csv(run.output / "predictions.csv", columns, ([row.get(c, "") for c in columns] for row in run.rows))
    write_csv(run.output / "skipped.csv", ("path", "reason"), run.summary.skipped)
    predictor = run.predictor
    settings = {
        "threshold": predictor.threshold,
        "detection_threshold": predictor.detection_threshold,
        "gate_masks": predictor.gate_masks,
        "min_component_px": predictor.min_component_px,
    }
    report = {
        "generator": {"name": "bt_monai", "version": __version__},
        "input": str(source),
        "options": {**options, **settings},
        "models": provenance,
        "totals": {
            "series_processed": len(run.summary.processed),
            "series_done_earlier": len(run.summary.reused),
            "series_skipped": len(run.summary.skipped_series),
            "slices": run.summary.slices,
            "tumor_slices": run.summary.tumor_slices,
            "files_skipped": len(run.summary.skipped),
        },
        "series": run.entries,
    }
    atomic_write_bytes(run.output / "summary.json", (json.dumps(report, indent=2) + "\n").encode())


def infer_dicom(
    predictor: TumorPredictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    all_modalities: bool = False,
    always_seg: bool = False,
    overwrite: bool = False,
    anonymize: bool = False,
    batch_size: int = 16,
    provenance: dict | None = None,
) -> DicomRunSummary:
    """Predict every slice of every MR series below ``source`` and write the outputs under ``output``.

    Args:
        source: a folder of DICOM files (any nesting and names, DICOMDIR allowed), a DICOMDIR or one file.
        all_modalities: also process series that are not MR (otherwise skipped, with the reason).
        always_seg: write a DICOM SEG even when no tumor pixel was found (an empty segment).
        overwrite: redo series an earlier run already finished (default: reuse those made with the same
            slices and the same predictor, i.e. the same :meth:`TumorPredictor.fingerprint`).
        anonymize: no PatientID / PatientName in the reports, nor in folder names.
        provenance: what the models are (e.g. :func:`bt_monai.inferers.predictor.bundle_provenance`), for
            ``summary.json``.

    Returns the run's summary; the run has done something useful when ``summary.series_done > 0``.
    """
    _require_pydicom_3()
    source, root = _input(source)
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    scan = _scan(source, output)
    run = _Run(predictor, output, root, anonymize, always_seg, overwrite, batch_size, predictor.fingerprint())
    for label, reason in scan.skipped:
        run.skip(label, reason)
    _run_all(run, _choose_series(run, scan, all_modalities))
    options = {
        "all_modalities": all_modalities,
        "always_seg": always_seg,
        "overwrite": overwrite,
        "anonymize": anonymize,
    }
    _write_reports(run, source, options, provenance)
    return run.summary


def read_predictions(output: str | os.PathLike) -> list[dict]:
    """The rows of ``OUT/predictions.csv`` as dicts (for tests and scripts)."""
    with open(Path(output) / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))
