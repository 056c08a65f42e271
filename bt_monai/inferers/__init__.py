"""Inferers: autocast + channels-last execution of the networks."""

from bt_monai.inferers.autocast import AutocastInferer, cpu_supports_bf16

__all__ = ["AutocastInferer", "cpu_supports_bf16"]
