"""A series in any plane, predicted on axial slices: the plan (:func:`plan_axial`) and the resampling both ways
(:func:`to_axial`, :func:`to_source`), on the whole volume with MONAI's ``SpatialResample``.

The models were trained on axial slices (the LGG slices of ``kaggle_3m``). Those TIFFs carry no spacing; the
models are taken to expect what a clinical axial FLAIR of that collection has, and what our DICOM exports use:
0.9375 mm pixels (a 240 mm field of view on 256 pixels) and 5 mm between slices
(:data:`TRAINING_PIXEL_MM`, :data:`TRAINING_SLICE_MM`, :data:`TRAINING_FOV_PX`). A series tilted more than a
tolerance from axial (sagittal, coronal, oblique) is resampled onto an axial grid at that spacing; the models
predict its slices; the probabilities are resampled back onto the source grid (linear) and thresholded there.

Volumes are MONAI's ``(C, W, H, D)`` (first spatial axis = image column) with a 4x4 RAS affine, as
:meth:`bt_monai.data.dicom.DicomSeries.affine` and MONAI's DICOM readers give them. The axial grid is the
radiological one of the training slices (and of a DICOM series with ImageOrientationPatient ``1\\0\\0\\0\\1\\0``):
columns run towards the patient's left, rows towards posterior, slices towards superior. Its points lie on the
lattice of the source's first voxel wherever the spacings allow (so an axial volume written as sagittal images
comes back voxel for voxel); it covers the whole source, square in plane, at least the training field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "AXIAL_TOLERANCE_DEG",
    "MIN_REFORMAT_SLICES",
    "TRAINING_FOV_PX",
    "TRAINING_PIXEL_MM",
    "TRAINING_SLICE_MM",
    "AxialPlan",
    "not_reformatted",
    "plan_axial",
    "resample_volume",
    "slice_plane",
    "to_axial",
    "to_source",
]

TRAINING_PIXEL_MM = 0.9375  # in-plane pixel size the models are taken to expect (240 mm on 256 pixels)
TRAINING_SLICE_MM = 5.0  # distance between the axial slices a reformat predicts
TRAINING_FOV_PX = 256  # pixels across the training slices (before the network's 224 resize)
AXIAL_TOLERANCE_DEG = 10.0  # a slice normal within this angle of head-foot is axial: predicted as acquired
OBLIQUE_DEG = 1.0  # tilted more than this from the nearest standard plane: named oblique
MIN_REFORMAT_SLICES = 8  # fewer images along the series' axis: too little volume to resample

INTERPOLATION = 3  # the images onto the axial grid: cubic B-spline (MONAI's SpatialResample mode 3, scipy)

# the axial grid's axes in RAS: columns to the patient's left (-x), rows to posterior (-y), slices superior (+z)
_AXIAL_AXES = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
_PLANES = ("sagittal", "coronal", "axial")  # the plane whose normal is RAS x, y, z


def slice_plane(affine: np.ndarray) -> tuple[str, float]:
    """The nearest standard plane of a ``(W, H, D)`` volume's slices and their tilt from axial in degrees.

    The plane is prefixed "oblique " when the slices are tilted more than :data:`OBLIQUE_DEG` from it.

    The slice normal is the affine's third column (the D axis); its tilt is its angle to the head-foot axis
    (0: axial, 90: sagittal or coronal).
    """
    normal = np.asarray(affine, float)[:3, 2]
    normal = normal / (np.linalg.norm(normal) or 1.0)
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    nearest = int(np.argmax(np.abs(normal)))
    off_plane = math.degrees(math.acos(min(1.0, abs(float(normal[nearest])))))
    return ("oblique " if off_plane > OBLIQUE_DEG else "") + _PLANES[nearest], angle


@dataclass(frozen=True)
class AxialPlan:
    """How one series is predicted: as acquired, or resampled to the axial grid (``axial_affine``, ``axial_shape``).

    ``plane``/``angle_deg``: the series' nearest plane and tilt from axial (:func:`slice_plane`; None without
    geometry); ``reason``: one line saying what happens and why.
    """

    reformat: bool
    reason: str
    plane: str | None = None
    angle_deg: float | None = None
    source_affine: np.ndarray | None = field(default=None, repr=False)
    source_shape: tuple[int, int, int] | None = None
    axial_affine: np.ndarray | None = field(default=None, repr=False)
    axial_shape: tuple[int, int, int] | None = None

    def spacing_mm(self) -> list[float] | None:
        """The axial grid's spacing (column, row, slice) in mm; None when not reformatted."""
        if self.axial_affine is None:
            return None
        return [round(float(np.linalg.norm(self.axial_affine[:3, a])), 6) for a in range(3)]

    def as_dict(self) -> dict:
        """What ``summary.json`` records of the path a series took."""
        return {
            "plane": self.plane,
            "angle_from_axial_deg": None if self.angle_deg is None else round(self.angle_deg, 2),
            "reformatted": self.reformat,
            "axial_slices": None if self.axial_shape is None else int(self.axial_shape[2]),
            "axial_grid": None if self.axial_shape is None else [int(s) for s in self.axial_shape],
            "axial_spacing_mm": self.spacing_mm(),
            "reason": self.reason,
        }


