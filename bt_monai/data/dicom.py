"""DICOM folders as a clinic exports them: find every image series, order its slices, decode their pixels.

A folder from a PACS or a scanner (any nesting, any file names, with or without ``.dcm``, a DICOMDIR
allowed, junk beside it) is scanned once, headers only (pixel data is deferred, not read). Every file that is
not an image slice gets a reason instead (not DICOM, truncated, no pixels such as SR / PR / KO, a DICOMDIR,
a duplicate instance, ...). Images are grouped by SeriesInstanceUID; multi-frame objects count one slice per
frame; slices are ordered by ImagePositionPatient along the slice normal (InstanceNumber when a series has no
geometry).

Pixels are decoded with pydicom and its pixel-data plugins (compressed transfer syntaxes: python-gdcm for
JPEG baseline, JPEG lossless and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, pydicom itself for RLE),
with RescaleSlope / Intercept (per frame for enhanced multi-frame objects) and MONOCHROME1 inverted exactly as
:class:`bt_monai.data.readers.DicomSliceReader` does for single files, so that every DICOM path agrees.

Geometry: DICOM positions are LPS millimetres; :meth:`DicomSeries.affine` gives the RAS affine of a ``(W, H, D)``
volume (MONAI's and NIfTI's convention: first axis = image column), as MONAI's DICOM readers do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bt_monai.data.readers import invert_monochrome1, slice_format

__all__ = [
    "DicomFrame",
    "DicomSeries",
    "DicomScan",
    "is_dicom_file",
    "scan_dicom_folder",
    "decode_frame",
    "iter_frame_pixels",
    "to_channel_first",
]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
SEGMENTATION_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # SEG, label map SEG
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DEFER_SIZE = 4096  # bytes: larger values (pixel data) are located but not read while scanning


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Cheap test, no parsing: a DICOMDIR, a DICOM suffix (``.dcm``, ``.dicom``) or the ``DICM`` preamble."""
    return Path(path).name.upper() == "DICOMDIR" or slice_format(path) == "dicom"


@dataclass(frozen=True)
class DicomFrame:
    """One 2D slice of a series: a single-frame instance, or one frame of a multi-frame object.

    Geometry is in DICOM patient coordinates (LPS, millimetres); any of it may be missing (None).
    """

    path: Path
    sop_instance_uid: str
    frame: int | None  # 0-based frame index in a multi-frame object; None for a single-frame instance
    instance_number: int | None
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    position: tuple[float, float, float] | None = None  # ImagePositionPatient: centre of the first pixel
    orientation: tuple[float, ...] | None = None  # ImageOrientationPatient: row then column direction cosines
    pixel_spacing: tuple[float, float] | None = None  # PixelSpacing: (between rows, between columns)
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    rescale: tuple[float, float] | None = None  # (RescaleSlope, RescaleIntercept)

    @property
    def label(self) -> str:
        """How messages name this slice: the file, plus the frame number (1-based) for multi-frame objects."""
        return str(self.path) if self.frame is None else f"{self.path} [frame {self.frame + 1}]"


