"""``python -m bt_monai infer DICOM_FOLDER`` / ``infer URL --study UID``: both models over the chosen MR series
of a DICOM export or of studies on a DICOMweb server, optionally storing the results back (STOW-RS).

Outputs under OUT (see the README's "DICOM input" and "PACS (DICOMweb)"):

- ``OUT/<series folder>/seg.dcm``: a DICOM SEG (highdicom, binary, one "Tumor" segment) referencing the source
  instances; written when a tumor pixel was found, or always with ``always_seg``;
- ``OUT/<series folder>/sr.dcm``: a DICOM SR (TID 1500 measurement report: tumor volume, slices, largest
  area), always written (no tumor is a finding too), referencing the SEG when there is one;
- ``OUT/<series folder>/mask.nii.gz``: the mask as a ``(W, H, D)`` uint8 NIfTI volume with the series' affine;
- ``OUT/<series folder>/overlays/<slice>.png``: the slice with its tumor in red, for each tumor slice;
- ``OUT/<series folder>/series.json``: what was done for the series (written last: the "done" marker);
- ``OUT/predictions.csv`` (one row per slice), ``OUT/summary.json`` (per series), ``OUT/skipped.csv``;
- DICOMweb input: ``OUT/.dicomweb/studies/<study>/series/<series>/instances/<sop>``, the retrieved instances
  (:mod:`bt_monai.data.dicom.dicomweb`), processed exactly as a folder.

The series processed are chosen by :func:`bt_monai.data.dicom.choose_series` (FLAIR by default). The SEG and SR
get UIDs derived from the source series, its slices and the predictor's fingerprint, so the same inputs,
weights and settings give the same objects, and storing them again creates no duplicate.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bt_monai import __version__
from bt_monai.apps.dicom_input import (
    CACHE_FOLDER,
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
    SeriesChoice,
    choose_series,
    compile_series_pattern,
    iter_frame_pixels,
    scan_dicom_folder,
    to_channel_first,
)
from bt_monai.data.dicom.dicomweb import (
    RETRIEVED_MARKER,
    DicomWebError,
    DicomWebServer,
    StudyNotFoundError,
)
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import (
    atomic_write_bytes,
    derived_uid,
    inside,
    make_temporary_dir,
    remove_stale_temporaries,
    replace_folder,
    safe_name,
    write_csv,
)
from bt_monai.writers import TumorMeasurements, nifti_bytes, overlay_png, seg_bytes, sr_bytes
from bt_monai.writers.seg import ALGORITHM

__all__ = [
    "DICOM_PREDICTION_COLUMNS",
    "PATIENT_COLUMNS",
    "DicomRunSummary",
    "infer_dicom",
    "infer_dicomweb",
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
SERIES_OUTPUTS = {SERIES_MARKER, "seg.dcm", "sr.dcm", "mask.nii.gz", "overlays"}  # all a series folder may hold
NO_HIGHDICOM = "highdicom is not installed (pip install 'bt_monai[dicom]')"


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
    studies: list[dict] = field(default_factory=list)  # DICOMweb input: {"study_instance_uid", "status", ...}
    stored: list[dict] = field(default_factory=list)  # --store / --store-to: one entry per SEG or SR

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
    uids: dict[str, tuple[str, str]]  # "SEG" / "SR": (SeriesInstanceUID, SOPInstanceUID) of the object
    algorithm: tuple[str, str]  # (name, version) the SEG and SR name as their algorithm


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
    """The numbers of a predicted series (``predicted``: the series restricted to the slices done).

    The one place the tumor measurements are computed: ``summary.json`` and the SR report these values.
    """
    areas_px = [int(m.sum()) for m in masks]
    tumor_px = sum(areas_px)
    spacing, spacing_note = predicted.slice_spacing()
    pixel_spacing = predicted.pixel_spacing()
    volume = predicted.volume_mm3(tumor_px)
    largest = None if pixel_spacing is None else max(areas_px) * pixel_spacing[0] * pixel_spacing[1]
    return {
        "slices": len(rows),
        "tumor_slices": sum(int(r["tumor"]) for r in rows),
        "segmented_slices": sum(1 for a in areas_px if a),  # slices with tumor pixels
        "max_tumor_probability": round(max(float(r["tumor_probability"]) for r in rows), 6),
        "tumor_area_px": tumor_px,
        "tumor_volume_mm3": None if volume is None else round(volume, 3),
        "largest_tumor_area_mm2": None if largest is None else round(largest, 3),
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
    seg = None
    if summary["tumor_area_px"] or always_seg:
        try:
            seg = seg_bytes(job.series, predicted.frames, masks, job.uids["SEG"], job.algorithm)
            atomic_write_bytes(job.temporary / "seg.dcm", seg)
            outputs["seg"] = f"{job.folder}/seg.dcm"
        except ImportError:
            outputs["seg_error"] = NO_HIGHDICOM
        except Exception as e:  # a source the SEG standard cannot reference (no frame of reference, ...)
            outputs["seg_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    else:
        summary["notes"].append("no DICOM SEG: no tumor pixel found (--always-seg writes an empty one)")
    outputs.update(_write_sr(job, predicted, summary, seg))
    return outputs


def _write_sr(job: _SeriesJob, predicted: DicomSeries, summary: dict, seg: bytes | None) -> dict:
    """Write the series' measurement report (the numbers of ``summary``); return its output entries."""
    values = TumorMeasurements(
        summary["tumor_volume_mm3"], summary["segmented_slices"], summary["largest_tumor_area_mm2"]
    )
    try:
        report = sr_bytes(job.series, predicted.frames, values, seg, job.uids["SR"], job.algorithm)
    except ImportError:
        return {"sr": None, "sr_error": NO_HIGHDICOM}
    except Exception as e:  # a source the SR cannot reference
        return {"sr": None, "sr_error": f"{type(e).__name__}: {e}".splitlines()[0]}
    atomic_write_bytes(job.temporary / "sr.dcm", report)
    return {"sr": f"{job.folder}/sr.dcm"}


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

