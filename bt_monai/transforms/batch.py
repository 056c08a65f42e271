"""Training augmentation applied to a whole collated batch at once (torch ops, one call per batch).

The per-sample MONAI pipeline (:func:`bt_monai.transforms.train_augmentations`) costs a Python round trip and a
``MetaTensor`` per sample and transform; on a 2-core CPU that runs in a worker beside the network and slows
every step. :class:`RandBatchAugment` draws the same augmentations (same ranges, probabilities and order)
independently for every sample, but applies them as a few batched tensor operations in the training process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bt_monai.transforms.array import FLAIR_CHANNEL
from bt_monai.transforms.functional import AUGMENTATION as A

__all__ = ["RandBatchAugment"]


class RandBatchAugment:
    """Random sequence dropout, flip, rotation, zoom and intensity jitter of a batch, per sample.

    ``image``: float tensor ``(B, C, W, H)`` in [0, 1] (the output of ``slice_preprocessing``); ``label``:
    either a mask ``(B, 1, W, H)`` of 0/1 that follows the image's geometry (nearest neighbour), or any other
    tensor (e.g. a ``(B, 1)`` detection target), returned unchanged. Returns ``(image, label)`` as plain
    tensors, image clipped back to [0, 1].

    Each sample independently: with ``sequence_dropout`` every channel becomes FLAIR (three-sequence input
    only); with ``flip_prob`` a flip along the first spatial axis (as ``RandFlipd(spatial_axis=0)``); with
    ``rotate_prob`` a rotation up to ``rotate_degrees``; with ``zoom_prob`` a zoom in ``zoom_range`` (zeros
    outside the image); then intensity scale ``1 + U(-scale, scale)``, shift ``U(-shift, shift)`` and gamma
    (``RandAdjustContrast``) with their probabilities. The defaults are
    :data:`bt_monai.transforms.functional.AUGMENTATION`, the ranges :func:`bt_monai.transforms.train_augmentations`
    draws from too. Random numbers come from torch's global generator, so ``monai.utils.set_determinism`` makes
    a run repeatable.
    """

    def __init__(
        self,
        sequence_dropout: float = 0.0,
        flip_prob: float = A.flip_prob,
        rotate_prob: float = A.rotate_prob,
        rotate_degrees: float = A.rotate_degrees,
        zoom_prob: float = A.zoom_prob,
        zoom_range: tuple[float, float] = A.zoom_range,
        scale_prob: float = A.scale_prob,
        scale: float = A.scale,
        shift_prob: float = A.shift_prob,
        shift: float = A.shift,
        gamma_prob: float = A.gamma_prob,
        gamma_range: tuple[float, float] = A.gamma_range,
        flair_channel: int = FLAIR_CHANNEL,
    ) -> None:
        for name, p in (
            ("sequence_dropout", sequence_dropout),
            ("flip_prob", flip_prob),
            ("rotate_prob", rotate_prob),
            ("zoom_prob", zoom_prob),
            ("scale_prob", scale_prob),
            ("shift_prob", shift_prob),
            ("gamma_prob", gamma_prob),
        ):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        self.sequence_dropout = float(sequence_dropout)
        self.flip_prob = float(flip_prob)
        self.rotate_prob = float(rotate_prob)
        self.rotate_radians = math.radians(rotate_degrees)
        self.zoom_prob = float(zoom_prob)
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        self.scale_prob, self.scale = float(scale_prob), float(scale)
        self.shift_prob, self.shift = float(shift_prob), float(shift)
        self.gamma_prob = float(gamma_prob)
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))
        self.flair_channel = flair_channel

    @staticmethod
    def _draw(n: int, prob: float) -> torch.Tensor:
        return torch.rand(n) < prob

    @staticmethod
    def _uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        if image.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, W, H), got shape {tuple(image.shape)}")
        n, c = image.shape[:2]
        spatial_label = label is not None and label.ndim == 4 and label.shape[2:] == image.shape[2:]
        image = image.float().clone()

        if self.sequence_dropout > 0 and c > 1:
            drop = self._draw(n, self.sequence_dropout).to(image.device)
            flair = image[:, self.flair_channel : self.flair_channel + 1].expand_as(image)
            image = torch.where(drop[:, None, None, None], flair, image)

        flip = self._draw(n, self.flip_prob).to(image.device)
        if flip.any():
            image = torch.where(flip[:, None, None, None], image.flip(2), image)
            if spatial_label:
                label = torch.where(flip[:, None, None, None], label.flip(2), label)

        angle = torch.where(
            self._draw(n, self.rotate_prob), self._uniform(n, -self.rotate_radians, self.rotate_radians), 0.0
        )
        zoom = torch.where(self._draw(n, self.zoom_prob), self._uniform(n, *self.zoom_range), 1.0)
        warp = (angle != 0) | (zoom != 1)
        if warp.any():
            idx = warp.nonzero().flatten().to(image.device)
            # affine_grid maps output to input coordinates: a zoom z samples the input at 1/z
            cos, sin, inv = torch.cos(angle[warp]), torch.sin(angle[warp]), 1.0 / zoom[warp]
            theta = torch.zeros(len(idx), 2, 3)
            theta[:, 0, 0], theta[:, 0, 1] = cos * inv, -sin * inv
            theta[:, 1, 0], theta[:, 1, 1] = sin * inv, cos * inv
            theta = theta.to(image.device)
            grid = F.affine_grid(theta, [len(idx), c, *image.shape[2:]], align_corners=False)
            image[idx] = F.grid_sample(image[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if spatial_label:
                label = label.float().clone()
                label[idx] = F.grid_sample(label[idx], grid, mode="nearest", padding_mode="zeros", align_corners=False)

        scale = torch.where(self._draw(n, self.scale_prob), self._uniform(n, -self.scale, self.scale), 0.0)
        shift = torch.where(self._draw(n, self.shift_prob), self._uniform(n, -self.shift, self.shift), 0.0)
        image = (
            image * (1.0 + scale.to(image.device))[:, None, None, None] + shift.to(image.device)[:, None, None, None]
        )

        gamma = torch.where(self._draw(n, self.gamma_prob), self._uniform(n, *self.gamma_range), 1.0)
        if (gamma != 1).any():
            # RandAdjustContrast: normalise each sample to [0, 1], raise to gamma, restore its range
            flat = image.flatten(1)
            low, high = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
            span = high - low
            normed = ((image - low) / (span + 1e-7)).clamp_min(0)
            image = torch.where(
                (gamma != 1).to(image.device)[:, None, None, None],
                normed ** gamma.to(image.device)[:, None, None, None] * span + low,
                image,
            )
        return image.clamp_(0.0, 1.0), label
