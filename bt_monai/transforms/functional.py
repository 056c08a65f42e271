"""The preprocessing as plain functions on tensors (torch only, no MONAI): MONAI's ``functional.py`` pattern.

The transforms of :mod:`bt_monai.transforms.array` and :func:`bt_monai.transforms.slice_preprocessing` call
these functions, and :class:`bt_monai.inferers.TumorPredictor` calls them on whole batches, so training and
inference share one implementation. Images are channel-first in MONAI's axis order, ``(C, W, H)`` for one
slice and ``(B, C, W, H)`` for a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bt_monai.transforms.modes import DEFAULT_INPUT_MODE, FLAIR_CHANNEL, INPUT_MODES

__all__ = [
    "FLAIR_CHANNEL",
    "INPUT_MODES",
    "DEFAULT_INPUT_MODE",
    "UPPER_PERCENTILE",
    "INTERPOLATION_MODES",
    "AugmentationRanges",
    "AUGMENTATION",
    "input_channels",
    "select_input_channels",
    "grayscale_to_rgb",
    "resize_images",
    "resize_slice",
    "percentiles",
    "scale_percentiles",
    "prepare_slice",
    "scale_batch",
    "preprocess_slices",
    "SPATIAL_SIZE",
    "remove_small_components",
    "probability_to_mask",
    "probabilities_to_cleaned_maps",
    "probabilities_to_masks",
]

SPATIAL_SIZE = (224, 224)
"""The networks' input size (the original design's 224x224)."""


UPPER_PERCENTILE = 99.9
"""Each channel is scaled from its minimum (0th percentile) to this percentile, then clipped to [0, 1]."""

INTERPOLATION_MODES = ("bilinear", "nearest")
"""The resize modes: bilinear for images and probabilities, nearest for masks."""


@dataclass(frozen=True)
class AugmentationRanges:
    """The training augmentations' probabilities and ranges, drawn independently for every sample.

    One definition for both implementations: the per-sample MONAI transforms
    (:func:`bt_monai.transforms.train_augmentations`) and the per-batch ones
    (:class:`bt_monai.transforms.RandBatchAugment`, the bundles' training path). Geometry moves image and mask
    together; intensity touches the image only. Probabilities are in [0, 1].
    """

    flip_prob: float = 0.5
    """Flip along the first spatial axis (left-right: MONAI's axis order puts the image column first)."""
    rotate_prob: float = 0.5
    rotate_degrees: float = 15.0
    """Rotation by an angle drawn uniformly in ``[-rotate_degrees, rotate_degrees]``."""
    zoom_prob: float = 0.5
    zoom_range: tuple[float, float] = (0.9, 1.1)
    """Zoom factor drawn uniformly in this range (zeros outside the image)."""
    scale_prob: float = 0.5
    scale: float = 0.1
    """Intensity multiplied by ``1 + U(-scale, scale)``."""
    shift_prob: float = 0.5
    shift: float = 0.05
    """Intensity shifted by ``U(-shift, shift)``."""
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.8, 1.25)
    """Gamma (``RandAdjustContrast``) drawn uniformly in this range."""


AUGMENTATION = AugmentationRanges()
"""The ranges the shipped models were trained with."""


def input_channels(mode: str | Sequence[int]) -> tuple[int, ...]:
    """The channel indices of an input mode name (see :data:`INPUT_MODES`) or of explicit indices."""
    if isinstance(mode, str):
        if mode not in INPUT_MODES:
            raise ValueError(f"unknown input mode {mode!r}: use one of {sorted(INPUT_MODES)}")
        return INPUT_MODES[mode]
    return tuple(int(c) for c in mode)


def select_input_channels(img, channels: Sequence[int]):
    """The network's input channels of a ``(C, W, H)`` slice (array or tensor).

    3 or 4 channels (multi-sequence; a 4th, alpha, is ignored) keep ``channels``; 1 channel (grayscale: taken
    as FLAIR) is returned as it is; 2 (gray + alpha) keep the gray one.
    """
    n = img.shape[0]
    if n == 1:
        return img
    if n == 2:
        return img[:1]
    if n in (3, 4):
        channels = list(channels)
        return img if channels == list(range(n)) else img[channels]  # "all" of a 3-channel slice: no copy
    raise ValueError(f"expected 1 to 4 channels, got an image of shape {tuple(img.shape)}")


def grayscale_to_rgb(img):
    """Repeat a single channel three times (``(1, W, H)`` -> ``(3, W, H)``); 3-channel input passes through."""
    if img.shape[0] == 3:
        return img
    if img.shape[0] != 1:
        raise ValueError(f"expected 1 or 3 channels, got an image of shape {tuple(img.shape)}")
    return img.repeat(3, 1, 1) if isinstance(img, torch.Tensor) else np.repeat(img, 3, axis=0)


def resize_images(images: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a batch ``(B, C, W, H)`` to ``(B, C, *size)`` float32, as MONAI's ``Resize`` computes it.

    ``mode``: ``"bilinear"`` (``align_corners=False``) or ``"nearest"``; no anti-aliasing. Images already of that
    size are returned as float32 without interpolation. Each image is interpolated independently: a batch gives
    the values of its images resized one by one.
    """
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"unknown resize mode {mode!r}: use one of {list(INTERPOLATION_MODES)}")
    size = tuple(int(s) for s in size)
    images = images.float()
    if tuple(images.shape[2:]) == size:
        return images
    return F.interpolate(images, size=size, mode=mode)


def resize_slice(img: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """:func:`resize_images` of one ``(C, W, H)`` slice: float32 ``(C, *size)``."""
    return resize_images(img[None], size, mode)[0]


def percentiles(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0-100) of each row of ``values`` ``(N, L)``: ``torch.quantile``'s linear method.

    Equal to ``torch.quantile(values, q / 100, dim=1)`` (what MONAI's ``percentile`` computes), but through
    ``topk``/``amin`` on the few values above the rank instead of sorting every row.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    length = values.shape[1]
    # rank and weight as torch.quantile computes them: q in the values' dtype (MONAI passes it so), the rank
    # in double precision, the interpolation in the values' dtype
    rank = float(torch.tensor(q / 100.0, dtype=values.dtype)) * (length - 1)
    below = int(rank)
    above = min(below + 1, length - 1)
    weight = rank - below
    if below == 0 and weight == 0.0:
        return values.amin(dim=1)
    top = torch.topk(values, length - below, dim=1, largest=True, sorted=True).values  # descending
    low, high = top[:, length - 1 - below], top[:, length - 1 - above]
    return torch.lerp(low, high, torch.full_like(low, weight))


def scale_percentiles(
    images: torch.Tensor, lower: float = 0.0, upper: float = UPPER_PERCENTILE, b_min: float = 0.0, b_max: float = 1.0
) -> torch.Tensor:
    """Scale each channel of ``(B, C, *spatial)`` from its ``[lower, upper]`` percentiles to ``[b_min, b_max]``.

    MONAI's ``ScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip=True, channel_wise=True)`` per
    image, computed for the whole batch at once: a constant channel becomes ``img - low + b_min`` (MONAI's rule
    for an empty range, unclipped), every other channel is clipped to ``[b_min, b_max]``. float32 in and out.
    """
    flat = images.reshape(images.shape[0] * images.shape[1], -1)
    low = flat.amin(dim=1) if lower == 0 else percentiles(flat, lower)
    high = percentiles(flat, upper)
    shape = (images.shape[0], images.shape[1]) + (1,) * (images.ndim - 2)
    low, high = low.reshape(shape), high.reshape(shape)
    span = high - low
    flat_range = span == 0
    scaled = (images - low) / torch.where(flat_range, torch.ones_like(span), span)
    scaled = (scaled * (b_max - b_min) + b_min).clamp(b_min, b_max)
    return torch.where(flat_range, images - low + b_min, scaled)


def prepare_slice(
    img: torch.Tensor | np.ndarray,
    input_mode: str | Sequence[int] = DEFAULT_INPUT_MODE,
    spatial_size: Sequence[int] = SPATIAL_SIZE,
) -> torch.Tensor:
    """The per-slice half of the preprocessing: a ``(C, W, H)`` slice's input channels, resized to
    ``spatial_size`` (float32 ``(1 or 3, *spatial_size)``). :func:`scale_batch` finishes a batch of them."""
    return resize_slice(select_input_channels(torch.as_tensor(img), input_channels(input_mode)), spatial_size)


def scale_batch(prepared: Sequence[torch.Tensor], upper_percentile: float = UPPER_PERCENTILE) -> torch.Tensor:
    """The per-batch half: percentile scaling of each channel, then grayscale to RGB: ``(B, 3, w, h)`` in [0, 1]."""
    counts = {int(img.shape[0]) for img in prepared}
    if len(counts) == 1:  # one scaling call for the whole batch
        scaled = scale_percentiles(torch.stack(list(prepared)), upper=upper_percentile)
        return scaled.expand(-1, 3, -1, -1).contiguous() if scaled.shape[1] == 1 else scaled
    return torch.stack([grayscale_to_rgb(scale_percentiles(img[None], upper=upper_percentile)[0]) for img in prepared])


def preprocess_slices(
    images: Sequence[torch.Tensor | np.ndarray],
    input_mode: str | Sequence[int] = DEFAULT_INPUT_MODE,
    spatial_size: Sequence[int] = SPATIAL_SIZE,
    upper_percentile: float = UPPER_PERCENTILE,
) -> torch.Tensor:
    """Network inputs ``(B, 3, *spatial_size)`` in [0, 1] of ``B`` decoded ``(C, W, H)`` slices of any size.

    :func:`bt_monai.transforms.slice_preprocessing` (pick channels, bilinear resize, per-channel percentile
    scaling, grayscale to RGB) for a whole batch: the same values as the per-slice MONAI transforms.
    """
    return scale_batch([prepare_slice(img, input_mode, spatial_size) for img in images], upper_percentile)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Clear the connected foreground components smaller than ``min_size`` pixels of each channel of a binary
    ``(C, *spatial)`` array (4-connectivity in 2D, scipy's default); same dtype out. ``min_size`` <= 1 keeps all."""
    if min_size <= 1:
        return mask
    from scipy import ndimage

    keep = np.zeros(mask.shape, dtype=bool)
    for c, channel in enumerate(mask > 0):
        labels, n = ndimage.label(channel)
        if n:
            sizes = np.bincount(labels.ravel())
            keep[c] = (sizes >= min_size)[labels] & channel
    return (mask * keep).astype(mask.dtype)


def probability_to_mask(
    probability_map: torch.Tensor, size: Sequence[int], threshold: float = 0.5, min_component_px: int = 0
) -> np.ndarray:
    """One slice's ``(1, w, h)`` probabilities to a bool mask ``(W, H)`` at the slice's own ``size = (W, H)``.

    Bilinear resize of the probabilities, then ``>= threshold``, then connected components smaller than
    ``min_component_px`` pixels removed (2D). MONAI axis order (first axis = image column) in and out.
    """
    return probabilities_to_masks(probability_map[None], [size], threshold, min_component_px)[0]


def probabilities_to_masks(
    probability_maps: torch.Tensor, sizes: Sequence[Sequence[int]], threshold: float = 0.5, min_component_px: int = 0
) -> list[np.ndarray]:
    """:func:`probability_to_mask` of a batch ``(B, 1, w, h)``, one ``(W, H)`` size per slice.

    Slices of the same size are resized in one call (the per-slice result is the same: interpolation is
    independent per image).
    """
    return [mask for _, mask in _resized_masks(probability_maps, sizes, threshold, min_component_px)]


def probabilities_to_cleaned_maps(
    probability_maps: torch.Tensor, sizes: Sequence[Sequence[int]], threshold: float = 0.5, min_component_px: int = 0
) -> list[np.ndarray]:
    """The probabilities :func:`probabilities_to_masks` thresholds, kept: float32 ``(W, H)`` per slice.

    Resized as there; the pixels its component cleaning removes are set to 0, so ``map >= threshold`` is exactly
    its mask. A series predicted on reformatted slices maps these back onto its own grid, then thresholds.
    """
    return [
        np.where(mask | (resized < threshold), resized, 0.0).astype(np.float32)
        for resized, mask in _resized_masks(probability_maps, sizes, threshold, min_component_px)
    ]


def _resized_masks(
    probability_maps, sizes, threshold: float, min_component_px: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(resized probabilities, cleaned bool mask), both ``(W, H)``, of each slice of a ``(B, 1, w, h)`` batch."""
    maps = probability_maps.as_tensor() if hasattr(probability_maps, "as_tensor") else probability_maps
    maps = maps.float().cpu()
    sizes = [tuple(int(s) for s in size) for size in sizes]
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(sizes)
    for size in dict.fromkeys(sizes):
        indices = [i for i, s in enumerate(sizes) if s == size]
        resized = resize_images(maps[indices], size)[:, 0].numpy()
        for i, values in zip(indices, resized, strict=True):
            results[i] = (values, remove_small_components((values >= threshold)[None], min_component_px)[0])
    return results
