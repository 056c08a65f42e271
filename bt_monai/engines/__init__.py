"""Engine helpers for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` (as in ``monai.engines``)."""

from bt_monai.engines.utils import AugmentedPrepareBatch

__all__ = ["AugmentedPrepareBatch"]
