"""The bt_monai MONAI Label app: the two local bundles plus the ``tumor_probability`` strategy.

MONAI Label's ``monaibundle`` sample app already serves the bundles (segmentation: masks and training;
classification: the tumor probability as a classification result) but knows only the ``random`` and
``first`` strategies. This app serves the same bundles with the same MONAI Label tasks
(``BundleInferTask``, ``BundleTrainTask``), reads them from local folders only (never a model zoo), and adds
``tumor_probability``. Start it with ``--app bt_monai/apps/label/app`` (or a copy of that folder); settings,
each ``--conf <key> <value>``:

- ``bundles_dir``: folder holding the bundles (default: the repository's ``bundle/``); a bundle under the
  app's ``model/`` folder wins, as in the monaibundle app;
- ``segmentation_model`` / ``classification_model``: bundle folder names (default
  ``brain_tumor_segmentation`` / ``brain_tumor_classification``);
- ``skip_trainers``: ``true`` to offer no training.

Needs ``monailabel`` (the label environment).
"""

from __future__ import annotations

import logging
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import strtobool

import bt_monai
from bt_monai.apps.label.strategy import TumorProbability
from bt_monai.bundle import BundleNotFoundError, locate_bundle

__all__ = ["BrainTumorApp"]

logger = logging.getLogger(__name__)


class BrainTumorApp(MONAILabelApp):
    """MONAI Label app: segmentation and classification (infer, train) and slice ranking for annotation."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundles_dir = Path(conf["bundles_dir"]).expanduser() if conf.get("bundles_dir") else None
        self.bundles = {
            role: self._bundle(app_dir, bundles_dir, conf.get(f"{role}_model") or f"brain_tumor_{role}")
            for role in ("segmentation", "classification")
        }
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="bt_monai: brain tumor on 2D MRI slices",
            description="Tumor masks (segmentation bundle) and likely-tumor slices first (classification bundle)",
            version=bt_monai.__version__,
        )

    @staticmethod
    def _bundle(app_dir: str, bundles_dir: Path | None, name: str) -> Path:
        """The app's own copy in ``model/`` first, then ``bundles_dir``, else the installed bt_monai bundles."""
        candidates = [Path(app_dir) / "model" / name] + ([bundles_dir / name] if bundles_dir else [])
        for folder in candidates:
            if (folder / "configs" / "inference.json").is_file():
                return folder
        try:
            return locate_bundle(name)
        except (BundleNotFoundError, ValueError) as e:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"bundle {name!r} not found in {' nor in '.join(map(str, candidates))} ({e}): give its parent "
                "folder with --conf bundles_dir <folder> (or its name with --conf segmentation_model / "
                "classification_model)",
            ) from e

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for path in self.bundles.values():
            task = BundleInferTask(str(path), self.conf)  # type from the folder name: segmentation / classification
            if task.is_valid():
                infers[path.name] = task
            else:
                logger.warning(f"bundle {path} is not served: no models/model.pt (train it or copy its weights)")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        # Both learn from the datastore's masks: the classification bundle reads "tumor" as "any pixel set".
        tasks = {path.name: BundleTrainTask(str(path), self.conf) for path in self.bundles.values()}
        return {name: task for name, task in tasks.items() if task.is_valid()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            "tumor_probability": TumorProbability(self.bundles["segmentation"], self.bundles["classification"]),
            "random": Random(),
            "first": First(),
        }
