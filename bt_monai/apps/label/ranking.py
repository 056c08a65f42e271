"""Tumor probability of slice files by the detection model, to rank slices for annotation.

The probabilities come from :class:`bt_monai.inferers.TumorPredictor` (the CLI's predictor: same
preprocessing, same model), so a slice ranks here with the ``tumor_probability`` that ``python -m bt_monai
infer`` reports for it. Results are cached per file (path, size, modification time) and dropped when the
detection model's weights file changes, so asking again after a few new labels costs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

import torch

from bt_monai.bundle import locate_bundle
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import file_stamp

__all__ = ["TumorProbabilityRanker"]

logger = logging.getLogger(__name__)


class TumorProbabilityRanker:
    """Rank slice files by tumor probability, highest first.

    Args:
        segmentation_bundle, detection_bundle: the bundles :meth:`TumorPredictor.from_bundles` loads
            (their ``models/model.pt``; None: the shipped ones); the detection bundle's weights decide the
            probabilities.
        batch_size: slices per forward pass.
        predictor_factory: builds the predictor (default: ``TumorPredictor.from_bundles`` of the two
            bundles); called again when the detection weights file changes.
    """

    def __init__(
        self,
        segmentation_bundle: str | os.PathLike | None = None,
        detection_bundle: str | os.PathLike | None = None,
        batch_size: int = 16,
        predictor_factory: Callable[[], TumorPredictor] | None = None,
    ) -> None:
        self.weights = locate_bundle(detection_bundle, "detection") / "models" / "model.pt"
        self.batch_size = batch_size
        self.predictor_factory = predictor_factory or (
            lambda: TumorPredictor.from_bundles(segmentation_bundle, detection_bundle)
        )
        self._predictor: TumorPredictor | None = None
        self._weights_stamp: tuple[int, int] | None = None
        self._cache: dict[str, tuple[tuple[int, int] | None, float]] = {}
        self._lock = threading.Lock()  # the server may ask from several threads

    def predictor(self) -> TumorPredictor:
        """The predictor, (re)built when the detection weights file is new or changed."""
        stamp = file_stamp(self.weights)
        if self._predictor is None or stamp != self._weights_stamp:
            self._predictor = self.predictor_factory()
            self._weights_stamp = stamp
            self._cache.clear()
        return self._predictor

    def probabilities(self, paths: Iterable[str | os.PathLike]) -> dict[str, float]:
        """``{path: tumor probability}`` for every readable file of ``paths`` (unreadable ones are logged)."""
        paths = [str(p) for p in paths]
        with self._lock:
            predictor = self.predictor()
            stamps = {p: file_stamp(p) for p in paths}
            todo = [p for p in paths if p not in self._cache or self._cache[p][0] != stamps[p]]
            for start in range(0, len(todo), self.batch_size):
                batch = []
                for path in todo[start : start + self.batch_size]:
                    try:
                        batch.append((path, predictor.preprocess(path).as_tensor()))
                    except Exception as e:  # one bad file must not stop the ranking of the others
                        logger.warning(f"cannot rank {path}: {e}")
                if batch:
                    probabilities = predictor.tumor_probabilities(torch.stack([image for _, image in batch]))
                    for (path, _), p in zip(batch, probabilities.tolist(), strict=True):
                        self._cache[path] = (stamps[path], float(p))
            return {p: self._cache[p][1] for p in paths if p in self._cache}

    def rank(self, paths: Iterable[str | os.PathLike]) -> list[tuple[str, float]]:
        """``(path, probability)`` pairs, most likely tumor first (ties: by path, for a stable order)."""
        return sorted(self.probabilities(paths).items(), key=lambda item: (-item[1], item[0]))
