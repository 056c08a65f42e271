"""The original design's preprocessing and the training augmentations, as lists of MONAI dict transforms.

Preprocessing, for every face of the project (bundles, CLI, DICOM, MONAI Label):
load -> pick input channel(s) -> (mask: binarize) -> resize to 224x224 (bilinear image, nearest mask)
-> scale each channel to [0, 1] -> grayscale to 3-channel RGB.

Scaling uses the slice's own intensity range (0th to ``upper_percentile``-th percentile, per channel), so the
same slice stored at any bit depth or with any DICOM rescale gives the same network input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.transforms import (
    EnsureTyped,
    RandAdjustContrastd,
    RandFlipd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Transform,
)

from bt_monai.transforms.dictionary import (
    BinarizeMaskd,
    GrayscaleToRGBd,
    LoadSliced,
    RandSequenceDropoutd,
    SelectInputChannelsd,
)
from bt_monai.transforms.functional import DEFAULT_INPUT_MODE, SPATIAL_SIZE, UPPER_PERCENTILE

__all__ = ["SPATIAL_SIZE", "slice_preprocessing", "train_augmentations"]


def slice_preprocessing(
    image_key: str = "image",
    mask_key: str | None = None,
    input_mode: str | Sequence[int] = DEFAULT_INPUT_MODE,
    spatial_size: Sequence[int] = SPATIAL_SIZE,
    upper_percentile: float = UPPER_PERCENTILE,
    load: bool = True,
) -> list[Transform]:
    """Transforms that turn ``{image_key: path[, mask_key: path]}`` into network-ready tensors.

    Output: ``image_key`` float32 ``(3, *spatial_size)`` in [0, 1]; ``mask_key`` float32 ``(1, *spatial_size)``
    of 0s and 1s. ``input_mode`` is ``"all"`` (the default: pre-contrast, FLAIR, post-contrast as RGB),
    ``"flair"`` (FLAIR repeated as RGB) or explicit channel indices. ``load=False`` starts from already loaded
    channel-first images.
    """
    keys = [image_key] + ([mask_key] if mask_key else [])
    transforms: list[Transform] = [LoadSliced(keys)] if load else []
    transforms.append(SelectInputChannelsd(image_key, input_mode))
    if mask_key:
        transforms.append(BinarizeMaskd(mask_key))
    transforms += [
        Resized(keys, spatial_size, mode=["bilinear", "nearest"][: len(keys)]),
        ScaleIntensityRangePercentilesd(
            image_key, lower=0, upper=upper_percentile, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
        ),
        GrayscaleToRGBd(image_key),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ]
    return transforms


def train_augmentations(
    image_key: str = "image", mask_key: str | None = None, sequence_dropout: float = 0.0
) -> list[Transform]:
    """Random transforms for training, applied after :func:`slice_preprocessing`.

    Geometry (left-right flip, rotation up to 15 degrees, zoom 0.9-1.1) moves image and mask together;
    intensity jitter (scale, shift, gamma) touches the image only and is clipped back to [0, 1].
    ``sequence_dropout`` > 0 adds :class:`RandSequenceDropoutd` for three-sequence input.
    """
    keys = [image_key] + ([mask_key] if mask_key else [])
    modes = ["bilinear", "nearest"][: len(keys)]
    transforms: list[Transform] = [
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandRotated(keys, range_x=math.radians(15), prob=0.5, mode=modes, padding_mode="zeros"),
        RandZoomd(keys, prob=0.5, min_zoom=0.9, max_zoom=1.1, mode=modes, padding_mode="constant"),
        RandScaleIntensityd(image_key, factors=0.1, prob=0.5),
        RandShiftIntensityd(image_key, offsets=0.05, prob=0.5),
        RandAdjustContrastd(image_key, gamma=(0.8, 1.25), prob=0.3),
        ScaleIntensityRanged(image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    if sequence_dropout > 0:
        transforms.insert(0, RandSequenceDropoutd(image_key, prob=sequence_dropout))
    return transforms
