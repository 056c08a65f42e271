"""DICOM folders as a clinic exports them: find every image series and order its slices, headers only.

A folder from a PACS or a scanner (any nesting, any file names, with or without ``.dcm``, a DICOMDIR
allowed, junk beside it) is scanned once, headers only (pixel data is deferred, not read). Every file that is
not an image slice gets a reason instead (not DICOM, truncated, no pixels such as SR / PR / KO, a DICOMDIR,
a duplicate instance, ...). Images are grouped by SeriesInstanceUID; multi-frame objects count one slice per
frame; slices are ordered by ImagePositionPatient along the slice normal (InstanceNumber when a series has no
geometry). Of several files holding one SOP instance, the first whose pixels decode is kept (only then are
pixels read during a scan: a truncated copy beside a good one loses nothing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bt_monai.data.dicom.decode import iter_frame_pixels
from bt_monai.data.dicom.series import DicomFrame, DicomSeries, _frames_of, _int, _text
from bt_monai.utils import quiet_loggers

__all__ = ["DicomScan", "is_dicom_file", "read_header", "scan_dicom_folder"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
SEGMENTATION_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # SEG, label map SEG
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DEFER_SIZE = 4096  # bytes: larger values (pixel data) are located but not read while scanning
SERIES_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "SeriesNumber",
    "SeriesDescription",
    "ProtocolName",
    "Modality",
    "FrameOfReferenceUID",
)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Cheap test, no parsing: a DICOMDIR, a DICOM suffix (``.dcm``, ``.dicom``) or the ``DICM`` preamble."""
    from bt_monai.data.pixels import slice_format

    return Path(path).name.upper() == "DICOMDIR" or slice_format(path) == "dicom"


@dataclass
class DicomScan:
    """What a folder scan found: image series (each ordered), and every file left out with its reason."""

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or "path [frame n]", reason)


@dataclass
class _Instance:
    """One image file the scan accepted: its slices, and the attributes of its series."""

    path: Path
    sop_uid: str
    series_uid: str
    frames: list[DicomFrame]
    attributes: dict[str, str]


