"""The bt_monai MONAI Label app: the two local bundles plus the ``tumor_probability`` strategy.

MONAI Label's ``monaibundle`` sample app already serves the bundles (segmentation: masks and training;
detection: the tumor probability, served as a "classification" model, the type MONAI Label reads from its
folder name ``brain_tumor_classification``) but knows only the ``random`` and ``first`` strategies. This app
serves the same bundles with the same MONAI Label tasks (``BundleInferTask``, ``BundleTrainTask``), reads them
from local folders only (never a model zoo), and adds ``tumor_probability``. Start it with ``--app
bt_monai/apps/label/app`` (or a copy of that folder); settings, each ``--conf <key> <value>``:

- ``bundles_dir``: folder holding the bundles (default: the installed ones, :func:`bt_monai.bundle.locate_bundle`);
  a bundle under the app's ``model/`` folder wins, as in the monaibundle app;
- ``segmentation_model`` / ``detection_model``: bundle folder names (default ``brain_tumor_segmentation`` /
  ``brain_tumor_classification``; ``classification_model``, the older name of ``detection_model``, is read too);
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
from bt_monai.bundle import BUNDLE_FOLDERS, BundleNotFoundError, locate_bundle

__all__ = ["BrainTumorApp"]

logger = logging.getLogger(__name__)


class BrainTumorApp(MONAILabelApp):
    """MONAI Label app: segmentation and detection (infer, train) and slice ranking for annotation."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundles_dir = Path(conf["bundles_dir"]).expanduser() if conf.get("bundles_dir") else None
        names = {
            "segmentation": conf.get("segmentation_model"),
            "detection": conf.get("detection_model") or conf.get("classification_model"),  # its older name
        }
        self.bundles = {role: self._bundle(app_dir, bundles_dir, names[role] or BUNDLE_FOLDERS[role]) for role in names}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="bt_monai: brain tumor on 2D MRI slices",
            description="Tumor masks (segmentation bundle) and likely-tumor slices first (detection bundle)",
            version=bt_monai.__version__,
        )

    @staticmethod
    def _bundle(app_dir: str, bundles_dir: Path | None, name: str) -> Path:
        """The app's own copy in ``model/`` first, then ``bundles_dir``, else where :func:`locate_bundle` looks."""
        search = [Path(app_dir) / "model"] + ([bundles_dir] if bundles_dir else [])
        try:
            return locate_bundle(name, search=search)
        except (BundleNotFoundError, ValueError) as e:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"bundle {name!r} not found ({e}): give its parent folder with --conf bundles_dir <folder> (or its "
                "name with --conf segmentation_model / detection_model)",
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
        # Both learn from the datastore's masks: the detection bundle reads "tumor" as "any pixel set".
        tasks = {path.name: BundleTrainTask(str(path), self.conf) for path in self.bundles.values()}
        return {name: task for name, task in tasks.items() if task.is_valid()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            "tumor_probability": TumorProbability(self.bundles["segmentation"], self.bundles["detection"]),
            "random": Random(),
            "first": First(),
        }
