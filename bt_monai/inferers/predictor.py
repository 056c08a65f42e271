"""The one predictor behind every face of bt_monai (CLI, evaluation reports, DICOM, MONAI Label).

It runs both bundles' networks on the same preprocessed slice: one preprocessing
(:func:`bt_monai.transforms.slice_preprocessing`), one pair of thresholds, so the outputs of all faces agree
by construction. Network definitions, input mode, input size and thresholds are read from each bundle's
``configs/inference.json`` (:func:`bt_monai.bundle.load_bundle_network`); weights from ``models/model.pt``
unless given. The pixel threshold is the segmentation bundle's, the tumor-probability threshold the
detection bundle's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import MetaKeys

from bt_monai.bundle import INFERENCE_SETTINGS, load_bundle_network
from bt_monai.inferers.autocast import AutocastInferer
from bt_monai.transforms import slice_preprocessing
from bt_monai.transforms.volume import probability_to_mask

__all__ = ["SlicePrediction", "TumorPredictor"]


@dataclass
class SlicePrediction:
    """Both models' answer for one slice.

    ``mask``: uint8 0/1 array ``(H, W)`` (rows, columns, as image files store them) at the slice's own size.
    ``threshold``: the detection threshold ``tumor`` applies to ``tumor_probability``.
    """

    path: str
    tumor_probability: float
    mask: np.ndarray
    threshold: float = 0.5

    @property
    def tumor(self) -> int:
        return int(self.tumor_probability >= self.threshold)

    @property
    def tumor_area_px(self) -> int:
        return int(self.mask.sum())


class TumorPredictor:
    """Detection and segmentation of 2D slices with both bundles' networks.

    Args:
        segmenter, classifier: networks returning logits ``(B, 1, H, W)`` and ``(B, 1)``.
        input_mode, spatial_size: the preprocessing both were trained with (must be one and the same).
        threshold: the per-pixel probability threshold of the masks (the segmentation bundle's).
        detection_threshold: the tumor-probability threshold of a slice (the detection bundle's); None: ``threshold``.
        gate_masks: clear the mask of a slice the classifier calls tumor-free.
        min_component_px: remove connected mask components smaller than this (pixels at the slice's size).
        amp, channels_last: bf16 autocast on capable CPUs (fp16 on CUDA) and channels-last execution.
    """

    def __init__(
        self,
        segmenter: torch.nn.Module,
        classifier: torch.nn.Module,
        input_mode: str = "all",
        spatial_size: tuple[int, int] = (224, 224),
        threshold: float = 0.5,
        detection_threshold: float | None = None,
        gate_masks: bool = False,
        min_component_px: int = 0,
        amp: bool = True,
        channels_last: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.segmenter = segmenter.to(self.device, memory_format=memory_format).eval()
        self.classifier = classifier.to(self.device, memory_format=memory_format).eval()
        self.threshold, self.gate_masks, self.min_component_px = threshold, gate_masks, min_component_px
        self.detection_threshold = threshold if detection_threshold is None else detection_threshold
        self.input_mode, self.spatial_size, self.channels_last = input_mode, tuple(spatial_size), channels_last
        self.inferer = AutocastInferer(enabled=amp, channels_last=channels_last)
        self.preprocessing = Compose(slice_preprocessing("image", input_mode=input_mode, spatial_size=spatial_size))
        # The same transforms minus the loading step, for pixels decoded elsewhere (DICOM series, multi-frame).
        self.array_preprocessing = Compose(
            slice_preprocessing("image", input_mode=input_mode, spatial_size=spatial_size, load=False)
        )

    @classmethod
    def from_bundles(
        cls,
        segmentation_bundle: str | os.PathLike | None = None,
        detection_bundle: str | os.PathLike | None = None,
        segmentation_weights: str | os.PathLike | None = None,
        detection_weights: str | os.PathLike | None = None,
        **kwargs,
    ) -> TumorPredictor:
        """Build from the two bundles (None: the shipped ones, :func:`bt_monai.bundle.locate_bundle`).

        ``kwargs`` override the bundles' settings. Preprocessing and mask settings come from the segmentation
        bundle's ``inference.json``, the detection threshold from the detection bundle's.
        """
        segmenter, seg = load_bundle_network(segmentation_bundle, segmentation_weights, name="segmentation")
        classifier, det = load_bundle_network(detection_bundle, detection_weights, name="detection")
        for key in ("input_mode", "spatial_size"):
            if seg.get(key) != det.get(key) and key not in kwargs:
                raise ValueError(
                    f"the bundles disagree on {key} ({seg.get(key)} vs {det.get(key)}): one preprocessing "
                    "serves both models, so retrain one of them or pass the setting explicitly"
                )
        settings = {k: seg[k] for k in INFERENCE_SETTINGS if k in seg}
        if "threshold" in det:
            settings["detection_threshold"] = det["threshold"]
        return cls(segmenter, classifier, **{**settings, **kwargs})

    def fingerprint(self) -> str:
        """SHA-256 of what decides this predictor's outputs: both networks' weights and all its settings.

        Two predictors with the same fingerprint give the same masks and probabilities for the same slices, so
        outputs made by one can be reused for the other (e.g. when ``infer`` resumes an interrupted run).
        """
        digest = hashlib.sha256()
        for network in (self.segmenter, self.classifier):
            for name, tensor in network.state_dict().items():
                tensor = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{name} {tensor.dtype} {tensor.numel()};".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes())
        settings = {
            "threshold": self.threshold,
            "detection_threshold": self.detection_threshold,
            "gate_masks": self.gate_masks,
            "min_component_px": self.min_component_px,
            "input_mode": self.input_mode,
            "spatial_size": list(self.spatial_size),
            "channels_last": self.channels_last,
            "device": self.device.type,
            "autocast": str(self.inferer.autocast_dtype(self.device.type)),
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()

    def preprocess(self, path: str | os.PathLike) -> torch.Tensor:
        """The network input ``(3, H, W)`` of one slice file (metadata keeps its original size)."""
        return self.preprocessing({"image": str(path)})["image"]

    def preprocess_array(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The network input ``(3, H, W)`` of already decoded pixels, through the same transforms as files.

        ``image``: channel-first ``(C, W, H)`` in MONAI's axis order (as :class:`bt_monai.transforms.LoadSlice`
        returns it: first spatial axis = image column), C = 1 (grayscale, taken as FLAIR), 3 or 4, any value
        range (e.g. rescaled DICOM values). The same pixels as a file give the same input as :meth:`preprocess`.
        """
        if image.ndim != 3:
            raise ValueError(f"expected a channel-first (C, W, H) slice, got an array of shape {tuple(image.shape)}")
        tensor = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
        # LoadSlice gives float32 with the original spatial shape in the metadata: start from the same state.
        meta = {MetaKeys.SPATIAL_SHAPE: np.asarray(tensor.shape[1:])}
        return self.array_preprocessing({"image": MetaTensor(tensor.float(), meta=meta)})["image"]

    @torch.no_grad()
    def predict_tensors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tumor probabilities ``(B,)`` and per-pixel probabilities ``(B, 1, H, W)`` of a preprocessed batch."""
        images = images.to(self.device)
        segmentation = torch.sigmoid(self.inferer(images, self.segmenter))
        return self.tumor_probabilities(images), segmentation.cpu()

    @torch.no_grad()
    def tumor_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Tumor probabilities ``(B,)`` of a preprocessed batch: the detection model alone (e.g. to rank slices)."""
        return torch.sigmoid(self.inferer(images.to(self.device), self.classifier)).reshape(-1).cpu()

    def to_mask(self, probability_map: torch.Tensor, original_size: tuple[int, int], tumor_probability: float):
        """Resize a ``(1, W, H)`` probability map to the slice's ``(W, H)``, threshold, clean; return ``(H, W)``."""
        mask = probability_to_mask(probability_map, original_size, self.threshold, self.min_component_px)
        if self.gate_masks and tumor_probability < self.detection_threshold:
            mask[:] = False
        return np.ascontiguousarray(mask.T.astype(np.uint8))

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 16,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> Iterator[SlicePrediction]:
        """Predict slice files in batches, yielding one :class:`SlicePrediction` per readable file, in order.

        Streams: at most one batch of slices is held in memory. A file that cannot be read raises, unless
        ``on_error(path, exception)`` is given: then it is reported there and skipped.
        """
        yield from self._stream(((str(path), path) for path in paths), self.preprocess, batch_size, on_error)

    def predict_arrays(
        self,
        images: Iterable[tuple[str, np.ndarray | torch.Tensor]],
        batch_size: int = 16,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> Iterator[SlicePrediction]:
        """Predict already decoded slices ``(key, image)`` in batches; like :meth:`predict_paths` otherwise.

        ``image`` is channel-first ``(C, W, H)`` (see :meth:`preprocess_array`); ``key`` names the slice in
        the yielded :class:`SlicePrediction` (its ``path``) and in ``on_error``. Masks are ``(H, W)``.
        """
        items = ((str(key), image) for key, image in images)
        yield from self._stream(items, self.preprocess_array, batch_size, on_error)

    def _stream(self, items, prepare, batch_size: int, on_error) -> Iterator[SlicePrediction]:
        batch: list[tuple[str, torch.Tensor]] = []
        for key, item in items:
            try:
                batch.append((key, prepare(item)))
            except Exception as e:
                if on_error is None:
                    raise
                on_error(key, _root_cause(e))
            if len(batch) == batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, batch: list[tuple[str, torch.Tensor]]) -> Iterator[SlicePrediction]:
        images = torch.stack([image.as_tensor() for _, image in batch])
        probabilities, maps = self.predict_tensors(images)
        for (path, image), probability, probability_map in zip(batch, probabilities, maps, strict=True):
            size = tuple(int(s) for s in image.meta["spatial_shape"][:2])
            mask = self.to_mask(probability_map, size, float(probability))
            yield SlicePrediction(path, float(probability), mask, self.detection_threshold)


def _root_cause(error: Exception) -> Exception:
    """The error a MONAI ``Compose`` wrapped ("applying transform ..."): it is the one that says what is wrong."""
    while isinstance(error.__cause__, Exception) and "applying transform" in str(error):
        error = error.__cause__
    return error
