"""The 2D slice pipeline applied to a volume slice by slice (a DICOM series read as one 3D image).

The models are 2D: a series ``(C, W, H, D)`` (MONAI's reader output, D = slices) is preprocessed slice by slice
with exactly :func:`bt_monai.transforms.slice_preprocessing` (minus loading), run with MONAI's ``SliceInferer``,
and each slice's probability map is turned into a mask exactly as :class:`bt_monai.inferers.TumorPredictor`
does (:func:`probability_to_mask`), so a series gives the masks its slices give one by one.

A series in another plane (sagittal, coronal, oblique beyond a tolerance) is first resampled to axial slices
(:class:`ReformatToAxiald`, the rule of :mod:`bt_monai.transforms.reformat`, as the DICOM app applies it); its
slices' probabilities are mapped back onto the series' own grid and thresholded there (:class:`SlicewiseToMaskd`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from bt_monai.transforms.functional import (
    DEFAULT_INPUT_MODE,
    SPATIAL_SIZE,
    probabilities_to_cleaned_maps,
    probability_to_mask,
)
from bt_monai.transforms.presets import slice_preprocessing
from bt_monai.transforms.reformat import (
    AXIAL_TOLERANCE_DEG,
    MIN_REFORMAT_SLICES,
    TRAINING_PIXEL_MM,
    TRAINING_SLICE_MM,
    AxialPlan,
    plan_axial,
    to_axial,
    to_source,
)

__all__ = [
    "AXIAL_PLAN_KEY",
    "ReformatToAxiald",
    "SlicewisePreprocessd",
    "SlicewiseToMaskd",
    "axial_plan_from_meta",
    "axial_plan_to_meta",
    "probability_to_mask",
]

AXIAL_PLAN_KEY = "axial_plan"  # the metadata key of the path a volume takes (:func:`axial_plan_to_meta`)


def axial_plan_to_meta(plan: AxialPlan) -> dict:
    """The plan as metadata: plain values and numpy arrays only (no None), so MONAI's collation in a DataLoader
    and ``decollate_batch`` keep it (as tensors, lists of one string, ...); :func:`axial_plan_from_meta` reads
    it back either way."""
    meta: dict = {"reformat": bool(plan.reformat), "reason": plan.reason}
    if plan.plane is not None:
        meta["plane"] = plan.plane
    if plan.angle_deg is not None:
        meta["angle_deg"] = float(plan.angle_deg)
    if plan.reformat:
        meta["source_affine"] = np.asarray(plan.source_affine, np.float64)
        meta["source_shape"] = np.asarray(plan.source_shape, np.int64)
        meta["axial_affine"] = np.asarray(plan.axial_affine, np.float64)
        meta["axial_shape"] = np.asarray(plan.axial_shape, np.int64)
    return meta


def _single(value):
    """One item's value out of what collation may have made of it (a list of one, a tensor with a batch of 1)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return value


def _array(value, shape: tuple[int, ...], dtype) -> np.ndarray:
    value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return value.astype(dtype).reshape(shape)  # a collated batch of 1 drops its leading axis here


def axial_plan_from_meta(meta: Mapping | None) -> AxialPlan | None:
    """The :class:`AxialPlan` recorded by :class:`ReformatToAxiald` in ``meta`` (a MetaTensor's ``meta``, before
    or after collation / decollation); None when there is none."""
    if not meta or AXIAL_PLAN_KEY not in meta:
        return None
    recorded = meta[AXIAL_PLAN_KEY]
    plane, angle = _single(recorded.get("plane")), _single(recorded.get("angle_deg"))
    reason, reformat = str(_single(recorded["reason"])), bool(_single(recorded["reformat"]))
    angle = None if angle is None else float(angle)
    if not reformat:
        return AxialPlan(False, reason, plane, angle)
    return AxialPlan(
        True,
        reason,
        plane,
        angle,
        _array(recorded["source_affine"], (4, 4), np.float64),
        tuple(int(s) for s in _array(recorded["source_shape"], (3,), np.int64)),
        _array(recorded["axial_affine"], (4, 4), np.float64),
        tuple(int(s) for s in _array(recorded["axial_shape"], (3,), np.int64)),
    )