OUTPUTS_VERSION = 2  # in the reuse fingerprint: folders of an earlier bt_monai (no SR, random UIDs) are redone


@dataclass
class _Run:
    """One run of :func:`infer_dicom` or :func:`infer_dicomweb`: its settings, and what it has done so far."""

    predictor: TumorPredictor
    output: Path
    root: Path  # the input folder (or the DICOMweb cache), which reported paths are relative to
    anonymize: bool
    always_seg: bool
    overwrite: bool
    batch_size: int
    models: str  # what makes the masks (the predictor's fingerprint): a finished series is reused only for it
    algorithm: tuple[str, str] = ALGORITHM  # (name, version) named by the SEG and the SR
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

    def skip_listed(self, attributes: dict, reason: str) -> None:
        """Record a series of a DICOMweb server not processed (not chosen, or not retrieved): summary.json, and
        skipped.csv under its server path ``studies/<uid>/series/<uid>``."""
        uid = attributes["SeriesInstanceUID"]
        self.skip_series(DicomSeries(uid, attributes.get("Modality", ""), attributes, []), reason)
        self.summary.skipped.append((f"studies/{attributes['StudyInstanceUID']}/series/{uid}", reason))

    def record(self, series: DicomSeries, folder: str, status: str, summary: dict, rows: list[dict]) -> None:
        """Add a series done (``status``: now or earlier) to the reports and the totals."""
        self.entries.append({**_series_entry(series, folder, self.anonymize), "status": status, **summary})
        self.rows += [{**row, **_patient(series, self.anonymize)} for row in rows]
        self.summary.slices += summary["slices"]
        self.summary.tumor_slices += summary["tumor_slices"]


def _algorithm(provenance: dict | None) -> tuple[str, str]:
    """(name, version) of the segmentation bundle (from :func:`bt_monai.bundle.bundle_provenance`)."""
    model = (provenance or {}).get("segmentation_model") or {}
    if not model.get("bundle"):
        return ALGORITHM
    return Path(model["bundle"]).name, str(model.get("version") or __version__)


def _new_run(predictor: TumorPredictor, output: Path, root: Path, options: dict, provenance: dict | None) -> _Run:
    return _Run(
        predictor,
        output,
        root,
        options["anonymize"],
        options["always_seg"],
        options["overwrite"],
        options["batch_size"],
        predictor.fingerprint(),
        _algorithm(provenance),
    )


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
        skip_file=lambda p: p.name == RETRIEVED_MARKER or os.path.realpath(p) in own_reports,
    )


def _selection(choice: SeriesChoice, uid_of: Callable) -> dict:
    """What summary.json says about the series choice: the rule, the chosen series, the others and why."""
    return {
        "rule": choice.rule,
        "chosen": [uid_of(s) for s in choice.chosen],
        "not_chosen": [{"series_instance_uid": uid_of(s), "reason": reason} for s, reason in choice.not_chosen],
    }


def _choose_scanned(run: _Run, scan: DicomScan, pattern, all_modalities: bool) -> tuple[list[DicomSeries], dict]:
    """The scanned series to process (:func:`choose_series`); the others are skipped with the reason."""
    choice = choose_series(scan.series, pattern, all_modalities, attributes_of=lambda s: s.attributes)
    for series, reason in choice.not_chosen:
        run.skip_series(series, reason)
        for path in series.instance_paths():
            run.skip(str(path), f"series {series.uid}: {reason}")
    return choice.chosen, _selection(choice, lambda s: s.uid)


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


