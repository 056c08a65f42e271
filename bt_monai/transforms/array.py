"""Array transforms for 2D MRI slices (channel-first, MONAI axis order ``(C, W, H)``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import RandomizableTransform, Transform

from bt_monai.data.readers import SliceLoader
from bt_monai.transforms.functional import (
    DEFAULT_INPUT_MODE,
    FLAIR_CHANNEL,
    INPUT_MODES,
    grayscale_to_rgb,
    input_channels,
    remove_small_components,
    select_input_channels,
)

__all__ = [
    "FLAIR_CHANNEL",
    "INPUT_MODES",
    "DEFAULT_INPUT_MODE",
    "LoadSlice",
    "SelectInputChannels",
    "GrayscaleToRGB",
    "BinarizeMask",
    "RandSequenceDropout",
    "RemoveSmallComponents",
]


class LoadSlice(Transform):
    """Load one 2D slice file as a float32 ``MetaTensor`` ``(C, W, H)``, C = 1, 3 or 4 (see
    :class:`bt_monai.data.readers.SliceLoader`, which it wraps as a MONAI transform)."""

    def __init__(self) -> None:
        self.loader = SliceLoader()

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        return self.loader(filename)


class SelectInputChannels(Transform):
    """Pick the network's input channels from a channel-first slice.

    Multi-sequence slices (3 channels, e.g. the LGG TIFFs; a 4th alpha channel is ignored) keep ``channels``.
    Single-channel (grayscale) slices, such as DICOM or FLAIR-only PNGs, are returned unchanged: they are
    taken to be the FLAIR sequence. Gray+alpha (2 channels) keeps the gray channel.
    """

    def __init__(self, channels: Sequence[int] | str = DEFAULT_INPUT_MODE) -> None:
        self.channels = input_channels(channels)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return select_input_channels(img, self.channels)


class GrayscaleToRGB(Transform):
    """Repeat a single channel three times (``(1, W, H)`` -> ``(3, W, H)``); 3-channel input passes through."""

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return grayscale_to_rgb(img)


class BinarizeMask(Transform):
    """Turn a mask of any channel count and value range into a ``(1, W, H)`` float mask of 0s and 1s.

    A pixel is foreground when any channel is above ``threshold`` (0 by default: 255, 1 or 128 all count).
    """

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = threshold

    def __call__(self, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        fg = (
            (mask > self.threshold).any(0, keepdims=True)
            if isinstance(mask, np.ndarray)
            else ((mask > self.threshold).any(0, keepdim=True))
        )
        return fg.astype(np.float32) if isinstance(fg, np.ndarray) else fg.float()


class RandSequenceDropout(RandomizableTransform):
    """With probability ``prob``, replace every channel of a 3-sequence slice by its FLAIR channel.

    The LGG data store a missing pre- or post-contrast sequence as a copy of FLAIR; training with this
    substitution at random lets one model accept both three sequences and a lone grayscale (FLAIR) series.
    Single-channel input passes through.
    """

    def __init__(self, prob: float = 0.25, flair_channel: int = FLAIR_CHANNEL) -> None:
        RandomizableTransform.__init__(self, prob)
        self.flair_channel = flair_channel

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform or img.shape[0] == 1:
            return img
        flair = img[self.flair_channel : self.flair_channel + 1]
        return (
            flair.repeat(img.shape[0], 1, 1)
            if isinstance(img, torch.Tensor)
            else np.repeat(flair, img.shape[0], axis=0)
        )


class RemoveSmallComponents(Transform):
    """Clear connected foreground components smaller than ``min_size`` pixels, channel by channel.

    Input: a binary mask ``(C, *spatial)`` (0/1 or bool, array or tensor); output of the same type, shape and
    dtype. ``min_size`` 0 or 1 keeps everything. Unlike MONAI's ``RemoveSmallObjects`` it needs no scikit-image;
    connectivity is 4 in 2D (scipy's default).
    """

    def __init__(self, min_size: int = 0) -> None:
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        self.min_size = int(min_size)

    def __call__(self, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        if self.min_size <= 1:
            return mask
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        kept = remove_small_components(array, self.min_size)
        if isinstance(mask, torch.Tensor):
            return mask * torch.as_tensor(kept > 0, device=mask.device).to(mask.dtype)
        return kept
