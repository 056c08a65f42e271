"""``python -m bt_monai infer DICOM_FOLDER``: both models over every MR series of a DICOM export.

Outputs under OUT (see the README's "DICOM input"):

- ``OUT/<series folder>/seg.dcm``: a DICOM SEG (highdicom, binary, one "Tumor" segment) referencing the source
  instances; written when a tumor pixel was found, or always with ``always_seg``;
- ``OUT/<series folder>/mask.nii.gz``: the mask as a ``(W, H, D)`` uint8 NIfTI volume with the series' affine;
- ``OUT/<series folder>/overlays/<slice>.png``: the slice with its tumor in red, for each tumor slice;
- ``OUT/<series folder>/series.json``: what was done for the series (written last: the "done" marker);
- ``OUT/predictions.csv`` (one row per slice), ``OUT/summary.json`` (per series), ``OUT/skipped.csv``.

Safety: series folder names come from DICOM attributes through :func:`bt_monai.apps.files.safe_name`, so no
value can leave OUT; a series is written into a temporary folder and renamed into place when complete, so an
interrupted run leaves no half-written output; inputs are never modified nor overwritten (OUT may be INPUT:
this tool's outputs are never read back as inputs); a re-run reuses the series already done.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bt_monai import __version__
from bt_monai.apps.files import atomic_write_bytes, inside, safe_name, write_csv
from bt_monai.data.dicom import (
    DicomFrame,
    DicomScan,
    DicomSeries,
    is_dicom_file,
    iter_frame_pixels,
    scan_dicom_folder,
    to_channel_first,
)
from bt_monai.data.readers import slice_format
from bt_monai.inferers import TumorPredictor

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
SERIES_MARKER = "series.json"
SERIES_OUTPUTS = {SERIES_MARKER, "seg.dcm", "mask.nii.gz", "overlays"}  # all a series folder may hold
TEMPORARY_PREFIX = ".bt_monai-tmp-"
GENERATOR = "bt_monai DICOM inference"


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


# --- input detection ----------------------------------------------------------------------------------------


def _is_own_output_dir(folder: Path) -> bool:
    """A folder this tool wrote (a finished series folder, or a temporary one): never an input."""
    return folder.name.startswith(TEMPORARY_PREFIX) or _read_marker(folder) is not None


def looks_like_dicom_input(source: str | os.PathLike) -> bool:
    """Whether ``infer`` should read ``source`` as DICOM: a DICOM file or DICOMDIR, or a folder holding a
    DICOMDIR or at least as many DICOM files (``DICM`` preamble or ``.dcm``) as other slice images.

    This tool's own outputs (series folders, PNG overlays) do not count.
    """
    source = Path(source).expanduser()
    if source.is_file():
        return is_dicom_file(source)
    dicom = other = 0
    for dirpath, dirnames, names in os.walk(source):
        dirnames[:] = [d for d in dirnames if not _is_own_output_dir(Path(dirpath) / d)]
        for name in names:
            if name.upper() == "DICOMDIR":
                return True
            kind = slice_format(Path(dirpath) / name)  # by suffix first: image files are not opened
            dicom, other = dicom + (kind == "dicom"), other + (kind not in (None, "dicom"))
    return dicom > 0 and dicom >= other


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


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / SERIES_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR else None


def _ours_for(folder: Path, series: DicomSeries) -> bool:
    """Whether ``folder`` is this tool's output for ``series``, holding nothing else (so it may be replaced)."""
    marker = _read_marker(folder)
    return (
        marker is not None
        and marker.get("series_instance_uid") == series.uid
        and all(p.name in SERIES_OUTPUTS for p in folder.iterdir())
    )


