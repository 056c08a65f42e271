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
    ScaleIntensityRanged,
    Transform,
)

from bt_monai.transforms.dictionary import (
    BinarizeMaskd,
    GrayscaleToRGBd,
    LoadSliced,
    RandSequenceDropoutd,
    ResizeSliced,
    ScalePercentilesd,
    SelectInputChannelsd,
)
from bt_monai.transforms.functional import (
    AUGMENTATION,
    DEFAULT_INPUT_MODE,
    SPATIAL_SIZE,
    UPPER_PERCENTILE,
    AugmentationRanges,
)

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

    Resize and scaling are :class:`ResizeSliced` and :class:`ScalePercentilesd`, which compute MONAI's
    ``Resized`` and ``ScaleIntensityRangePercentilesd`` values with the functions the predictor's streaming
    path calls (:mod:`bt_monai.transforms.functional`); the resize is invertible (``Invertd``).
    """
    keys = [image_key] + ([mask_key] if mask_key else [])
    transforms: list[Transform] = [LoadSliced(keys)] if load else []
    transforms.append(SelectInputChannelsd(image_key, input_mode))
    if mask_key:
        transforms.append(BinarizeMaskd(mask_key))
    transforms += [
        ResizeSliced(keys, spatial_size, mode=["bilinear", "nearest"][: len(keys)]),
        ScalePercentilesd(image_key, lower=0.0, upper=upper_percentile, b_min=0.0, b_max=1.0),
        GrayscaleToRGBd(image_key),
        EnsureTyped(keys, dtype=torch.float32, track_meta=True),
    ]
    return transforms


def train_augmentations(
    image_key: str = "image",
    mask_key: str | None = None,
    sequence_dropout: float = 0.0,
    ranges: AugmentationRanges = AUGMENTATION,
) -> list[Transform]:
    """Random transforms for training, applied after :func:`slice_preprocessing`, one sample at a time.

    The per-sample twin of :class:`bt_monai.transforms.RandBatchAugment` (the bundles' training path): the same
    ``ranges`` (:class:`bt_monai.transforms.functional.AugmentationRanges`, by default the shipped models'),
    probabilities and order. Geometry (left-right flip, rotation, zoom) moves image and mask together;
    intensity jitter (scale, shift, gamma) touches the image only and is clipped back to [0, 1].
    ``sequence_dropout`` > 0 adds :class:`RandSequenceDropoutd` for three-sequence input.
    """
    keys = [image_key] + ([mask_key] if mask_key else [])
    modes = ["bilinear", "nearest"][: len(keys)]
    r = ranges
    transforms: list[Transform] = [
        RandFlipd(keys, prob=r.flip_prob, spatial_axis=0),
        RandRotated(keys, range_x=math.radians(r.rotate_degrees), prob=r.rotate_prob, mode=modes, padding_mode="zeros"),
        RandZoomd(
            keys,
            prob=r.zoom_prob,
            min_zoom=r.zoom_range[0],
            max_zoom=r.zoom_range[1],
            mode=modes,
            padding_mode="constant",
        ),
        RandScaleIntensityd(image_key, factors=r.scale, prob=r.scale_prob),
        RandShiftIntensityd(image_key, offsets=r.shift, prob=r.shift_prob),
        RandAdjustContrastd(image_key, gamma=r.gamma_range, prob=r.gamma_prob),
        ScaleIntensityRanged(image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    if sequence_dropout > 0:
        transforms.insert(0, RandSequenceDropoutd(image_key, prob=sequence_dropout))
    return transforms
