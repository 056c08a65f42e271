"""The one predictor behind every face of bt_monai (CLI, evaluation reports, DICOM, MONAI Label).

It runs both bundles' networks on the same preprocessed slice: one preprocessing
(:mod:`bt_monai.transforms.functional`, the functions :func:`bt_monai.transforms.slice_preprocessing`'s
transforms compute, applied here to whole batches), one pair of thresholds, so the outputs of all faces agree
by construction. Network definitions, input mode, input size and thresholds are read from each bundle's
``configs/inference.json`` (:func:`bt_monai.bundle.load_bundle_network`); weights from ``models/model.pt``
unless given. The pixel threshold is the segmentation bundle's, the tumor-probability threshold the
detection bundle's.

The streaming path (:meth:`TumorPredictor.predict_paths`, :meth:`TumorPredictor.predict_arrays`) needs no
MONAI: files are decoded and resized by worker threads while the networks run on the previous batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from bt_monai.bundle import INFERENCE_SETTINGS, load_bundle_network
from bt_monai.data.pixels import PIXEL_FORMATS, read_slice_pixels, slice_format
from bt_monai.inferers.execution import autocast_dtype, run_network
from bt_monai.transforms.functional import (
    UPPER_PERCENTILE,
    prepare_slice,
    probabilities_to_masks,
    probability_to_mask,
    scale_batch,
)

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
        segmenter, classifier: networks returning logits ``(B, 1, H, W)`` and ``(B, 1)`` (``nn.Module`` or
            TorchScript).
        input_mode, spatial_size: the preprocessing both were trained with (must be one and the same).
        threshold: the per-pixel probability threshold of the masks (the segmentation bundle's).
        detection_threshold: the tumor-probability threshold of a slice (the detection bundle's); None: ``threshold``.
        gate_masks: clear the mask of a slice the classifier calls tumor-free.
        min_component_px: remove connected mask components smaller than this (pixels at the slice's size).
        segment_gate: run the U-Net only on slices whose tumor probability is at least this; the others get
            an empty mask (0: every slice is segmented). With ``gate_masks`` and a gate at or below
            ``detection_threshold`` the outputs are those of no gate.
        amp, channels_last: bf16 autocast on capable CPUs (fp16 on CUDA) and channels-last execution.
        fold_batch_norm: fold each batch norm into the convolution before it (TorchScript networks, e.g. the
            bundles' ``models/model.ts``): the same function in exact arithmetic, about a fifth less network
            time on CPU; under bf16 autocast the rounding differs slightly (validated: see the README).
        decode_workers: threads that read and resize slice files while the networks run (0: in the caller's
            thread). None: 2, or 0 on machines with 2 CPU cores or fewer, where they only compete with the
            networks' own threads (measured: no gain on 2 cores).
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
        segment_gate: float = 0.0,
        amp: bool = True,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        fold_batch_norm: bool = False,
        decode_workers: int | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.segmenter = segmenter.to(self.device, memory_format=memory_format).eval()
        self.classifier = classifier.to(self.device, memory_format=memory_format).eval()
        self.threshold, self.gate_masks, self.min_component_px = threshold, gate_masks, min_component_px
        self.detection_threshold = threshold if detection_threshold is None else detection_threshold
        if not 0.0 <= segment_gate <= 1.0:
            raise ValueError(f"segment_gate is a tumor probability in [0, 1], got {segment_gate}")
        self.segment_gate = float(segment_gate)
        self.input_mode, self.spatial_size, self.channels_last = input_mode, tuple(spatial_size), channels_last
        if decode_workers is None:
            decode_workers = 2 if (os.cpu_count() or 1) > 2 else 0
        self.amp, self.decode_workers = amp, max(0, int(decode_workers))
        self.fold_batch_norm = bool(fold_batch_norm)
        self.autocast = autocast_dtype(self.device.type, amp)
        self._monai_preprocessing = None
        self._frozen: dict[int, tuple] = {}  # id(network) -> (network, its frozen TorchScript)

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
            "segment_gate": self.segment_gate,
            "fold_batch_norm": self.fold_batch_norm,
            "input_mode": self.input_mode,
            "spatial_size": list(self.spatial_size),
            "channels_last": self.channels_last,
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
        return torch.sigmoid(self._run(self.classifier, images)).reshape(-1).cpu()

    def to_mask(self, probability_map: torch.Tensor, original_size: tuple[int, int], tumor_probability: float):
        """Resize a ``(1, W, H)`` probability map to the slice's ``(W, H)``, threshold, clean; return ``(H, W)``."""
        mask = probability_to_mask(probability_map, original_size, self.threshold, self.min_component_px)
        return self._finish_mask(mask, tumor_probability)

    def _finish_mask(self, mask: np.ndarray, tumor_probability: float) -> np.ndarray:
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

        Streams: at most a few batches of slices are held in memory. A file that cannot be read raises, unless
        ``on_error(path, exception)`` is given: then it is reported there and skipped. TIFF, PNG and JPEG are
        decoded without MONAI (:func:`bt_monai.data.pixels.read_slice_pixels`); DICOM and NIfTI files through
        :class:`bt_monai.data.readers.SliceLoader`; both give the same pixels.
        """
        loader = _SliceFiles()

        def read(path) -> tuple[torch.Tensor, tuple[int, int]]:
            pixels = loader(path)
            return self.prepare(pixels), tuple(int(s) for s in pixels.shape[1:])

        items = ((str(path), path) for path in paths)
        yield from self._stream(_ordered_map(read, items, self.decode_workers, 2 * batch_size), batch_size, on_error)

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

        def read(image) -> tuple[torch.Tensor, tuple[int, int]]:
            return self.prepare(image), tuple(int(s) for s in image.shape[1:])

        items = ((str(key), image) for key, image in images)
        prepared = _ordered_map(read, _background(items, batch_size), 0, 0)
        yield from self._stream(prepared, batch_size, on_error)

    def _stream(self, prepared, batch_size: int, on_error) -> Iterator[SlicePrediction]:
        """The classifier on every batch of ``batch_size`` slices, the U-Net on full batches of the slices at or
        above the gate (gathered across classifier batches: one batch shape, no half-empty batches), predictions
        yielded in input order."""
        queue_: deque[_Slice] = deque()  # every slice not yet yielded, in input order
        batch: list[_Slice] = []  # read, not yet classified
        waiting: list[_Slice] = []  # classified, at or above the gate, not yet segmented
        for key, result in prepared:
            if isinstance(result, Exception):
                if on_error is None:
                    raise result
                on_error(key, result)
                continue
            batch.append(_Slice(key, *result))
            if len(batch) == batch_size:
                waiting += self._classify(batch)
                queue_.extend(batch)
                batch = []
                # a full U-Net batch, or a queue grown long behind a waiting slice (memory stays flat)
                while len(waiting) >= batch_size or (waiting and len(queue_) > 4 * batch_size):
                    self._segment(waiting[:batch_size])
                    waiting = waiting[batch_size:]
                yield from self._ready(queue_)
        if batch:
            waiting += self._classify(batch)
            queue_.extend(batch)
        while waiting:
            self._segment(waiting[:batch_size])
            waiting = waiting[batch_size:]
        yield from self._ready(queue_)

    def _classify(self, batch: list[_Slice]) -> list[_Slice]:
        """Tumor probabilities of a batch; returns the slices the U-Net has to segment (the others are done)."""
        inputs = self.inputs([s.image for s in batch])
        probabilities = self.tumor_probabilities(inputs)
        chosen = self.segmented(probabilities).tolist()
        for s, image, probability, segment in zip(batch, inputs, probabilities.tolist(), chosen, strict=True):
            s.probability, s.image = probability, (image if segment else None)
            if not segment:
                s.mask = np.zeros(s.size, dtype=bool)
        return [s for s, segment in zip(batch, chosen, strict=True) if segment]

    @torch.no_grad()
    def _segment(self, slices: list[_Slice]) -> None:
        maps = torch.sigmoid(self._run(self.segmenter, torch.stack([s.image for s in slices]))).cpu()
        masks = probabilities_to_masks(maps, [s.size for s in slices], self.threshold, self.min_component_px)
        for s, mask in zip(slices, masks, strict=True):
            s.mask, s.image = mask, None

    def _ready(self, queue_: deque[_Slice]) -> Iterator[SlicePrediction]:
        while queue_ and queue_[0].mask is not None:
            s = queue_.popleft()
            yield SlicePrediction(
                s.key, s.probability, self._finish_mask(s.mask, s.probability), self.detection_threshold
            )


@dataclass
class _Slice:
    """One slice on its way through :meth:`TumorPredictor._stream`."""

    key: str
    image: torch.Tensor | None  # prepared, then the network input while it awaits the U-Net
    size: tuple[int, int]
    probability: float = 0.0
    mask: np.ndarray | None = None  # (W, H), set when the slice is done


class _SliceFiles:
    """Decode a slice file to ``(C, W, H)`` float32: TIFF/PNG/JPEG without MONAI, other formats with SliceLoader."""

    def __init__(self) -> None:
        self._loader = None
        self._lock = threading.Lock()

    def __call__(self, path) -> np.ndarray | torch.Tensor:
        if slice_format(path) in PIXEL_FORMATS:
            return read_slice_pixels(path)
        with self._lock:  # built once, on the first DICOM or NIfTI file
            if self._loader is None:
                from bt_monai.data.readers import SliceLoader

                self._loader = SliceLoader()
        return self._loader(path).as_tensor()


def _ordered_map(fn, items: Iterable[tuple[str, object]], workers: int, lookahead: int) -> Iterator[tuple[str, object]]:
    """``(key, fn(item))`` in the order of ``items``, computed by ``workers`` threads up to ``lookahead`` ahead;
    an exception raised by ``fn`` is yielded in place of its result. ``workers`` 0: in the caller's thread."""
    if workers == 0:
        for key, item in items:
            try:
                yield key, fn(item)
            except Exception as e:
                yield key, e
        return
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="bt_monai-decode") as pool:
        try:
            for key, item in items:
                pending.append((key, pool.submit(fn, item)))
                if len(pending) > lookahead:
                    yield _result(*pending.popleft())
            while pending:
                yield _result(*pending.popleft())
        finally:
            for _, future in pending:  # the consumer stopped early: drop what was not started
                future.cancel()


def _result(key: str, future) -> tuple[str, object]:
    try:
        return key, future.result()
    except Exception as e:
        return key, e


_DONE = object()


def _background(items: Iterable, depth: int) -> Iterator:
    """The items of ``items``, produced by a background thread at most ``depth`` ahead of the consumer.

    An exception raised by the iterable itself is re-raised in the consumer; a consumer that stops early stops
    the producer at its next item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        # never blocks for good: a consumer that stopped early takes nothing more
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed over to the consumer
            put(_Raised(e))

    thread = threading.Thread(target=produce, name="bt_monai-arrays", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()


@dataclass
class _Raised:
    error: BaseException