@dataclass
class DicomSeries:
    """The image slices of one SeriesInstanceUID, ordered along the slice normal.

    ``attributes``: the series' identifying attributes as strings (PatientID, PatientName, StudyInstanceUID,
    StudyDate, SeriesNumber, SeriesDescription, Modality, FrameOfReferenceUID), from its first instance.
    """

    uid: str
    modality: str
    attributes: dict[str, str]
    frames: list[DicomFrame]
    ordered_by: str = "position"  # or "instance number" when the slices carry no usable geometry

    def instance_paths(self) -> list[Path]:
        """Each instance file once, in slice order."""
        return list(dict.fromkeys(f.path for f in self.frames))

    def with_frames(self, frames: list[DicomFrame]) -> DicomSeries:
        """The same series restricted to ``frames`` (e.g. the slices whose pixels could be decoded)."""
        return replace(self, frames=list(frames))

    def _geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(row cosines, column cosines, positions (N, 3)) when every slice has them, else None."""
        first = self.frames[0]
        if first.orientation is None or any(f.position is None for f in self.frames):
            return None
        row, col = np.asarray(first.orientation[:3], float), np.asarray(first.orientation[3:], float)
        return row, col, np.asarray([f.position for f in self.frames], float)

    @property
    def normal(self) -> np.ndarray | None:
        geometry = self._geometry()
        return None if geometry is None else np.cross(geometry[0], geometry[1])

    def slice_spacing(self) -> tuple[float | None, str | None]:
        """Distance between slice centres in mm, and a note when it is estimated or questionable.

        From the positions along the normal (their median step) when there are several slices; else
        SpacingBetweenSlices, else SliceThickness. None (with the reason) when slices share a position
        (several echoes or time points in one series) or nothing tells.
        """
        geometry = self._geometry()
        if geometry is not None and len(self.frames) > 1:
            steps = np.diff(geometry[2] @ np.cross(geometry[0], geometry[1]))
            if np.any(np.abs(steps) < 1e-3):
                return None, "several slices share one position (echoes or time points?): no slice spacing"
            spacing = float(np.median(np.abs(steps)))
            if np.max(np.abs(np.abs(steps) - spacing)) > 0.01 * spacing + 1e-3:
                low, high = float(np.abs(steps).min()), float(np.abs(steps).max())
                return spacing, f"uneven slice spacing ({low:.3g} to {high:.3g} mm): the median is used"
            return spacing, None
        first = self.frames[0]
        for value, source in (
            (first.spacing_between_slices, "SpacingBetweenSlices"),
            (first.slice_thickness, "SliceThickness"),
        ):
            if value and value > 0:
                note = None if len(self.frames) == 1 else f"no slice positions: spacing from {source}"
                return float(value), note
        return None, "no slice positions, SpacingBetweenSlices or SliceThickness: slice spacing unknown"

    def pixel_spacing(self) -> tuple[float, float] | None:
        """(between rows, between columns) in mm, from the first slice; None when absent."""
        return self.frames[0].pixel_spacing

    def affine(self) -> tuple[np.ndarray, str | None]:
        """The 4x4 RAS affine of this series as a ``(W, H, D)`` volume (index: column, row, slice), and a note.

        Built as ITK and MONAI build it: column step along the row cosines, row step along the column cosines,
        slice step from the first to the last position; LPS turned into RAS. Without orientation or positions
        the affine is a plain scaling by the spacings (the note says so).
        """
        spacing, note = self.slice_spacing()
        row_spacing, col_spacing = self.pixel_spacing() or (1.0, 1.0)
        geometry = self._geometry()
        lps = np.eye(4)
        if geometry is None:
            lps[:3, :3] = np.diag([col_spacing, row_spacing, spacing or 1.0])
            return lps, "no ImageOrientationPatient / ImagePositionPatient: the volume has no patient geometry"
        row, col, positions = geometry
        lps[:3, 0] = row * col_spacing
        lps[:3, 1] = col * row_spacing
        if len(positions) > 1 and spacing is not None:
            lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
        else:
            lps[:3, 2] = np.cross(row, col) * (spacing or 1.0)
        lps[:3, 3] = positions[0]
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, note


@dataclass
class DicomScan:
    """What a folder scan found: image series (each ordered), and every file left out with its reason."""

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or "path [frame n]", reason)


def _float(value) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) else None


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        result = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return result if len(result) == n and all(np.isfinite(result)) else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _functional(ds, index: int, sequence: str, keyword: str):
    """``keyword`` of frame ``index``: per-frame functional group, shared group, then the top level."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return ds.get(keyword)