def object_uids(series_uid: str, fingerprint: dict, kind: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the ``kind`` ("SEG" or "SR") object made for a source series.

    Derived (:func:`bt_monai.utils.derived_uid`, a UUID-derived ``2.25.`` UID) from the source series, its
    slices and the predictor's fingerprint: the same inputs, weights and settings give the same UIDs, so a
    re-run that stores its results again creates no duplicate on the server.
    """
    key = json.dumps(fingerprint, sort_keys=True)
    return derived_uid(GENERATOR, series_uid, key, kind, "series"), derived_uid(GENERATOR, series_uid, key, kind, "sop")


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
    replace_folder(job.temporary, target)


def _run_series(run: _Run, series: DicomSeries, progress: tqdm) -> None:
    """Reuse the series' finished folder, or predict the series into a temporary folder and publish it."""
    folder = _folder_for(run, series)
    fingerprint = {"slices": _fingerprint(series), "models": run.models, "outputs": OUTPUTS_VERSION}
    if _reuse(run, series, folder, fingerprint):
        progress.update(len(series.frames))
        return
    uids = {kind: object_uids(series.uid, fingerprint, kind) for kind in ("SEG", "SR")}
    temporary = make_temporary_dir(run.output, folder)
    job = _SeriesJob(series, folder, temporary, run.root, run.skip, progress, uids, run.algorithm)
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
    for kind, key in (("DICOM SEG", "seg_error"), ("DICOM SR", "sr_error")):
        if summary["outputs"].get(key):
            run.summary.warnings.append(f"{folder}: no {kind}: {summary['outputs'][key]}")


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


def _write_reports(run: _Run, source: str, options: dict, provenance: dict | None, extra: dict) -> None:
    """``predictions.csv``, ``skipped.csv`` and ``summary.json`` of the run (``extra``: more summary keys)."""
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
    totals = {
        "series_processed": len(run.summary.processed),
        "series_done_earlier": len(run.summary.reused),
        "series_skipped": len(run.summary.skipped_series),
        "slices": run.summary.slices,
        "tumor_slices": run.summary.tumor_slices,
        "files_skipped": len(run.summary.skipped),
    }
    if run.summary.studies:
        totals["studies_processed"] = len(run.summary.studies) - len(run.summary.studies_incomplete)
        totals["studies_incomplete"] = len(run.summary.studies_incomplete)
    report = {
        "generator": {"name": "bt_monai", "version": __version__},
        "input": source,
        "options": {**options, **settings},
        "models": provenance,
        "totals": totals,
        **extra,
        "series": run.entries,
    }
    atomic_write_bytes(run.output / "summary.json", (json.dumps(report, indent=2) + "\n").encode())


# --- storing back (STOW-RS) ---------------------------------------------------------------------------------


def _store_study(server: DicomWebServer, study: str, objects: list[tuple[dict, str, Path]]) -> list[dict]:
    """Store a study's SEG and SR objects in one STOW-RS request, leaving out those the server already has.

    Returns one record per object: ``status`` "stored", "already stored" or "not stored" (with ``reason``).
    """
    import pydicom

    pending = []
    for entry, kind, path in objects:
        ds = pydicom.dcmread(path)
        record = {
            "study_instance_uid": study,
            "series_folder": entry["folder"],
            "object": kind,
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
        }
        pending.append((record, ds))
    try:
        to_send = []
        for record, ds in pending:  # QIDO-RS first: the same UIDs on the server mean the same object
            if record["sop_instance_uid"] in server.instances_of_series(study, record["series_instance_uid"]):
                record["status"] = "already stored"
            else:
                to_send.append((record, ds))
        if to_send:
            result = server.store(study, [ds for _, ds in to_send])
            failed = dict(result.failed)
            for record, _ in to_send:
                if record["sop_instance_uid"] in result.stored:
                    record["status"] = "stored"
                else:
                    record.update(status="not stored", reason=failed.get(record["sop_instance_uid"], "refused"))
    except DicomWebError as e:  # the request itself failed: nothing of this study is known to be stored
        for record, _ in pending:
            if "status" not in record:
                record.update(status="not stored", reason=str(e))
    return [record for record, _ in pending]


def _store(run: _Run, server: DicomWebServer) -> None:
    """Store the SEG and SR of every series done (now or earlier) into its source study on ``server``."""
    by_study: dict[str, list[tuple[dict, str, Path]]] = {}
    for entry in run.entries:
        if entry["status"] not in ("processed", "done earlier"):
            continue
        for kind in ("SEG", "SR"):
            written = entry.get("outputs", {}).get(kind.lower())
            if written:
                by_study.setdefault(entry["study_instance_uid"], []).append((entry, kind, run.output / written))
    for study, objects in by_study.items():
        run.summary.stored += _store_study(server, study, objects)


def _store_report(server: DicomWebServer | None, run: _Run) -> dict:
    return {} if server is None else {"store": {"url": server.url, "objects": run.summary.stored}}


def _store_target(store_to: str | DicomWebServer | None, ca_bundle) -> DicomWebServer | None:
    if store_to is None or isinstance(store_to, DicomWebServer):
        return store_to
    return DicomWebServer(store_to, ca_bundle)


# --- folder input -------------------------------------------------------------------------------------------


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
    series: str | None = None,
    store_to: str | DicomWebServer | None = None,
    ca_bundle: str | os.PathLike | None = None,
) -> DicomRunSummary:
    """Predict every slice of the chosen MR series below ``source`` and write the outputs under ``output``.

    Args:
        source: a folder of DICOM files (any nesting and names, DICOMDIR allowed), a DICOMDIR or one file.
        all_modalities: also process series that are not MR (otherwise skipped, with the reason).
        always_seg: write a DICOM SEG even when no tumor pixel was found (an empty segment).
        overwrite: redo series an earlier run already finished (default: reuse those made with the same
            slices and the same predictor, i.e. the same :meth:`TumorPredictor.fingerprint`).
        anonymize: no PatientID / PatientName in the reports, nor in folder names (the SEG and SR keep the
            patient module of their source, as the standard requires).
        provenance: what the models are (e.g. :func:`bt_monai.bundle.bundle_provenance`), for ``summary.json``;
            its segmentation bundle's name and version are the algorithm the SEG and SR name.
        series: a regular expression on SeriesDescription / ProtocolName choosing the series (default: per
            study the series naming FLAIR, else every MR series; see :func:`choose_series`).
        store_to: a DICOMweb URL (or server) to store each series' SEG and SR into (STOW-RS), in its study.
        ca_bundle: PEM file of the CA certificates that verify ``store_to``'s TLS certificate.

    Returns the run's summary; the run has done something useful when ``summary.series_done > 0``.
    """
    _require_pydicom_3()
    pattern = compile_series_pattern(series)
    target = _store_target(store_to, ca_bundle)  # a malformed URL fails before any work
    source, root = _input(source)
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    scan = _scan(source, output)
    options = {
        "all_modalities": all_modalities,
        "always_seg": always_seg,
        "overwrite": overwrite,
        "anonymize": anonymize,
        "series": series,
        "batch_size": batch_size,
    }
    run = _new_run(predictor, output, root, options, provenance)
    for label, reason in scan.skipped:
        run.skip(label, reason)
    chosen, selection = _choose_scanned(run, scan, pattern, all_modalities)
    _run_all(run, chosen)
    if target is not None:
        _store(run, target)
    del options["batch_size"]
    _write_reports(run, str(source), options, provenance, {"series_selection": selection, **_store_report(target, run)})
    return run.summary