def _remove_stale_temporaries(output: Path) -> None:
    """Remove temporary folders left by interrupted runs (their process is gone); never anything else."""
    for folder in output.glob(TEMPORARY_PREFIX + "*"):
        try:
            pid = int(folder.name[len(TEMPORARY_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)  # still running (another run into the same OUT): leave it
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _publish(temporary: Path, target: Path) -> None:
    """Move a finished series folder into place; an older one of ours is swapped out, then removed."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-old-", dir=target.parent))
        os.replace(target, old / "series")
    os.replace(temporary, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- writers ------------------------------------------------------------------------------------------------


def overlay_png(pixels: np.ndarray, mask: np.ndarray) -> bytes:
    """An RGB PNG of the slice (``(H, W)`` or ``(H, W, 3)``, any range; windowed to its 0.5-99.5th percentile)
    with the ``(H, W)`` mask in translucent red and its outline in solid red."""
    from PIL import Image
    from scipy import ndimage

    gray = pixels.mean(-1) if pixels.ndim == 3 else pixels
    low, high = np.percentile(gray, (0.5, 99.5))
    gray = np.clip((gray - low) / max(float(high - low), 1e-6), 0, 1)
    rgb = np.repeat(gray[..., None], 3, -1)
    tumor = mask > 0
    rgb[tumor] = 0.6 * rgb[tumor] + 0.4 * np.array([1.0, 0.0, 0.0])
    rgb[tumor & ~ndimage.binary_erosion(tumor)] = (1.0, 0.1, 0.1)
    buffer = io.BytesIO()
    # Fast zlib level: on a busy series the overlays must not cost a fraction of the model's time.
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def nifti_bytes(masks: list[np.ndarray], affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 of ``(H, W)`` masks stacked as a ``(W, H, D)`` uint8 volume (0/1) with ``affine`` (RAS)."""
    import nibabel as nib

    volume = np.stack([m.T for m in masks], axis=-1).astype(np.uint8)
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)  # scanner coordinates: overlays the source in research viewers
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6)