class ReformatToAxiald(MapTransform):
    """A ``(C, W, H, D)`` volume in any plane onto axial slices at the training spacing, when it needs it.

    Input: a MetaTensor ``(C, W, H, D)`` with its RAS affine (MONAI's ``LoadImaged`` of a DICOM series, ITKReader).
    :func:`plan_axial` decides on ``(affine, (W, H, D))`` with ``tolerance_deg``, ``pixel_mm``, ``slice_mm`` and
    ``min_slices``. Reformatted: float32 ``(C, W', H', D')`` = :func:`to_axial` on the plan's axial grid, with
    ``affine`` and ``meta["spatial_shape"]`` of that grid (so :class:`SlicewisePreprocessd` and
    :class:`SlicewiseToMaskd` work on its slices); the rest of the metadata stays the source's. Otherwise the
    image passes through unchanged. Either way the plan is recorded in ``meta["axial_plan"]``
    (:func:`axial_plan_to_meta`), which :class:`SlicewiseToMaskd` uses to map the masks back onto the source grid.
    """

    def __init__(
        self,
        keys: KeysCollection,
        tolerance_deg: float = AXIAL_TOLERANCE_DEG,
        pixel_mm: float = TRAINING_PIXEL_MM,
        slice_mm: float = TRAINING_SLICE_MM,
        min_slices: int = MIN_REFORMAT_SLICES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tolerance_deg, self.pixel_mm, self.slice_mm = float(tolerance_deg), float(pixel_mm), float(slice_mm)
        self.min_slices = int(min_slices)

    def plan(self, volume: MetaTensor) -> AxialPlan:
        """The path ``volume`` ``(C, W, H, D)`` takes."""
        affine = volume.affine.detach().cpu().numpy() if isinstance(volume.affine, torch.Tensor) else volume.affine
        return plan_axial(
            np.asarray(affine, np.float64),
            tuple(int(s) for s in volume.shape[1:]),
            self.tolerance_deg,
            self.pixel_mm,
            self.slice_mm,
            self.min_slices,
            volume=volume,
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            if not isinstance(volume, MetaTensor) or volume.ndim != 4:
                raise ValueError(f"expected a (C, W, H, D) MetaTensor with its affine under {key!r}")
            plan = self.plan(volume)
            if not plan.reformat:
                volume.meta[AXIAL_PLAN_KEY] = axial_plan_to_meta(plan)
                continue
            meta = {k: v for k, v in volume.meta.items() if k != "affine"}
            meta["spatial_shape"] = np.asarray(plan.axial_shape, np.int64)
            meta[AXIAL_PLAN_KEY] = axial_plan_to_meta(plan)
            axial_affine = torch.as_tensor(plan.axial_affine, dtype=torch.float64)
            d[key] = MetaTensor(to_axial(volume, plan), affine=axial_affine, meta=meta)
        return d


class SlicewisePreprocessd(MapTransform):
    """:func:`slice_preprocessing` (without loading) on each slice of a ``(C, W, H, D)`` volume.

    Output: float32 ``(3, *spatial_size, D)`` in [0, 1], carrying the source volume's metadata (its affine and
    original ``spatial_shape``), which :class:`SlicewiseToMaskd` uses to map predictions back.
    """

    def __init__(
        self,
        keys: KeysCollection,
        input_mode: str | Sequence[int] = DEFAULT_INPUT_MODE,
        spatial_size: Sequence[int] = SPATIAL_SIZE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.preprocessing = Compose(
            slice_preprocessing("image", input_mode=input_mode, spatial_size=spatial_size, load=False)
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            if volume.ndim != 4:
                raise ValueError(f"expected a (C, W, H, D) volume under {key!r}, got shape {tuple(volume.shape)}")
            tensor = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
            slices = [
                self.preprocessing({"image": MetaTensor(tensor[..., k].float())})["image"].as_tensor()
                for k in range(tensor.shape[-1])
            ]
            meta = dict(volume.meta) if isinstance(volume, MetaTensor) else {}
            affine = volume.affine if isinstance(volume, MetaTensor) else None
            d[key] = MetaTensor(
                torch.stack(slices, dim=-1), affine=affine, meta={k: v for k, v in meta.items() if k != "affine"}
            )
        return d


class SlicewiseToMaskd(MapTransform):
    """Per-slice probabilities ``(1, w, h, D)`` to a uint8 0/1 mask ``(1, W, H, D)`` on the source volume's grid.

    Each slice goes through :func:`probability_to_mask` (the predictor's resize, threshold and cleaning, as
    :class:`bt_monai.transforms.ProbabilityToMaskd` for a single slice);
    the result takes the metadata (affine, file name) of ``ref_key``, the :class:`SlicewisePreprocessd` image,
    so ``SaveImaged`` writes it over the source series.

    When ``ref_key``'s metadata holds a reformat plan (:class:`ReformatToAxiald`), the ``D'`` slices are axial
    slices ``(W', H')`` of the plan's grid: each one's probabilities are resized and cleaned as the predictor does
    (:func:`probabilities_to_cleaned_maps`), the stack ``(1, W', H', D')`` is resampled onto the source grid
    (:func:`to_source`) and thresholded there; the mask ``(1, W, H, D)`` carries the source affine and
    ``spatial_shape``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        threshold: float = 0.5,
        min_component_px: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key, self.threshold, self.min_component_px = ref_key, threshold, min_component_px

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = d[self.ref_key]
        plan = axial_plan_from_meta(ref.meta)
        if plan is not None and plan.reformat:
            return self._to_source(d, ref, plan)
        size = [int(s) for s in ref.meta["spatial_shape"][:2]]
        for key in self.key_iterator(d):
            probabilities = d[key]
            masks = [
                probability_to_mask(probabilities[..., k], size, self.threshold, self.min_component_px)
                for k in range(probabilities.shape[-1])
            ]
            volume = torch.as_tensor(np.stack(masks, axis=-1)[None].astype(np.uint8))
            d[key] = MetaTensor(volume, affine=ref.affine, meta={k: v for k, v in ref.meta.items() if k != "affine"})
        return d

    def _to_source(self, d: dict, ref: MetaTensor, plan: AxialPlan) -> dict:
        """Axial slices' probabilities ``(1, w, h, D')`` to the mask on the source grid ``(1, W, H, D)``."""
        size = tuple(plan.axial_shape[:2])
        meta = {k: v for k, v in ref.meta.items() if k != "affine"}
        meta["spatial_shape"] = np.asarray(plan.source_shape, np.int64)
        source_affine = torch.as_tensor(plan.source_affine, dtype=torch.float64)
        for key in self.key_iterator(d):
            probabilities = d[key]
            if probabilities.shape[-1] != plan.axial_shape[2]:
                raise ValueError(f"{key!r} has {probabilities.shape[-1]} slices, the axial grid {plan.axial_shape[2]}")
            tensor = probabilities.as_tensor() if isinstance(probabilities, MetaTensor) else probabilities
            slices = torch.as_tensor(tensor).permute(3, 0, 1, 2)  # (D', 1, w, h)
            maps = probabilities_to_cleaned_maps(slices, [size] * len(slices), self.threshold, self.min_component_px)
            on_source = to_source(np.stack(maps, axis=-1)[None], plan)  # (1, W, H, D) float32
            volume = (on_source >= self.threshold).to(torch.uint8)
            d[key] = MetaTensor(volume, affine=source_affine, meta=dict(meta))
        return d
