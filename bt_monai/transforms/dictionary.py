"""Dictionary wrappers of :mod:`bt_monai.transforms.array`, in MONAI's ``...d`` style."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from bt_monai.transforms.array import (
    DEFAULT_INPUT_MODE,
    FLAIR_CHANNEL,
    BinarizeMask,
    GrayscaleToRGB,
    LoadSlice,
    RandSequenceDropout,
    RemoveSmallComponents,
    SelectInputChannels,
)

__all__ = [
    "LoadSliced",
    "SelectInputChannelsd",
    "GrayscaleToRGBd",
    "BinarizeMaskd",
    "RandSequenceDropoutd",
    "RemoveSmallComponentsd",
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