def not_reformatted(reason: str, plane: str | None = None, angle_deg: float | None = None) -> AxialPlan:
    """A plan that predicts the series as acquired, saying why."""
    return AxialPlan(False, reason, plane, angle_deg)


def plan_axial(
    affine: np.ndarray,
    spatial_shape: tuple[int, int, int],
    tolerance_deg: float = AXIAL_TOLERANCE_DEG,
    pixel_mm: float = TRAINING_PIXEL_MM,
    slice_mm: float = TRAINING_SLICE_MM,
    min_slices: int = MIN_REFORMAT_SLICES,
    fov_px: int = TRAINING_FOV_PX,
    volume: np.ndarray | torch.Tensor | None = None,
) -> AxialPlan:
    """Decide how a ``(W, H, D)`` volume with RAS ``affine`` is predicted, and build its axial grid if resampled.

    Axial within ``tolerance_deg``: as acquired. Fewer than ``min_slices`` slices: as acquired (too little to
    resample). Otherwise the axial grid: ``pixel_mm`` in plane, ``slice_mm`` between slices, its points on the
    lattice of the source's first voxel; in plane ``fov_px`` pixels square (the training slices' field of view,
    so the networks see anatomy at the training scale), centred on the source when the source fits in it, else
    on the head (the bounding box of ``volume``'s voxels above 10% of its 99th percentile, when ``volume``
    ``(C, W, H, D)`` is given) and widened only if the head itself is wider; along the head-foot axis, the
    source's extent.
    """
    affine = np.asarray(affine, float)
    shape = tuple(int(s) for s in spatial_shape)
    plane, angle = slice_plane(affine)
    if angle <= tolerance_deg:
        return not_reformatted(
            f"{plane} ({angle:.1f} degrees from axial, within {tolerance_deg:g}): predicted as acquired", plane, angle
        )
    if shape[2] < min_slices:
        return not_reformatted(
            f"{plane} ({angle:.1f} degrees from axial) with {shape[2]} images along its axis, fewer than "
            f"{min_slices}: too few to reformat, predicted as acquired (masks may be poor: the models know axial "
            "slices)",
            plane,
            angle,
        )
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    world = (affine @ corners.T)[:3].T  # (8, 3) RAS voxel centres of the source's corners
    steps = np.array([pixel_mm, pixel_mm, slice_mm], float)
    projected = world @ _AXIAL_AXES.T  # coordinates along the axial grid's axes
    reference = _AXIAL_AXES @ affine[:3, 3]  # the source's first voxel, on the same axes
    first = np.ceil((projected.min(0) - reference) / steps - 1e-4)
    last = np.floor((projected.max(0) - reference) / steps + 1e-4)
    counts = np.maximum(last - first + 1, 1)
    side = fov_px
    if max(counts[0], counts[1]) > fov_px and volume is not None:  # wider than the training field: find the head
        head = _head_extent(volume, affine)
        if head is not None:
            low, high = np.floor((head[0] - reference) / steps), np.ceil((head[1] - reference) / steps)
            side = max(fov_px, int(high[0] - low[0] + 1), int(high[1] - low[1] + 1))
            first[:2], counts[:2] = low[:2], high[:2] - low[:2] + 1
    elif max(counts[0], counts[1]) > fov_px:
        side = max(int(counts[0]), int(counts[1]))
    for axis in (0, 1):  # square in plane, centred on what it covers
        first[axis] -= (side - counts[axis]) // 2
        counts[axis] = side
    axial = np.eye(4)
    axial[:3, :3] = _AXIAL_AXES.T * steps
    axial[:3, 3] = _AXIAL_AXES.T @ (reference + first * steps)
    axial_shape = tuple(int(c) for c in counts)
    reason = (
        f"{plane} ({angle:.1f} degrees from axial, beyond {tolerance_deg:g}): reformatted to {axial_shape[2]} axial "
        f"slices of {side} x {side} at {pixel_mm:g} x {pixel_mm:g} x {slice_mm:g} mm; masks mapped back"
    )
    return AxialPlan(True, reason, plane, angle, affine, shape, axial, axial_shape)