# Type 2 attributes (present, possibly empty) of the modules a SEG copies from its source; some exports omit them.
_TYPE2_FOR_SEG = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def seg_bytes(series: DicomSeries, frames: list[DicomFrame], masks: list[np.ndarray]) -> bytes:
    """A DICOM SEG (binary, segment 1 "Tumor") of ``masks`` (``(H, W)`` 0/1, one per frame) over their sources.

    Single-frame sources: one referenced instance per predicted slice. A multi-frame source: one frame per
    source frame (frames not predicted are empty). Empty frames are omitted (highdicom keeps them all when
    every frame is empty). Raises ``ValueError`` with the reason when no SEG can be made for this series.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    paths = list(dict.fromkeys(f.path for f in frames))
    with _quiet("pydicom"):
        headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in paths}
    for header in headers.values():
        for keyword in _TYPE2_FOR_SEG:
            if keyword not in header:
                setattr(header, keyword, "")
    multiframe = [
        h for h in headers.values() if int(h.get("NumberOfFrames") or 1) > 1 or "PerFrameFunctionalGroupsSequence" in h
    ]
    if multiframe and len(paths) > 1:
        raise ValueError(
            f"the series holds {len(paths)} objects of a multi-frame (enhanced) type: a DICOM SEG can reference "
            "only one such object (the NIfTI mask and the overlays cover the series)"
        )
    if any(f.frame is not None for f in frames):
        (header,) = headers.values()
        array = np.zeros((int(header.NumberOfFrames), frames[0].rows, frames[0].columns), dtype=bool)
        for frame, mask in zip(frames, masks, strict=True):
            array[frame.frame] = mask > 0
        sources = [header]
    else:
        array = np.stack([m > 0 for m in masks])
        sources = [headers[f.path] for f in frames]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumor",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="bt_monai MobileNetV2 U-Net", family=codes.cid7162.ArtificialIntelligence, version=__version__
        ),
    )
    try:
        source_number = abs(int(series.attributes.get("SeriesNumber") or 0))
    except ValueError:
        source_number = 0
    with _quiet("highdicom", "pydicom"):
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=min(1000 + source_number, 2**31 - 1),  # beside its source series in viewers
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="bt_monai",
            manufacturer_model_name="bt_monai brain tumor segmentation",
            software_versions=__version__,
            device_serial_number="none",
            content_label="TUMOR",
            content_description="Tumor segmentation, research use only",
        )
        seg.SeriesDescription = f"Tumor SEG {series.attributes.get('SeriesDescription', '')}".strip()[:64]
        buffer = io.BytesIO()
        seg.save_as(buffer)
    return buffer.getvalue()


# --- the run ------------------------------------------------------------------------------------------------


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


def _process_series(
    predictor: TumorPredictor,
    series: DicomSeries,
    folder: str,
    temporary: Path,
    root: Path,
    always_seg: bool,
    batch_size: int,
    skip,
    progress: tqdm,
) -> tuple[dict, list[dict]]:
    """Predict every slice of ``series`` and write its outputs into ``temporary``; return (summary, rows)."""
    frames: dict[str, DicomFrame] = {}
    pending: dict[str, np.ndarray] = {}  # decoded pixels awaiting their prediction (for the overlays)

    def decoded() -> Iterator[tuple[str, np.ndarray]]:
        for index, (frame, pixels) in enumerate(iter_frame_pixels(series.frames)):
            progress.update()
            if isinstance(pixels, Exception):
                skip(frame.label, f"pixel data could not be decoded: {type(pixels).__name__}: {pixels}")
                continue
            key = str(index)
            frames[key], pending[key] = frame, pixels
            yield key, to_channel_first(pixels)

    def failed(key: str, error: Exception) -> None:
        skip(frames[key].label, f"{type(error).__name__}: {error}".splitlines()[0])
        pending.pop(key, None)

    done: list[DicomFrame] = []
    masks: list[np.ndarray] = []
    rows: list[dict] = []
    for prediction in predictor.predict_arrays(decoded(), batch_size, on_error=failed):
        frame, pixels = frames[prediction.path], pending.pop(prediction.path)
        overlay = ""
        if prediction.tumor or prediction.tumor_area_px:
            name = f"overlays/{len(done) + 1:04d}.png"
            atomic_write_bytes(temporary / name, overlay_png(pixels, prediction.mask))
            overlay = f"{folder}/{name}"
        rows.append(
            {
                "path": _relative(frame.path, root),
                "tumor_probability": f"{prediction.tumor_probability:.6f}",
                "tumor": prediction.tumor,
                "tumor_area_px": prediction.tumor_area_px,
                "SeriesInstanceUID": series.uid,
                "SOPInstanceUID": frame.sop_instance_uid,
                "InstanceNumber": "" if frame.instance_number is None else frame.instance_number,
                "frame": "" if frame.frame is None else frame.frame + 1,
                "slice_index": len(done) + 1,
                "series_folder": folder,
                "overlay": overlay,
            }
        )
        done.append(frame)
        masks.append(prediction.mask)

    summary: dict = {"slices": len(done), "tumor_slices": sum(int(r["tumor"]) for r in rows)}
    if not done:
        raise SeriesSkipped("no slice of this series could be decoded (reasons in skipped.csv)")
    predicted = series.with_frames(done)
    tumor_px = int(sum(int(m.sum()) for m in masks))
    spacing, spacing_note = predicted.slice_spacing()
    pixel_spacing = predicted.pixel_spacing()
    volume = (
        None if spacing is None or pixel_spacing is None else tumor_px * pixel_spacing[0] * pixel_spacing[1] * spacing
    )
    summary.update(
        {
            "max_tumor_probability": round(max(float(r["tumor_probability"]) for r in rows), 6),
            "tumor_area_px": tumor_px,
            "tumor_volume_mm3": None if volume is None else round(volume, 3),
            "pixel_spacing_mm": None if pixel_spacing is None else list(pixel_spacing),
            "slice_spacing_mm": None if spacing is None else round(spacing, 6),
            "ordered_by": series.ordered_by,
            "notes": [n for n in (spacing_note,) if n],
        }
    )
    outputs: dict = {"overlays": sum(1 for r in rows if r["overlay"])}
    affine, affine_note = predicted.affine()
    if spacing is None and len(done) > 1:
        outputs["nifti"] = None
        summary["notes"].append("no NIfTI volume: the slices do not form one volume")
    else:
        atomic_write_bytes(temporary / "mask.nii.gz", nifti_bytes(masks, affine))
        outputs["nifti"] = f"{folder}/mask.nii.gz"
        if affine_note:
            summary["notes"].append(affine_note)
    outputs["seg"] = None
    if tumor_px or always_seg:
        try:
            atomic_write_bytes(temporary / "seg.dcm", seg_bytes(series, done, masks))
            outputs["seg"] = f"{folder}/seg.dcm"
        except ImportError:
            outputs["seg_error"] = "highdicom is not installed (pip install 'bt_monai[dicom]')"
        except Exception as e:  # a source the SEG standard cannot reference (no frame of reference, ...)
            outputs["seg_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    else:
        summary["notes"].append("no DICOM SEG: no tumor pixel found (--always-seg writes an empty one)")
    summary["outputs"] = outputs
    return summary, rows


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
        overwrite: redo series an earlier run already finished (default: reuse them).
        anonymize: no PatientID / PatientName in the reports, nor in folder names.
        provenance: what the models are (e.g. :func:`bt_monai.inferers.predictor.bundle_provenance`), for
            ``summary.json``.

    Returns the run's summary; the run has done something useful when ``summary.series_done > 0``.
    """
    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:  # its pixel API (pydicom.pixels) is new in 3
        raise ValueError(
            f"DICOM folder inference needs pydicom 3, this environment has {pydicom.__version__}: "
            "pip install 'bt_monai[dicom]' (in a venv without the MONAI Label extra)"
        )
    source, output = Path(source).expanduser(), Path(output).expanduser()
    if source.is_file() and source.name.upper() == "DICOMDIR":
        source = source.parent  # the DICOMDIR lists the files of its folder: scan the folder
    root = source if source.is_dir() else source.parent
    output.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(output)
    own_reports = {os.path.realpath(output / name) for name in REPORTS}
    scan: DicomScan = scan_dicom_folder(
        source,
        skip_dir=_is_own_output_dir,
        skip_file=lambda p: os.path.realpath(p) in own_reports,
    )
    run = DicomRunSummary()
    settings = {
        "threshold": predictor.threshold,
        "gate_masks": predictor.gate_masks,
        "min_component_px": predictor.min_component_px,
    }
    # What made the masks: a finished series is reused only when its slices and this are unchanged.
    models = hashlib.sha256(json.dumps([provenance, settings], sort_keys=True, default=str).encode()).hexdigest()

    def skip(label: str, reason: str) -> None:
        """Record a skipped file (``label``: a path, or "path [frame n]") relative to the input folder."""
        path, _, frame = label.partition(" [frame ")
        run.skipped.append((_relative(Path(path), root) + (f" [frame {frame}" if frame else ""), reason))

    for label, reason in scan.skipped:
        skip(label, reason)

    entries: list[dict] = []
    all_rows: list[dict] = []
    to_process = []

    def skip_series(series: DicomSeries, reason: str) -> None:
        entries.append({**_series_entry(series, None, anonymize), "status": "skipped", "reason": reason})
        run.skipped_series.append({"series_instance_uid": series.uid, "modality": series.modality, "reason": reason})

    for series in scan.series:
        if series.modality != "MR" and not all_modalities:
            reason = f"modality {series.modality or 'unknown'}, not MR (--all-modalities processes it)"
            skip_series(series, reason)
            for path in series.instance_paths():
                skip(str(path), f"series {series.uid}: {reason}")
            continue
        to_process.append(series)

    used: set[str] = set()
    slice_bar = tqdm(
        total=sum(len(s.frames) for s in to_process), desc="slices", unit="slice", disable=None, position=1
    )
    for series in tqdm(to_process, desc="series", unit="series", disable=None, position=0):
        name = series_folder_name(series, anonymize)
        base, n = name, 1
        while name in used or ((output / name).exists() and not _ours_for(output / name, series)):
            n += 1  # a folder of that name holds something else (another series, a user's files): leave it
            name = f"{base}_{n}"
        used.add(name)
        target = output / name
        if not inside(target, output):  # safe_name makes this impossible; checked all the same
            raise RuntimeError(f"refusing to write outside {output}: {target}")
        marker = _read_marker(target) if target.exists() else None
        fingerprint = {"slices": _fingerprint(series), "models": models}
        if marker and not overwrite and marker.get("fingerprint") == fingerprint and "rows" in marker:
            entries.append({**_series_entry(series, name, anonymize), "status": "done earlier", **marker["summary"]})
            all_rows += [{**row, **_patient(series, anonymize)} for row in marker["rows"]]
            run.reused.append(name)
            run.slices += marker["summary"]["slices"]
            run.tumor_slices += marker["summary"]["tumor_slices"]
            slice_bar.update(len(series.frames))
            continue
        temporary = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-", dir=output))
        try:
            summary, rows = _process_series(
                predictor, series, name, temporary, root, always_seg, batch_size, skip, slice_bar
            )
        except SeriesSkipped as e:
            shutil.rmtree(temporary, ignore_errors=True)
            skip_series(series, str(e))
            continue
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        marker = {
            "generator": GENERATOR,
            "version": __version__,
            "series_instance_uid": series.uid,
            "fingerprint": fingerprint,
            "summary": summary,
            "rows": rows,  # no patient name or ID here: the reports add them from the headers unless anonymized
        }
        atomic_write_bytes(temporary / SERIES_MARKER, json.dumps(marker, indent=1).encode())
        _publish(temporary, target)
        entries.append({**_series_entry(series, name, anonymize), "status": "processed", **summary})
        all_rows += [{**row, **_patient(series, anonymize)} for row in rows]
        run.processed.append(name)
        if summary["outputs"].get("seg_error"):
            run.warnings.append(f"{name}: no DICOM SEG: {summary['outputs']['seg_error']}")
        run.slices += summary["slices"]
        run.tumor_slices += summary["tumor_slices"]
    slice_bar.close()

    columns = DICOM_PREDICTION_COLUMNS + (() if anonymize else PATIENT_COLUMNS)
    write_csv(output / "predictions.csv", columns, ([row.get(c, "") for c in columns] for row in all_rows))
    write_csv(output / "skipped.csv", ("path", "reason"), run.skipped)
    report = {
        "generator": {"name": "bt_monai", "version": __version__},
        "input": str(source),
        "options": {
            "all_modalities": all_modalities,
            "always_seg": always_seg,
            "overwrite": overwrite,
            "anonymize": anonymize,
            **settings,
        },
        "models": provenance,
        "totals": {
            "series_processed": len(run.processed),
            "series_done_earlier": len(run.reused),
            "series_skipped": len(run.skipped_series),
            "slices": run.slices,
            "tumor_slices": run.tumor_slices,
            "files_skipped": len(run.skipped),
        },
        "series": entries,
    }
    atomic_write_bytes(output / "summary.json", (json.dumps(report, indent=2) + "\n").encode())
    return run


def _patient(series: DicomSeries, anonymize: bool) -> dict:
    if anonymize:
        return {}
    return {
        "PatientID": series.attributes.get("PatientID", ""),
        "PatientName": series.attributes.get("PatientName", ""),
    }


def read_predictions(output: str | os.PathLike) -> list[dict]:
    """The rows of ``OUT/predictions.csv`` as dicts (for tests and scripts)."""
    with open(Path(output) / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))