# --- DICOMweb input -----------------------------------------------------------------------------------------


def _requested_studies(server: DicomWebServer, studies: list[str], patient: str | None) -> list[str]:
    """The StudyInstanceUIDs to process: ``studies``, then those of ``patient``, each once."""
    found = list(studies)
    if patient is not None:
        of_patient = server.studies_of_patient(patient)
        if not of_patient:
            raise DicomWebError(f"{server.url}: no study of patient {patient!r}: check the PatientID")
        found += of_patient
    if not found:
        raise ValueError(f"{server.url}: name the studies to process: --study UID (repeatable) or --patient ID")
    return list(dict.fromkeys(found))


def _list_series(server: DicomWebServer, studies: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The series of each study (QIDO-RS), and the studies the server does not know, with the message."""
    listed, missing = [], {}
    for study in studies:
        try:
            listed += server.series_of_study(study)
        except StudyNotFoundError as e:
            missing[study] = str(e)
    return listed, missing


def _retrieve(run: _Run, server: DicomWebServer, chosen: list[dict], cache: Path) -> list[DicomSeries]:
    """Retrieve each chosen series into ``cache`` and scan it; a series that fails is skipped with the reason."""
    found = []
    for attributes in tqdm(chosen, desc="retrieving", unit="series", disable=None):
        study, uid = attributes["StudyInstanceUID"], attributes["SeriesInstanceUID"]
        try:
            folder = server.retrieve_series(study, uid, cache)
        except DicomWebError as e:  # retried already: the others go on
            run.skip_listed(attributes, str(e))
            continue
        scan = _scan(folder, run.output)
        for label, reason in scan.skipped:
            run.skip(label, reason)
        if not scan.series:
            run.skip_listed(attributes, "no image slice in the series (reasons in skipped.csv)")
        found += scan.series
    return found


def _study_status(run: _Run, studies: list[str], chosen: list[dict], missing: dict[str, str]) -> None:
    """Whether each requested study was processed: found, and every chosen series of it done."""
    done = {e["series_instance_uid"] for e in run.entries if e["status"] in ("processed", "done earlier")}
    reasons = {e["series_instance_uid"]: e.get("reason", "") for e in run.entries if e["status"] == "skipped"}
    for study in studies:
        entry = {"study_instance_uid": study}
        mine = [a["SeriesInstanceUID"] for a in chosen if a["StudyInstanceUID"] == study]
        left = [uid for uid in mine if uid not in done]
        if study in missing:
            entry.update(status="not found", reason=missing[study])
            run.summary.skipped.append((f"studies/{study}", missing[study]))
        elif not mine:
            entry.update(status="incomplete", reason="no series to process (see the series of summary.json)")
        elif left:
            entry.update(status="incomplete", reason=f"series {left[0]} not processed: {reasons.get(left[0], '')}")
        else:
            entry["status"] = "processed"
        entry["series"] = mine
        run.summary.studies.append(entry)


def infer_dicomweb(
    predictor: TumorPredictor,
    url: str | DicomWebServer,
    output: str | os.PathLike,
    *,
    studies: Sequence[str] = (),
    patient: str | None = None,
    series: str | None = None,
    all_modalities: bool = False,
    always_seg: bool = False,
    overwrite: bool = False,
    anonymize: bool = False,
    batch_size: int = 16,
    provenance: dict | None = None,
    store: bool = False,
    store_to: str | DicomWebServer | None = None,
    ca_bundle: str | os.PathLike | None = None,
) -> DicomRunSummary:
    """Predict the chosen MR series of studies on a DICOMweb server; outputs under ``output`` as for a folder.

    QIDO-RS lists each study's series; the chosen ones (``series``, as :func:`infer_dicom`) are retrieved
    with WADO-RS into ``output/.dicomweb/studies/<study>/series/<series>/instances/<sop>`` (kept: a re-run
    retrieves a series again only when the server's instances changed) and processed exactly as a folder,
    so ``predictions.csv``'s ``path`` is the instance's place on the server. ``store``: send each series' SEG
    and SR back to ``url`` (one STOW-RS request per study); ``store_to``: to another server instead.

    A series whose transfer fails (after retries) is skipped and named in ``skipped.csv``; an unknown study
    is reported and the others go on; ``summary.studies_incomplete`` lists the studies not fully processed.
    Raises :class:`DicomWebError` when the server cannot be used at all (unreachable, credentials refused).
    """
    _require_pydicom_3()
    pattern = compile_series_pattern(series)
    server = url if isinstance(url, DicomWebServer) else DicomWebServer(url, ca_bundle)
    target = server if store else _store_target(store_to, ca_bundle)
    study_uids = _requested_studies(server, list(studies), patient)
    listed, missing = _list_series(server, study_uids)  # before OUT is touched: a refused login writes nothing
    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    cache = output / CACHE_FOLDER
    remove_stale_temporaries(cache, recursive=True)
    options = {
        "studies": list(studies),
        "patient": patient,
        "all_modalities": all_modalities,
        "always_seg": always_seg,
        "overwrite": overwrite,
        "anonymize": anonymize,
        "series": series,
        "batch_size": batch_size,
    }
    run = _new_run(predictor, output, cache, options, provenance)
    choice = choose_series(listed, pattern, all_modalities)
    for attributes, reason in choice.not_chosen:
        run.skip_listed(attributes, reason)
    _run_all(run, _retrieve(run, server, choice.chosen, cache))
    _study_status(run, study_uids, choice.chosen, missing)
    if target is not None:
        _store(run, target)
    del options["batch_size"]
    extra = {
        "series_selection": _selection(choice, lambda a: a["SeriesInstanceUID"]),
        "studies": run.summary.studies,
        **_store_report(target, run),
    }
    _write_reports(run, server.url, options, provenance, extra)
    return run.summary


def read_predictions(output: str | os.PathLike) -> list[dict]:
    """The rows of ``OUT/predictions.csv`` as dicts (for tests and scripts)."""
    with open(Path(output) / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))
