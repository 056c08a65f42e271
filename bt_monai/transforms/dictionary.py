"""Dictionary wrappers of :mod:`bt_monai.transforms.array`, in MONAI's ``...d`` style."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform
from monai.transforms.inverse import TraceableTransform
from monai.transforms.utils import scale_affine
from monai.utils import MetaKeys, ensure_tuple_rep

from bt_monai.transforms.array import (
    DEFAULT_INPUT_MODE,
    FLAIR_CHANNEL,
    BinarizeMask,
    GrayscaleToRGB,
    LoadSlice,
    RandSequenceDropout,
    RemoveSmallComponents,
    ResizeSlice,
    ScalePercentiles,
    SelectInputChannels,
)
from bt_monai.transforms.functional import SPATIAL_SIZE, UPPER_PERCENTILE, probabilities_to_masks

__all__ = [
    "LoadSliced",
    "SelectInputChannelsd",
    "GrayscaleToRGBd",
    "BinarizeMaskd",
    "ResizeSliced",
    "ScalePercentilesd",
    "RandSequenceDropoutd",
    "RemoveSmallComponentsd",
    "ProbabilityToMaskd",
]


class LoadSliced(MapTransform):
    """Dictionary version of :class:`LoadSlice`: replaces each path under ``keys`` by its image."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadSlice()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class SelectInputChannelsd(MapTransform):
    """Dictionary version of :class:`SelectInputChannels`."""

    def __init__(
        self, keys: KeysCollection, channels: Sequence[int] | str = DEFAULT_INPUT_MODE, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.selector = SelectInputChannels(channels)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key])
        return d


class GrayscaleToRGBd(MapTransform):
    """Dictionary version of :class:`GrayscaleToRGB`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.to_rgb = GrayscaleToRGB()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_rgb(d[key])
        return d


class BinarizeMaskd(MapTransform):
    """Dictionary version of :class:`BinarizeMask`."""

    def __init__(self, keys: KeysCollection, threshold: float = 0.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarize = BinarizeMask(threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.binarize(d[key])
        return d


class ResizeSliced(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`ResizeSlice` (invertible, as MONAI's ``Resized``).

    ``mode``: one for all ``keys`` or one per key (e.g. ``["bilinear", "nearest"]`` for image and mask).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] = SPATIAL_SIZE,
        mode: Sequence[str] | str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.resizer = ResizeSlice(spatial_size)
        for m in self.mode:
            self.resizer._check_mode(m)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resizer(d[key], mode=mode)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer.inverse(d[key])
        return d


class ScalePercentilesd(MapTransform):
    """Dictionary version of :class:`ScalePercentiles`."""

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 0.0,
        upper: float = UPPER_PERCENTILE,
        b_min: float = 0.0,
        b_max: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScalePercentiles(lower, upper, b_min, b_max)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class RandSequenceDropoutd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandSequenceDropout` (one draw per sample, shared by all ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.25,
        flair_channel: int = FLAIR_CHANNEL,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.dropout = RandSequenceDropout(prob=1.0, flair_channel=flair_channel)

    def set_random_state(self, seed: int | None = None, state=None) -> RandSequenceDropoutd:
        super().set_random_state(seed, state)
        self.dropout.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.dropout(d[key], randomize=True)
        return d


class RemoveSmallComponentsd(MapTransform):
    """Dictionary version of :class:`RemoveSmallComponents` (e.g. ``keys="pred"`` after ``AsDiscreted``)."""

    def __init__(self, keys: KeysCollection, min_size: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.remover = RemoveSmallComponents(min_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remover(d[key])
        return d


class ProbabilityToMaskd(MapTransform):
    """Tumor probabilities at the network's size to the slice's 0/1 mask at its own size: the predictor's masks.

    ``keys``: probability maps ``(1, w, h)`` in [0, 1] (e.g. after ``Activationsd(sigmoid=True)``); ``ref_key``:
    the preprocessed image (:func:`bt_monai.transforms.slice_preprocessing`), whose ``spatial_shape`` metadata
    is the slice's own size ``(W, H)``. Each map goes through
    :func:`bt_monai.transforms.functional.probabilities_to_masks`, the function
    :class:`bt_monai.inferers.TumorPredictor` calls: bilinear resize to ``(W, H)``, ``>= threshold``, connected
    components under ``min_component_px`` pixels removed. Output: float32 ``(1, W, H)`` of 0s and 1s with the
    image's metadata, its resize undone (``Invertd``'s affine), so ``SaveImaged`` names and writes it as before.
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
        if min_component_px < 0:
            raise ValueError(f"ProbabilityToMaskd: min_component_px must be >= 0, got {min_component_px}")
        self.ref_key, self.threshold, self.min_component_px = ref_key, float(threshold), int(min_component_px)

    def _slice_size(self, ref) -> tuple[int, int]:
        shape = ref.meta.get(MetaKeys.SPATIAL_SHAPE) if isinstance(ref, MetaTensor) else None
        if shape is None:
            raise ValueError(
                f"ProbabilityToMaskd: the image under {self.ref_key!r} carries no spatial_shape (the slice's own "
                "size); preprocess it with bt_monai.transforms.slice_preprocessing (LoadSliced sets it)"
            )
        return int(shape[0]), int(shape[1])

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = d[self.ref_key]
        size = self._slice_size(ref)
        # the image's metadata at the slice's own size: the affine scaled back as inverting the resize does
        meta = TraceableTransform.track_transform_meta(
            ref, sp_size=size, affine=scale_affine(tuple(ref.shape[1:]), size, align_corners=False)
        )
        for key in self.key_iterator(d):
            probabilities = d[key]
            if probabilities.ndim != 3 or probabilities.shape[0] != 1:
                raise ValueError(
                    f"ProbabilityToMaskd: expected one probability map (1, w, h) under {key!r}, "
                    f"got shape {tuple(probabilities.shape)}"
                )
            (mask,) = probabilities_to_masks(probabilities[None], [size], self.threshold, self.min_component_px)
            out = MetaTensor(torch.from_numpy(mask[None]).float()).copy_meta_from(meta)
            out.applied_operations = []  # the resize is undone: the mask lies on the slice's own grid
            d[key] = out
        return d
