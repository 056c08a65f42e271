"""Inferers: autocast + channels-last execution, and the one predictor that serves every face."""

from bt_monai.inferers.autocast import AutocastInferer, cpu_supports_bf16
from bt_monai.inferers.predictor import SlicePrediction, TumorPredictor

__all__ = ["AutocastInferer", "SlicePrediction", "TumorPredictor", "cpu_supports_bf16"]
