"""Inferers: autocast + channels-last execution, and the one predictor that serves every face."""

from bt_monai.utils.lazy import lazy_exports

_EXPORTS = {
    "AutocastInferer": "bt_monai.inferers.autocast",
    "ModelBundles": "bt_monai.inferers.settings",
    "PredictorSettings": "bt_monai.inferers.settings",
    "SlicePrediction": "bt_monai.inferers.predictor",
    "SliceProbabilities": "bt_monai.inferers.predictor",
    "TumorPredictor": "bt_monai.inferers.predictor",
    "autocast_dtype": "bt_monai.inferers.execution",
    "cpu_supports_bf16": "bt_monai.inferers.execution",
    "run_network": "bt_monai.inferers.execution",
    "slice_tumor_score": "bt_monai.inferers.predictor",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