def _head_extent(volume, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high) along the axial grid's axes of the head: the voxels above 10% of the 99th percentile, their
    0.1% and 99.9% quantiles (a stray bright pixel does not widen it); None if none."""
    values = volume.as_tensor() if hasattr(volume, "as_tensor") else torch.as_tensor(np.asarray(volume))
    values = values.float().amax(0)  # (W, H, D)
    sample = values.reshape(-1)[:: max(1, values.numel() // 1_000_000)]
    level = 0.1 * float(torch.quantile(sample, 0.99))
    found = torch.nonzero(values > level) if level > 0 else torch.zeros(0, 3)
    if len(found) == 0:
        return None
    found = found[:: max(1, len(found) // 200_000)].double().numpy()
    projected = (found @ affine[:3, :3].T + affine[:3, 3]) @ _AXIAL_AXES.T
    return np.quantile(projected, 0.001, axis=0), np.quantile(projected, 0.999, axis=0)


def resample_volume(
    volume: np.ndarray | torch.Tensor,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """A ``(C, W, H, D)`` volume with RAS ``source_affine`` sampled on another grid: float32 ``(C, *target_shape)``.

    MONAI's ``SpatialResample`` (``mode`` bilinear = trilinear here, or nearest; ``padding_mode`` for points
    outside the source: zeros, border, reflection).
    """
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    tensor = volume.as_tensor() if hasattr(volume, "as_tensor") else torch.as_tensor(np.asarray(volume))
    image = MetaTensor(tensor.float(), affine=torch.as_tensor(source_affine, dtype=torch.float64))
    resample = SpatialResample(mode=mode, padding_mode=padding_mode, align_corners=False, dtype=torch.float32)
    out = resample(image, dst_affine=torch.as_tensor(target_affine, dtype=torch.float64), spatial_size=target_shape)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def to_axial(volume: np.ndarray | torch.Tensor, plan: AxialPlan) -> torch.Tensor:
    """The source ``(C, W, H, D)`` volume on the plan's axial grid: float32 ``(C, *plan.axial_shape)``.

    Cubic B-spline (:data:`INTERPOLATION`; measured on oblique series: per-patient Dice against the axial run
    0.92 where trilinear gave 0.87), clipped to the source's range; points outside the source are 0 (air).
    """
    if not plan.reformat:
        raise ValueError(f"this series is not reformatted ({plan.reason})")
    values = volume.as_tensor() if hasattr(volume, "as_tensor") else torch.as_tensor(np.asarray(volume))
    values = values.float()
    axial = resample_volume(values, plan.source_affine, plan.axial_affine, plan.axial_shape, INTERPOLATION, "zeros")
    return axial.clamp(min(float(values.min()), 0.0), float(values.max()))  # no spline overshoot past the source


def to_source(probabilities: np.ndarray | torch.Tensor, plan: AxialPlan) -> torch.Tensor:
    """Per-voxel values ``(C, *plan.axial_shape)`` on the axial grid (tumor probabilities) mapped back onto the
    source grid: float32 ``(C, *plan.source_shape)``.

    Trilinear; source voxels beyond the first or last axial slice take that slice's values (the axial slices
    lie inside the source's extent, less than one spacing from its ends); those outside the axial slices' field
    of view in plane (beyond the head of a wide source) get 0.
    """
    if not plan.reformat:
        raise ValueError(f"this series is not reformatted ({plan.reason})")
    values = probabilities.as_tensor() if hasattr(probabilities, "as_tensor") else torch.as_tensor(probabilities)
    # one copy of the first and last slice beyond each end: constant there; beyond the slices in plane, 0
    values = torch.cat([values[..., :1], values, values[..., -1:]], dim=-1)
    affine = plan.axial_affine.copy()
    affine[:3, 3] -= affine[:3, 2]
    return resample_volume(values, affine, plan.source_affine, plan.source_shape, "bilinear", "zeros")
