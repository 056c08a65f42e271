"""The ``tumor_probability`` active-learning strategy: the unlabelled slice most likely to show tumor first.

MONAI Label asks a strategy for the next image to annotate (``POST /activelearning/<strategy>``; 3D Slicer's
"Next Sample"). This one ranks the datastore's unlabelled slices by the detection model's tumor probability
(:class:`~bt_monai.apps.label.ranking.TumorProbabilityRanker`), so annotators see likely-tumor slices first.
Needs ``monailabel`` (the label environment).
"""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.strategy import Strategy

from bt_monai.apps.label.ranking import TumorProbabilityRanker
from bt_monai.bundle import WeightsError

__all__ = ["TumorProbability"]

logger = logging.getLogger(__name__)


class TumorProbability(Strategy):
    """Next sample: the unlabelled slice with the highest tumor probability; the answer carries it too.

    Args:
        segmentation_bundle, detection_bundle: bundle folders for :class:`TumorProbabilityRanker`.
        batch_size: slices per forward pass when ranking.
    """

    def __init__(
        self, segmentation_bundle: str | os.PathLike, detection_bundle: str | os.PathLike, batch_size: int = 16
    ) -> None:
        super().__init__("Unlabelled slice most likely to show tumor first (detection model's tumor probability)")
        # Built on first use: the app is also instantiated in every training subprocess, which never ranks.
        self.ranker = TumorProbabilityRanker(segmentation_bundle, detection_bundle, batch_size)

    def __call__(self, request: dict, datastore: Datastore) -> dict | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        ids = {datastore.get_image_uri(image_id): image_id for image_id in images}
        try:
            ranked = self.ranker.rank(ids)
        except (WeightsError, FileNotFoundError, ValueError) as e:
            raise MONAILabelException(MONAILabelError.APP_ERROR, f"tumor_probability strategy: {e}") from e
        if not ranked:
            return None
        path, probability = ranked[0]
        logger.info(f"tumor_probability: next {ids[path]} (p = {probability:.3f}) of {len(ranked)} unlabelled")
        return {"id": ids[path], "tumor_probability": probability}
