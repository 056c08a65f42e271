"""Samplers that decide how often each slice is drawn in a training epoch (as ``monai.data.samplers``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["TumorSliceSampler", "tumor_slice_weights"]


def tumor_slice_weights(entries: Sequence[Mapping], tumor_fraction: float, tumor_key: str = "tumor") -> torch.Tensor:
    """Per-entry sampling weights under which tumor slices make up ``tumor_fraction`` of the draws on average.

    ``entries``: datalist items with a 0/1 ``tumor_key``. A fraction at or below the data's own share of tumor
    slices, or a dataset of one class only, gives uniform weights.
    """
    if not 0.0 <= tumor_fraction < 1.0:
        raise ValueError(f"tumor_fraction must be in [0, 1), got {tumor_fraction!r}")
    missing = [i for i, e in enumerate(entries) if tumor_key not in e]
    if missing:
        raise KeyError(f"datalist entry {missing[0]} has no {tumor_key!r} (needed to over-sample tumor slices)")
    tumor = torch.tensor([bool(e[tumor_key]) for e in entries], dtype=torch.bool)
    n_tumor, n = int(tumor.sum()), len(entries)
    weights = torch.ones(n, dtype=torch.double)
    if n_tumor == 0 or n_tumor == n or tumor_fraction <= n_tumor / n:
        return weights
    # w * n_tumor / (w * n_tumor + n_free) = fraction
    weights[tumor] = tumor_fraction * (n - n_tumor) / ((1.0 - tumor_fraction) * n_tumor)
    return weights


class TumorSliceSampler(WeightedRandomSampler):
    """Draw ``len(entries)`` slices per epoch, with replacement, tumor slices making up ``tumor_fraction``.

    Buda et al. (2019) and nnU-Net draw far more foreground than the data hold (tumor is about a third of the
    LGG slices and 1% of the pixels). Uses torch's global generator unless ``generator`` is given, so
    ``monai.utils.set_determinism`` makes the order repeatable.
    """

    def __init__(
        self,
        entries: Sequence[Mapping],
        tumor_fraction: float = 0.5,
        tumor_key: str = "tumor",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            tumor_slice_weights(entries, tumor_fraction, tumor_key),
            num_samples=len(entries),
            replacement=True,
            generator=generator,
        )
