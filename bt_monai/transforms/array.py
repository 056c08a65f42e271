"""Array transforms for 2D MRI slices (channel-first, MONAI axis order ``(C, W, H)``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import InvertibleTransform, RandomizableTransform, Transform
from monai.transforms.inverse import TraceableTransform
from monai.transforms.utils import scale_affine
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor

from bt_monai.data.readers import SliceLoader
from bt_monai.transforms.functional import (
    DEFAULT_INPUT_MODE,
    FLAIR_CHANNEL,
    INPUT_MODES,
    INTERPOLATION_MODES,
    SPATIAL_SIZE,
    UPPER_PERCENTILE,
    grayscale_to_rgb,
    input_channels,
    remove_small_components,
    resize_slice,
    scale_percentiles,
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
    "ResizeSlice",
    "ScalePercentiles",
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


class ResizeSlice(InvertibleTransform):
    """Resize a channel-first 2D slice ``(C, W, H)`` to ``spatial_size``: MONAI's ``Resize`` (no anti-aliasing,
    ``align_corners=False``), computed by :func:`bt_monai.transforms.functional.resize_slice`, the function the
    predictor's streaming path calls on whole batches.

    ``mode``: ``"bilinear"`` (images) or ``"nearest"`` (masks). Output float32; a ``MetaTensor`` gets its affine
    scaled and the resize recorded as ``Resize`` does, so ``Invertd`` (or :meth:`inverse`) resizes it back to
    the slice's own size with the recorded mode (``nearest_interp`` turns it to nearest).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: Sequence[int] = SPATIAL_SIZE, mode: str = "bilinear") -> None:
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mode = self._check_mode(mode)

    @staticmethod
    def _check_mode(mode: str) -> str:
        if mode not in INTERPOLATION_MODES:
            raise ValueError(f"ResizeSlice: unknown mode {mode!r}, use one of {list(INTERPOLATION_MODES)}")
        return mode

    def __call__(self, img: NdarrayOrTensor, mode: str | None = None) -> torch.Tensor:
        return self._resize(img, self.spatial_size, self._check_mode(mode or self.mode))

    def _resize(self, img: NdarrayOrTensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim != 3:
            raise ValueError(f"ResizeSlice: expected a channel-first (C, W, H) slice, got shape {tuple(img.shape)}")
        orig_size = tuple(int(s) for s in img.shape[1:])
        # the metadata exactly as MONAI's Resize tracks it (affine scaled, original size kept for the inverse)
        meta = TraceableTransform.track_transform_meta(
            img,
            sp_size=size,
            affine=scale_affine(orig_size, size, align_corners=False),
            extra_info={"mode": mode},
            orig_size=orig_size,
            transform_info=self.get_transform_info(),
        )
        out = resize_slice(img.as_tensor() if isinstance(img, MetaTensor) else img, size, mode)
        return MetaTensor(out).copy_meta_from(meta) if isinstance(img, MetaTensor) else out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Resize ``data`` (e.g. a probability map given the image's metadata) back to the recorded size."""
        transform = self.pop_transform(data)
        orig_size = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
        with self.trace_transform(False):
            return self._resize(data, orig_size, transform[TraceKeys.EXTRA_INFO]["mode"])


class ScalePercentiles(Transform):
    """Scale each channel of a ``(C, *spatial)`` image from its ``[lower, upper]`` percentiles to ``[b_min, b_max]``.

    MONAI's ``ScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip=True, channel_wise=True)``, computed
    by :func:`bt_monai.transforms.functional.scale_percentiles` (the predictor's function): a constant channel
    becomes ``img - low + b_min``, the others are clipped to ``[b_min, b_max]``. Output float32, metadata kept.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self, lower: float = 0.0, upper: float = UPPER_PERCENTILE, b_min: float = 0.0, b_max: float = 1.0
    ) -> None:
        if not 0.0 <= lower <= upper <= 100.0:
            raise ValueError(f"ScalePercentiles: need 0 <= lower <= upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.b_min, self.b_max = lower, upper, b_min, b_max

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        pixels = convert_to_tensor(img, track_meta=False).float()
        scaled = scale_percentiles(pixels[None], self.lower, self.upper, self.b_min, self.b_max)[0]
        return convert_to_dst_type(scaled, dst=img, dtype=torch.float32)[0]


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