def read_header(path: Path):
    """The dataset of ``path`` with large values (pixel data) deferred; raises ``ValueError`` if not DICOM.

    Files without the 128-byte preamble and ``DICM`` prefix (older exports) are accepted when they parse as
    a dataset naming an SOP instance.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    with quiet_loggers("pydicom", level=logging.CRITICAL):  # the scan reports every problem itself
        try:
            return pydicom.dcmread(path, defer_size=DEFER_SIZE)
        except InvalidDicomError:
            pass
        except Exception as e:
            raise ValueError(f"unreadable DICOM (truncated, corrupt or not accessible): {type(e).__name__}: {e}") from e
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)
            if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
                str(ds.SOPInstanceUID)  # parse it: a junk file fails here
                return ds
        except Exception:
            pass
    raise ValueError("not a DICOM file")


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "unknown SOP class")


def _walk(root: Path, skip_dir: Callable[[Path], bool] | None, errors: list) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    visited: set[str] = set()

    def unreadable(error: OSError) -> None:
        errors.append((str(error.filename), f"folder not readable: {error.strerror or error}"))

    for dirpath, dirnames, names in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop, or a folder reached twice
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not (skip_dir and skip_dir(Path(dirpath) / d)))
        for name in sorted(names):
            yield Path(dirpath) / name


def _stack_key(frame: DicomFrame) -> tuple:
    orientation = None if frame.orientation is None else tuple(round(v, 3) for v in frame.orientation)
    return frame.rows, frame.columns, frame.samples_per_pixel, orientation


def _order(frames: list[DicomFrame]) -> tuple[list[DicomFrame], str]:
    orientation = frames[0].orientation
    if orientation is not None and all(f.position is not None for f in frames):
        normal = np.cross(orientation[:3], orientation[3:])

        def along_normal(f: DicomFrame) -> tuple:
            return float(np.dot(f.position, normal)), f.instance_number or 0, f.frame or 0, str(f.path)

        return sorted(frames, key=along_normal), "position"

    def by_number(f: DicomFrame) -> tuple:
        number = f.instance_number
        return number is None, number or 0, f.frame or 0, str(f.path)

    return sorted(frames, key=by_number), "instance number"


def _not_an_image(ds, path: Path) -> str | None:
    """Why the file ``path`` (dataset ``ds``) is no image slice to segment, or None when it is one."""
    sop_class, modality = _text(ds, "SOPClassUID"), _text(ds, "Modality")
    if sop_class == DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
        return "DICOMDIR: a media directory, not an image (its images are scanned)"
    if not any(tag in ds for tag in PIXEL_TAGS):
        what = _sop_class_name(sop_class) + (f", modality {modality}" if modality else "")
        return f"no pixel data ({what}): not an image"
    if sop_class in SEGMENTATION_SOP_CLASSES or modality == "SEG":
        return "a segmentation (SEG), not an image to segment"
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
        if not _text(ds, keyword):
            return f"no {keyword}: cannot be placed in a series"
    return None


def _read_instance(path: Path) -> _Instance | str:
    """The image file ``path``, or why it yields no slice."""
    try:
        ds = read_header(path)
    except ValueError as e:
        return str(e)
    reason = _not_an_image(ds, path)
    if reason:
        return reason
    try:
        frames = _frames_of(ds, path)
    except Exception as e:  # Rows / Columns missing or malformed
        return f"image attributes unreadable: {type(e).__name__}: {e}"
    attributes = {key: _text(ds, key) for key in SERIES_ATTRIBUTES}
    return _Instance(path, _text(ds, "SOPInstanceUID"), _text(ds, "SeriesInstanceUID"), frames, attributes)


def _decodes(instance: _Instance) -> bool:
    return not any(isinstance(pixels, Exception) for _, pixels in iter_frame_pixels(instance.frames))


def _keep_one(candidates: list[_Instance], slots: list[int], root: Path, skipped: list) -> _Instance:
    """Of files sharing one SOPInstanceUID, the first whose pixels decode (else the first); the others are
    skipped as duplicates, their reasons filling the places ``slots`` held in ``skipped`` for them."""
    kept = next((c for c in candidates if _decodes(c)), candidates[0])
    shown = kept.path.relative_to(root) if root.is_dir() else kept.path
    others = [c for c in candidates if c is not kept]
    for slot, other in zip(slots, others, strict=True):
        skipped[slot] = (str(other.path), f"duplicate instance (same SOPInstanceUID as {shown})")
    return kept


def _read_instances(root: Path, skip_dir, skip_file, skipped: list) -> list[_Instance]:
    """Every image file below ``root``, one per SOP instance, in the order they were first found."""
    candidates: dict[str, list[_Instance]] = {}
    slots: dict[str, list[int]] = {}  # places in ``skipped`` kept for duplicates, in the order they were met
    for path in _walk(root, skip_dir, skipped):
        if skip_file and skip_file(path):
            continue
        instance = _read_instance(path)
        if isinstance(instance, str):
            skipped.append((str(path), instance))
            continue
        if instance.sop_uid in candidates:
            slots.setdefault(instance.sop_uid, []).append(len(skipped))
            skipped.append((str(path), ""))  # its reason is filled in once the copy to keep is known
        candidates.setdefault(instance.sop_uid, []).append(instance)
    return [
        _keep_one(found, slots[uid], root, skipped) if len(found) > 1 else found[0] for uid, found in candidates.items()
    ]


def _main_stack(series_uid: str, frames: list[DicomFrame], skipped: list) -> list[DicomFrame]:
    """The frames of the largest stack (size and orientation) of a series; the others go to ``skipped``."""
    stacks: dict[tuple, list[DicomFrame]] = {}
    for frame in frames:
        stacks.setdefault(_stack_key(frame), []).append(frame)
    main_key = max(stacks, key=lambda k: len(stacks[k]))
    for key, others in stacks.items():
        if key != main_key:
            reason = (
                f"size or orientation differs from the main stack of series {series_uid} "
                f"({len(stacks[main_key])} slices; e.g. a localizer): not processed"
            )
            skipped += [(f.label, reason) for f in others]
    return stacks[main_key]


def _series_key(series: DicomSeries) -> tuple:
    a = series.attributes
    return a["PatientID"], a["StudyDate"], a["StudyInstanceUID"], _int(a["SeriesNumber"]) or 0, series.uid


def scan_dicom_folder(
    root: str | os.PathLike,
    skip_dir: Callable[[Path], bool] | None = None,
    skip_file: Callable[[Path], bool] | None = None,
) -> DicomScan:
    """Find every image series below ``root`` (a folder, any nesting; or one file), headers only.

    ``skip_dir`` / ``skip_file`` leave out paths entirely (e.g. this tool's own outputs inside the input).
    Each file that yields no slice is in ``skipped`` with its reason. Within a series, slices of another
    size or orientation than the majority (e.g. localizers) are skipped too: one series, one stack.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"input not found: {root}")
    scan = DicomScan()
    by_series: dict[str, list[DicomFrame]] = {}
    attributes: dict[str, dict[str, str]] = {}
    for instance in _read_instances(root, skip_dir, skip_file, scan.skipped):
        by_series.setdefault(instance.series_uid, []).extend(instance.frames)
        attributes.setdefault(instance.series_uid, instance.attributes)
    for series_uid, frames in by_series.items():
        ordered, ordered_by = _order(_main_stack(series_uid, frames, scan.skipped))
        attrs = attributes[series_uid]
        scan.series.append(DicomSeries(series_uid, attrs["Modality"], attrs, ordered, ordered_by))
    scan.series.sort(key=_series_key)
    return scan
