"""The 2D slice pipeline applied to a volume slice by slice (a DICOM series read as one 3D image).

The models are 2D: a series ``(C, W, H, D)`` (MONAI's reader output, D = slices) is preprocessed slice by slice
with exactly :func:`bt_monai.transforms.slice_preprocessing` (minus loading), run with MONAI's ``SliceInferer``,
and each slice's probability map is turned into a mask exactly as :class:`bt_monai.inferers.TumorPredictor`
does (:func:`probability_to_mask`), so a series gives the masks its slices give one by one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from bt_monai.transforms.functional import DEFAULT_INPUT_MODE, SPATIAL_SIZE, probability_to_mask
from bt_monai.transforms.presets import slice_preprocessing

__all__ = ["probability_to_mask", "SlicewisePreprocessd", "SlicewiseToMaskd"]


class SlicewisePreprocessd(MapTransform):
    """:func:`slice_preprocessing` (without loading) on each slice of a ``(C, W, H, D)`` volume.

    Output: float32 ``(3, *spatial_size, D)`` in [0, 1], carrying the source volume's metadata (its affine and
    original ``spatial_shape``), which :class:`SlicewiseToMaskd` uses to map predictions back.
    """

    def __init__(
        self,
        keys: KeysCollection,
        input_mode: str | Sequence[int] = DEFAULT_INPUT_MODE,
        spatial_size: Sequence[int] = SPATIAL_SIZE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.preprocessing = Compose(
            slice_preprocessing("image", input_mode=input_mode, spatial_size=spatial_size, load=False)
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            if volume.ndim != 4:
                raise ValueError(f"expected a (C, W, H, D) volume under {key!r}, got shape {tuple(volume.shape)}")
            tensor = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
            slices = [
                self.preprocessing({"image": MetaTensor(tensor[..., k].float())})["image"].as_tensor()
                for k in range(tensor.shape[-1])
            ]
            meta = dict(volume.meta) if isinstance(volume, MetaTensor) else {}
            affine = volume.affine if isinstance(volume, MetaTensor) else None
            d[key] = MetaTensor(
                torch.stack(slices, dim=-1), affine=affine, meta={k: v for k, v in meta.items() if k != "affine"}
            )
        return d


class SlicewiseToMaskd(MapTransform):
    """Per-slice probabilities ``(1, w, h, D)`` to a uint8 0/1 mask ``(1, W, H, D)`` on the source volume's grid.

    Each slice goes through :func:`probability_to_mask` (the predictor's resize, threshold and cleaning, as
    :class:`bt_monai.transforms.ProbabilityToMaskd` for a single slice);
    the result takes the metadata (affine, file name) of ``ref_key``, the :class:`SlicewisePreprocessd` image,
    so ``SaveImaged`` writes it over the source series.
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
        self.ref_key, self.threshold, self.min_component_px = ref_key, threshold, min_component_px

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = d[self.ref_key]
        size = [int(s) for s in ref.meta["spatial_shape"][:2]]
        for key in self.key_iterator(d):
            probabilities = d[key]
            masks = [
                probability_to_mask(probabilities[..., k], size, self.threshold, self.min_component_px)
                for k in range(probabilities.shape[-1])
            ]
            volume = torch.as_tensor(np.stack(masks, axis=-1)[None].astype(np.uint8))
            d[key] = MetaTensor(volume, affine=ref.affine, meta={k: v for k, v in ref.meta.items() if k != "affine"})
        return d
