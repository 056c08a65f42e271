"""Inferers: autocast + channels-last execution, and the one predictor that serves every face."""

from bt_monai.inferers.autocast import AutocastInferer, cpu_supports_bf16
from bt_monai.inferers.predictor import (
    CLASSIFICATION_BUNDLE,
    SEGMENTATION_BUNDLE,
    SlicePrediction,
    TumorPredictor,
    WeightsError,
    load_bundle_network,
    load_weights,
)

__all__ = [
    "CLASSIFICATION_BUNDLE",
    "SEGMENTATION_BUNDLE",
    "AutocastInferer",
    "SlicePrediction",
    "TumorPredictor",
    "WeightsError",
    "cpu_supports_bf16",
    "load_bundle_network",
    "load_weights",
]
