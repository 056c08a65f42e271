"""What a DICOM series is once its headers are read: its slices (frames), their order and their geometry.

Geometry: DICOM positions are LPS millimetres; :meth:`DicomSeries.affine` gives the RAS affine of a ``(W, H, D)``
volume (MONAI's and NIfTI's convention: first axis = image column), as MONAI's DICOM readers do. Volumes in mm³
come from one rule (:meth:`DicomSeries.volume_mm3`, :func:`dicom_voxel_volume_mm3` for one file).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bt_monai.utils import quiet_loggers

__all__ = ["DicomFrame", "DicomSeries", "dicom_voxel_volume_mm3"]


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


def _lone_slice_spacing(frame: DicomFrame) -> tuple[float, str] | None:
    """The slice spacing a slice states itself, and where it comes from: SpacingBetweenSlices, else SliceThickness."""
    for value, source in (
        (frame.spacing_between_slices, "SpacingBetweenSlices"),
        (frame.slice_thickness, "SliceThickness"),
    ):
        if value and value > 0:
            return float(value), source
    return None


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
        stated = _lone_slice_spacing(self.frames[0])
        if stated is None:
            return None, "no slice positions, SpacingBetweenSlices or SliceThickness: slice spacing unknown"
        value, source = stated
        return value, None if len(self.frames) == 1 else f"no slice positions: spacing from {source}"

    def pixel_spacing(self) -> tuple[float, float] | None:
        """(between rows, between columns) in mm, from the first slice; None when absent."""
        return self.frames[0].pixel_spacing

    def volume_mm3(self, voxels: int) -> float | None:
        """The volume of ``voxels`` voxels of this series in mm³ (pixel spacing x slice spacing); None if unknown."""
        spacing, _ = self.slice_spacing()
        pixel_spacing = self.pixel_spacing()
        if spacing is None or pixel_spacing is None:
            return None
        return voxels * pixel_spacing[0] * pixel_spacing[1] * spacing

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


def dicom_voxel_volume_mm3(path: str | os.PathLike) -> float | None:
    """The volume of one voxel of the DICOM slice ``path`` in mm³, or None when it is unknown or unreadable.

    PixelSpacing x the slice spacing a lone slice states (SpacingBetweenSlices, else SliceThickness): the rule
    of :meth:`DicomSeries.volume_mm3` for a one-slice series. Headers only (pixel data is not read).
    """
    import pydicom

    path = Path(path)
    try:
        with quiet_loggers("pydicom", level=logging.CRITICAL):
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        frame = _frames_of(ds, path)[0]
    except Exception:  # not DICOM, truncated, no Rows / SOPInstanceUID, ...
        return None
    return DicomSeries(_text(ds, "SeriesInstanceUID"), _text(ds, "Modality"), {}, [frame]).volume_mm3(1)


# --- header values to frames --------------------------------------------------------------------------------


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
    """The slices of the dataset ``ds`` read from ``path``: one, or one per frame of a multi-frame object."""
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
