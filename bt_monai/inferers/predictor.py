"""The one predictor behind every face of bt_monai (CLI, evaluation reports, DICOM, MONAI Label).

It runs both bundles' networks on the same preprocessed slice: one preprocessing
(:mod:`bt_monai.transforms.functional`, the functions :func:`bt_monai.transforms.slice_preprocessing`'s
transforms compute, applied here to whole batches), one pair of thresholds, so the outputs of all faces agree
by construction. Network definitions and settings (:class:`bt_monai.inferers.PredictorSettings`: which bundle
gives each) are read from each bundle's ``configs/inference.json``; weights from ``models/model.pt`` unless
given. The pixel threshold is the segmentation bundle's, the tumor-probability threshold the detection
bundle's.

The streaming path (:meth:`TumorPredictor.predict_paths`, :meth:`TumorPredictor.predict_arrays`) needs no
MONAI: files are decoded and resized by worker threads while the networks run on the previous batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bt_monai.data.slices import SliceDecoder
from bt_monai.inferers.execution import autocast_dtype, run_network
from bt_monai.inferers.settings import SLICE_SCORES, ModelBundles, PredictorSettings, predictor_settings
from bt_monai.transforms.functional import (
    UPPER_PERCENTILE,
    prepare_slice,
    probabilities_to_cleaned_maps,
    probabilities_to_masks,
    probability_to_mask,
    scale_batch,
)
from bt_monai.utils.threads import background, ordered_map

__all__ = ["SlicePrediction", "SliceProbabilities", "TumorPredictor", "slice_tumor_score"]


def slice_tumor_score(
    tumor_probability: float, mask_area_px: float, slice_score: str = "combined", half_area_px: float = 50.0
) -> float:
    """A slice's tumor score in [0, 1], the one definition the tumor call thresholds wherever both models run.

    ``slice_score`` "detector": the detection network's ``tumor_probability`` itself. "combined": the equal
    mix ``0.5 * tumor_probability + 0.5 * mask_area_px / (mask_area_px + half_area_px)``, where
    ``mask_area_px`` is the U-Net's cleaned mask area in pixels of the network input (e.g. 224 x 224) and the
    area term is 0.5 at ``half_area_px``. At the threshold 0.5 the combined call says tumor when the two
    models' evidence adds up: a confident detector with a small mask, or a large mask with a doubtful detector.
    """
    if slice_score == "detector":
        return float(tumor_probability)
    if slice_score != "combined":
        raise ValueError(f"slice_score must be one of {', '.join(SLICE_SCORES)}, got {slice_score!r}")
    area = max(float(mask_area_px), 0.0)
    return 0.5 * float(tumor_probability) + 0.5 * area / (area + float(half_area_px))


_SETTING_NAMES = frozenset(name for name, _ in PredictorSettings.specs())


@dataclass
class SlicePrediction:
    """Both models' answer for one slice.

    ``tumor_probability``: the detection network's own, in [0, 1]. ``tumor_score``: the slice score the call
    ``tumor`` thresholds (:func:`slice_tumor_score`; the detector's probability unless the predictor's
    ``slice_score`` is "combined"). ``mask``: uint8 0/1 array ``(H, W)`` (rows, columns, as image files store
    them) at the slice's own size. ``threshold``: the detection threshold ``tumor`` applies to ``tumor_score``.
    """

    path: str
    tumor_probability: float
    mask: np.ndarray
    threshold: float = 0.5
    tumor_score: float | None = None

    def __post_init__(self) -> None:
        if self.tumor_score is None:  # slice_score "detector": the score is the detector's probability
            self.tumor_score = self.tumor_probability

    @property
    def tumor(self) -> int:
        """The slice call: ``tumor_score >= threshold``."""
        return int(self.tumor_score >= self.threshold)

    @property
    def tumor_area_px(self) -> int:
        return int(self.mask.sum())


@dataclass
class SliceProbabilities:
    """Both models' answer for one slice, before the pixel threshold (:meth:`TumorPredictor.predict_probabilities`).

    ``probabilities``: float32 ``(H, W)`` in [0, 1] at the slice's own size: the U-Net's, with every pixel the
    predictor's mask rules clear set to 0 (not segmented below ``segment_gate``, removed components, gated
    slices), so ``probabilities >= predictor.threshold`` is exactly the :class:`SlicePrediction` mask.
    """

    path: str
    tumor_probability: float
    probabilities: np.ndarray
    tumor_score: float | None = None


class TumorPredictor:
    """Detection and segmentation of 2D slices with both bundles' networks.

    Args:
        segmenter, detector: networks returning logits ``(B, 1, H, W)`` and ``(B, 1)`` (``nn.Module`` or
            TorchScript).
        settings: everything else (:class:`bt_monai.inferers.PredictorSettings`: input mode and size, thresholds,
            mask gating and cleaning, the segment gate, autocast, channels-last, batch-norm folding, device,
            decode threads; each documented there). Defaults: ``PredictorSettings()``.
        bundles: where the networks came from (:class:`bt_monai.inferers.ModelBundles`), for :meth:`provenance`.
        **changes: settings to change from ``settings``, by name (e.g. ``amp=False``).

    A setting is read as an attribute too (``predictor.threshold``); change settings by assigning a new
    ``predictor.settings`` (e.g. ``predictor.settings = predictor.settings.replace(min_component_px=5)``).
    """

    def __init__(
        self,
        segmenter: torch.nn.Module,
        detector: torch.nn.Module,
        settings: PredictorSettings | None = None,
        bundles: ModelBundles | None = None,
        **changes,
    ) -> None:
        self.segmenter, self.detector, self.bundles = segmenter, detector, bundles
        self._monai_preprocessing = None
        self._frozen: dict[int, tuple] = {}  # id(network) -> (network, its frozen TorchScript)
        self.settings = (settings or PredictorSettings()).replace(**changes)

    @property
    def settings(self) -> PredictorSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: PredictorSettings) -> None:
        self._settings = settings
        self.device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.segmenter = self.segmenter.to(self.device, memory_format=memory_format).eval()
        self.detector = self.detector.to(self.device, memory_format=memory_format).eval()
        workers = settings.decode_workers
        self.decode_workers = (2 if (os.cpu_count() or 1) > 2 else 0) if workers is None else int(workers)
        self.autocast = autocast_dtype(self.device.type, settings.amp)
        self._monai_preprocessing = None
        self._frozen.clear()

    def __setattr__(self, name: str, value) -> None:
        if name in _SETTING_NAMES and name not in ("device", "decode_workers"):  # those two are resolved values
            raise AttributeError(
                f"{name} is a predictor setting: assign predictor.settings = predictor.settings.replace({name}=...), "
                "so that the fingerprint and every output follow it"
            )
        super().__setattr__(name, value)

    def __getattr__(self, name: str):
        # the settings read as attributes (predictor.threshold), one definition: PredictorSettings
        if name != "_settings" and "_settings" in self.__dict__ and name in _SETTING_NAMES:
            return getattr(self._settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_bundles(
        cls,
        segmentation_bundle: str | os.PathLike | ModelBundles | None = None,
        detection_bundle: str | os.PathLike | None = None,
        segmentation_weights: str | os.PathLike | None = None,
        detection_weights: str | os.PathLike | None = None,
        **changes,
    ) -> TumorPredictor:
        """Build from the two bundles (None: the shipped ones, :func:`bt_monai.bundle.locate_bundle`), or from a
        :class:`bt_monai.inferers.ModelBundles` given first.

        Each setting comes from the ``configs/inference.json`` of the bundle :class:`PredictorSettings` names for
        it (the detection threshold from the detection bundle's, the rest from the segmentation bundle's);
        ``changes`` override them (None: not given).
        """
        if isinstance(segmentation_bundle, ModelBundles):
            bundles = segmentation_bundle
        else:
            bundles = ModelBundles.locate(
                segmentation_bundle, detection_bundle, segmentation_weights, detection_weights
            )
        segmenter, detector, configs = bundles.load_networks()
        settings = predictor_settings(configs, {k: str(v) for k, v in bundles.inference_configs().items()}, **changes)
        return cls(segmenter, detector, settings, bundles)

    def provenance(self) -> dict | None:
        """What the models are (:meth:`bt_monai.inferers.ModelBundles.provenance`); None when not built from bundles."""
        return None if self.bundles is None else self.bundles.provenance()

    def fingerprint(self) -> str:
        """SHA-256 of what decides this predictor's outputs: both networks' weights and all its settings.

        Two predictors with the same fingerprint give the same masks and probabilities for the same slices, so
        outputs made by one can be reused for the other (e.g. when ``infer`` resumes an interrupted run). Its
        value for given weights and settings never changes between versions: the SEG and SR UIDs derive from it.
        """
        digest = hashlib.sha256()
        for network in (self.segmenter, self.detector):
            for name, tensor in network.state_dict().items():
                tensor = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{name} {tensor.dtype} {tensor.numel()};".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes())
        settings = {
            **self.settings.fingerprint_values(),
            "device": self.device.type,
            "autocast": str(self.autocast),
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()

    def _transforms(self, load: bool):
        # MONAI's per-slice transforms (the bundles' own preprocessing), built on first use only.
        if self._monai_preprocessing is None:
            from monai.transforms import Compose

            from bt_monai.transforms.presets import slice_preprocessing

            self._monai_preprocessing = {
                flag: Compose(
                    slice_preprocessing("image", input_mode=self.input_mode, spatial_size=self.spatial_size, load=flag)
                )
                for flag in (True, False)
            }
        return self._monai_preprocessing[load]

    def preprocess(self, path: str | os.PathLike) -> torch.Tensor:
        """The network input ``(3, H, W)`` of one slice file, through the bundles' MONAI transforms (a
        ``MetaTensor`` whose metadata keeps the original size); the streaming path gives the same values."""
        return self._transforms(load=True)({"image": str(path)})["image"]

    def preprocess_array(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The network input ``(3, H, W)`` of already decoded pixels, through the same MONAI transforms as files.

        ``image``: channel-first ``(C, W, H)`` in MONAI's axis order (as :class:`bt_monai.transforms.LoadSlice`
        returns it: first spatial axis = image column), C = 1 (grayscale, taken as FLAIR), 3 or 4, any value
        range (e.g. rescaled DICOM values). The same pixels as a file give the same input as :meth:`preprocess`.
        """
        from monai.data import MetaTensor
        from monai.utils import MetaKeys

        if image.ndim != 3:
            raise ValueError(f"expected a channel-first (C, W, H) slice, got an array of shape {tuple(image.shape)}")
        tensor = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
        # LoadSlice gives float32 with the original spatial shape in the metadata: start from the same state.
        meta = {MetaKeys.SPATIAL_SHAPE: np.asarray(tensor.shape[1:])}
        return self._transforms(load=False)({"image": MetaTensor(tensor.float(), meta=meta)})["image"]

    def prepare(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The per-slice half of the streaming preprocessing of a ``(C, W, H)`` slice: its input channels at the
        network's size (:func:`bt_monai.transforms.functional.prepare_slice`); :meth:`inputs` finishes a batch."""
        if image.ndim != 3:
            raise ValueError(f"expected a channel-first (C, W, H) slice, got an array of shape {tuple(image.shape)}")
        return prepare_slice(image, self.input_mode, self.spatial_size)

    def inputs(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        """Network inputs ``(B, 3, H, W)`` in [0, 1] of :meth:`prepare`'d slices (percentile scaling, RGB)."""
        return scale_batch(prepared, UPPER_PERCENTILE)

    def _runnable(self, network):
        # A TorchScript network is frozen once for running (weights inlined as constants; with fold_batch_norm,
        # each batch norm folded into the convolution before it); the network itself stays as it is, for
        # fingerprint() and for anyone reading its state dict.
        if not isinstance(network, torch.jit.ScriptModule):
            return network
        key = id(network)
        if key not in self._frozen:
            with warnings.catch_warnings():  # "torch.jit.freeze is deprecated": TorchScript is MONAI's export format
                warnings.simplefilter("ignore", FutureWarning)
                frozen = torch.jit.freeze(network.eval(), optimize_numerics=self.fold_batch_norm)
                self._frozen[key] = (network, frozen)
        return self._frozen[key][1]

    def _run(self, network, images: torch.Tensor) -> torch.Tensor:
        # Unoptimized TorchScript runs the exported graph op by op under eager autocast, which gives the eager
        # network's outputs (the JIT's own autocast pass does not) and skips the JIT's profiling runs.
        runnable = self._runnable(network)  # frozen outside the context below: freezing inlines with it on
        with torch.jit.optimized_execution(False):
            return run_network(runnable, images.to(self.device), self.autocast, self.channels_last)

    def segmented(self, tumor_probabilities: torch.Tensor) -> torch.Tensor:
        """Which slices of a batch the U-Net runs on: bool ``(B,)``, those at or above ``segment_gate``."""
        return tumor_probabilities >= self.segment_gate

    @torch.no_grad()
    def tumor_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Tumor probabilities ``(B,)`` of a preprocessed batch: the detection model alone (e.g. to rank slices)."""
        if hasattr(images, "as_tensor"):
            images = images.as_tensor()
        return torch.sigmoid(self._run(self.detector, images)).reshape(-1).cpu()

    def to_mask(self, probability_map: torch.Tensor, original_size: tuple[int, int], tumor_probability: float):
        """Resize a ``(1, W, H)`` probability map to the slice's ``(W, H)``, threshold, clean; return ``(H, W)``.

        ``tumor_probability``: the detector's, for the mask gate (through :meth:`tumor_score` of this mask).
        """
        mask = probability_to_mask(probability_map, original_size, self.threshold, self.min_component_px)
        return self._finish_mask(mask, self.tumor_score(tumor_probability, mask))

    def tumor_score(self, tumor_probability: float, mask: np.ndarray) -> float:
        """The slice score the tumor call thresholds, from the detector's probability and the slice's cleaned
        U-Net mask (or probability map) at the slice's own size, before any gating: :func:`slice_tumor_score`
        with this predictor's ``slice_score`` and ``score_half_area_px``."""
        if self.slice_score == "detector":
            return tumor_probability
        area = int((mask >= self.threshold).sum()) if mask.dtype.kind == "f" else int(mask.sum())
        input_area = area * float(np.prod(self.spatial_size)) / max(mask.size, 1)
        return slice_tumor_score(tumor_probability, input_area, self.slice_score, self.score_half_area_px)

    def _finish_mask(self, mask: np.ndarray, tumor_score: float) -> np.ndarray:
        # a (W, H) bool mask to (H, W) uint8, or a cleaned probability map to (H, W) float32; gated either way
        if self.gate_masks and tumor_score < self.detection_threshold:
            mask[:] = 0
        return np.ascontiguousarray(mask.T.astype(np.float32 if mask.dtype.kind == "f" else np.uint8))

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike],
        batch_size: int = 16,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> Iterator[SlicePrediction]:
        """Predict slice files in batches, yielding one :class:`SlicePrediction` per readable file, in order.

        Streams: at most a few batches of slices are held in memory. A file that cannot be read raises, unless
        ``on_error(path, exception)`` is given: then it is reported there and skipped. TIFF, PNG and JPEG are
        decoded without MONAI (:func:`bt_monai.data.pixels.read_slice_pixels`); DICOM and NIfTI files through
        :class:`bt_monai.data.readers.SliceLoader`; both give the same pixels.
        """
        loader = SliceDecoder()

        def read(path) -> tuple[torch.Tensor, tuple[int, int]]:
            pixels = loader(path)
            return self.prepare(pixels), tuple(int(s) for s in pixels.shape[1:])

        items = ((str(path), path) for path in paths)
        yield from self._stream(ordered_map(read, items, self.decode_workers, 2 * batch_size), batch_size, on_error)

    def predict_arrays(
        self,
        images: Iterable[tuple[str, np.ndarray | torch.Tensor]],
        batch_size: int = 16,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> Iterator[SlicePrediction]:
        """Predict already decoded slices ``(key, image)`` in batches; like :meth:`predict_paths` otherwise.

        ``image`` is channel-first ``(C, W, H)`` (see :meth:`preprocess_array`); ``key`` names the slice in
        the yielded :class:`SlicePrediction` (its ``path``) and in ``on_error``. Masks are ``(H, W)``. The
        iterable is consumed by a background thread (one batch ahead), so decoding overlaps the networks.
        """
        yield from self._stream(self._prepared_arrays(images, batch_size), batch_size, on_error)

    def predict_probabilities(
        self,
        images: Iterable[tuple[str, np.ndarray | torch.Tensor]],
        batch_size: int = 16,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> Iterator[SliceProbabilities]:
        """:meth:`predict_arrays`, stopping before the pixel threshold: one :class:`SliceProbabilities` per slice.

        For slices whose masks are made elsewhere (a series reformatted to axial slices maps these back onto its
        own grid and thresholds there), with the same networks, gates and cleaning.
        """
        prepared = self._prepared_arrays(images, batch_size)
        for p in self._stream(prepared, batch_size, on_error, maps=True):
            yield SliceProbabilities(p.path, p.tumor_probability, p.mask, p.tumor_score)

    def _prepared_arrays(self, images, batch_size: int):
        def read(image) -> tuple[torch.Tensor, tuple[int, int]]:
            return self.prepare(image), tuple(int(s) for s in image.shape[1:])

        items = ((str(key), image) for key, image in images)
        return ordered_map(read, background(items, batch_size), 0, 0)

    def _stream(self, prepared, batch_size: int, on_error, maps: bool = False) -> Iterator[SlicePrediction]:
        """The detector on every batch of ``batch_size`` slices, the U-Net on full batches of the slices at or
        above the gate (gathered across detector batches: one batch shape, no half-empty batches), predictions
        yielded in input order. ``maps``: each prediction's ``mask`` is its cleaned probability map instead."""
        queue_: deque[_Slice] = deque()  # every slice not yet yielded, in input order
        batch: list[_Slice] = []  # read, not yet scored by the detector
        waiting: list[_Slice] = []  # scored, at or above the gate, not yet segmented
        for key, result in prepared:
            if isinstance(result, Exception):
                if on_error is None:
                    raise result
                on_error(key, result)
                continue
            batch.append(_Slice(key, *result))
            if len(batch) == batch_size:
                waiting += self._detect(batch, maps)
                queue_.extend(batch)
                batch = []
                # a full U-Net batch, or a queue grown long behind a waiting slice (memory stays flat)
                while len(waiting) >= batch_size or (waiting and len(queue_) > 4 * batch_size):
                    self._segment(waiting[:batch_size], maps)
                    waiting = waiting[batch_size:]
                yield from self._ready(queue_)
        if batch:
            waiting += self._detect(batch, maps)
            queue_.extend(batch)
        while waiting:
            self._segment(waiting[:batch_size], maps)
            waiting = waiting[batch_size:]
        yield from self._ready(queue_)

    def _detect(self, batch: list[_Slice], maps: bool = False) -> list[_Slice]:
        """Tumor probabilities of a batch; returns the slices the U-Net has to segment (the others are done)."""
        inputs = self.inputs([s.image for s in batch])
        probabilities = self.tumor_probabilities(inputs)
        chosen = self.segmented(probabilities).tolist()
        for s, image, probability, segment in zip(batch, inputs, probabilities.tolist(), chosen, strict=True):
            s.probability, s.image = probability, (image if segment else None)
            if not segment:
                s.mask = np.zeros(s.size, dtype=np.float32 if maps else bool)
        return [s for s, segment in zip(batch, chosen, strict=True) if segment]

    @torch.no_grad()
    def _segment(self, slices: list[_Slice], maps: bool = False) -> None:
        probabilities = torch.sigmoid(self._run(self.segmenter, torch.stack([s.image for s in slices]))).cpu()
        finish = probabilities_to_cleaned_maps if maps else probabilities_to_masks
        masks = finish(probabilities, [s.size for s in slices], self.threshold, self.min_component_px)
        for s, mask in zip(slices, masks, strict=True):
            s.mask, s.image = mask, None

    def _ready(self, queue_: deque[_Slice]) -> Iterator[SlicePrediction]:
        while queue_ and queue_[0].mask is not None:
            s = queue_.popleft()
            score = self.tumor_score(s.probability, s.mask)
            mask = self._finish_mask(s.mask, score)
            yield SlicePrediction(s.key, s.probability, mask, self.detection_threshold, score)


@dataclass
class _Slice:
    """One slice on its way through :meth:`TumorPredictor._stream`."""

    key: str
    image: torch.Tensor | None  # prepared, then the network input while it awaits the U-Net
    size: tuple[int, int]
    probability: float = 0.0
    mask: np.ndarray | None = None  # (W, H), set when the slice is done
