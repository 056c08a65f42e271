"""``prepare_batch`` callables for MONAI engines (the counterpart of ``monai.engines.utils``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["AugmentedPrepareBatch"]


class AugmentedPrepareBatch(PrepareBatch):
    """Move a batch to the device, then augment it as a whole: ``augment(image, label) -> (image, label)``.

    Use as a ``SupervisedTrainer``'s ``prepare_batch`` with
    :class:`bt_monai.transforms.batch.RandBatchAugment`, so that random augmentation runs once per batch (on
    the training device) instead of once per sample in the data loader. ``batchdata`` is the collated dict of
    the data loader, with ``image_key`` and ``label_key``.
    """

    def __init__(self, augment: Callable, image_key: str = "image", label_key: str = "label") -> None:
        self.augment = augment
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for key in (self.image_key, self.label_key):
            if key not in batchdata:
                raise KeyError(f"the batch has no {key!r} (keys: {sorted(batchdata)})")
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return self.augment(image, label)