def _frames_of(ds, path: Path) -> list[DicomFrame]:
    n = _int(ds.get("NumberOfFrames")) or 1
    frames = []
    for i in range(n):
        slope = _float(_functional(ds, i, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(_functional(ds, i, "PixelValueTransformationSequence", "RescaleIntercept"))
        spacing = _floats(_functional(ds, i, "PixelMeasuresSequence", "PixelSpacing"), 2)
        frames.append(
            DicomFrame(
                path=path,
                sop_instance_uid=str(ds.SOPInstanceUID),
                frame=i if n > 1 else None,
                instance_number=_int(ds.get("InstanceNumber")),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                samples_per_pixel=_int(ds.get("SamplesPerPixel")) or 1,
                photometric=_text(ds, "PhotometricInterpretation").upper(),
                position=_floats(_functional(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_floats(_functional(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                pixel_spacing=spacing if spacing and min(spacing) > 0 else None,
                slice_thickness=_float(_functional(ds, i, "PixelMeasuresSequence", "SliceThickness")),
                spacing_between_slices=_float(_functional(ds, i, "PixelMeasuresSequence", "SpacingBetweenSlices")),
                rescale=(slope if slope is not None else 1.0, intercept or 0.0)
                if slope is not None or intercept is not None
                else None,
            )
        )
    return frames


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log lines about non-conformant values: the caller reports problems."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_header(path: Path):
    """The dataset of ``path`` with large values (pixel data) deferred; raises ``ValueError`` if not DICOM.

    Files without the 128-byte preamble and ``DICM`` prefix (older exports) are accepted when they parse as
    a dataset naming an SOP instance.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    with _quiet_pydicom():
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
    seen: dict[str, Path] = {}
    by_series: dict[str, list[DicomFrame]] = {}
    attributes: dict[str, dict[str, str]] = {}
    for path in _walk(root, skip_dir, scan.skipped):
        if skip_file and skip_file(path):
            continue
        try:
            ds = read_header(path)
        except ValueError as e:
            scan.skipped.append((str(path), str(e)))
            continue
        sop_class = _text(ds, "SOPClassUID")
        modality = _text(ds, "Modality")
        if sop_class == DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
            scan.skipped.append((str(path), "DICOMDIR: a media directory, not an image (its images are scanned)"))
            continue
        if not any(tag in ds for tag in PIXEL_TAGS):
            what = _sop_class_name(sop_class) + (f", modality {modality}" if modality else "")
            scan.skipped.append((str(path), f"no pixel data ({what}): not an image"))
            continue
        if sop_class in SEGMENTATION_SOP_CLASSES or modality == "SEG":
            scan.skipped.append((str(path), "a segmentation (SEG), not an image to segment"))
            continue
        sop_uid, series_uid = _text(ds, "SOPInstanceUID"), _text(ds, "SeriesInstanceUID")
        if not sop_uid or not series_uid:
            missing = "SOPInstanceUID" if not sop_uid else "SeriesInstanceUID"
            scan.skipped.append((str(path), f"no {missing}: cannot be placed in a series"))
            continue
        if sop_uid in seen:
            first = seen[sop_uid].relative_to(root) if root.is_dir() else seen[sop_uid]
            scan.skipped.append((str(path), f"duplicate instance (same SOPInstanceUID as {first})"))
            continue
        try:
            frames = _frames_of(ds, path)
        except Exception as e:  # Rows / Columns missing or malformed
            scan.skipped.append((str(path), f"image attributes unreadable: {type(e).__name__}: {e}"))
            continue
        seen[sop_uid] = path
        by_series.setdefault(series_uid, []).extend(frames)
        attributes.setdefault(
            series_uid,
            {
                key: _text(ds, key)
                for key in (
                    "PatientID",
                    "PatientName",
                    "StudyInstanceUID",
                    "StudyDate",
                    "SeriesNumber",
                    "SeriesDescription",
                    "Modality",
                    "FrameOfReferenceUID",
                )
            },
        )
    for series_uid, frames in by_series.items():
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
                scan.skipped += [(f.label, reason) for f in others]
        ordered, ordered_by = _order(stacks[main_key])
        attrs = attributes[series_uid]
        scan.series.append(DicomSeries(series_uid, attrs["Modality"], attrs, ordered, ordered_by))
    scan.series.sort(
        key=lambda s: (
            s.attributes["PatientID"],
            s.attributes["StudyDate"],
            s.attributes["StudyInstanceUID"],
            _int(s.attributes["SeriesNumber"]) or 0,
            s.uid,
        )
    )
    return scan


def decode_frame(frame: DicomFrame, ds=None) -> np.ndarray:
    """Pixels of one slice as float32 ``(rows, columns)`` (grayscale) or ``(rows, columns, 3)`` (colour).

    Rescale slope / intercept applied; MONOCHROME1 inverted (:func:`invert_monochrome1`); YBR turned into
    RGB and palette colour applied by pydicom. ``ds``: the instance's dataset if already read (saves a read).
    Raises when the pixel data cannot be decoded (truncated, or no plugin for its transfer syntax).
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    if ds is None:
        with _quiet_pydicom():
            ds = pydicom.dcmread(frame.path)
    with _quiet_pydicom():
        pixels = pixel_array(ds, index=frame.frame)
        if frame.photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
    pixels = np.asarray(pixels)
    if pixels.shape[:2] != (frame.rows, frame.columns):
        raise ValueError(f"decoded pixels of shape {pixels.shape}, expected ({frame.rows}, {frame.columns})")
    pixels = pixels.astype(np.float32)
    if pixels.ndim == 2 and frame.rescale is not None:
        slope, intercept = frame.rescale
        pixels = pixels * np.float32(slope) + np.float32(intercept)  # as MONAI's PydicomReader: float32
    if frame.photometric == "MONOCHROME1":
        pixels = invert_monochrome1(pixels)
    return pixels


def iter_frame_pixels(frames: Iterable[DicomFrame]) -> Iterator[tuple[DicomFrame, np.ndarray | Exception]]:
    """Decode ``frames`` in order, yielding ``(frame, pixels)`` or ``(frame, exception)`` for a failed one.

    The last instance read is kept, so the frames of one multi-frame object are read from disk once.
    """
    import pydicom

    cached: tuple[Path, object] | None = None
    for frame in frames:
        try:
            if cached is None or cached[0] != frame.path:
                cached = None
                with _quiet_pydicom():
                    cached = (frame.path, pydicom.dcmread(frame.path))
            yield frame, decode_frame(frame, cached[1])
        except Exception as e:
            yield frame, e


def to_channel_first(pixels: np.ndarray) -> np.ndarray:
    """``(rows, columns)`` or ``(rows, columns, C)`` to MONAI's ``(C, W, H)`` (first spatial axis = column)."""
    return pixels.T[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 1, 0))
