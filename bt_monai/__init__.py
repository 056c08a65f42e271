"""bt_monai: brain tumor detection and segmentation on 2D MRI slices, as a MONAI plugin.

Importing the package is cheap (no torch, no MONAI): each subpackage is imported when first used, e.g.
``bt_monai.transforms`` in a bundle config, or ``from bt_monai.inferers import TumorPredictor``.
"""

from __future__ import annotations

import importlib

__version__ = "0.5.0"

SUBPACKAGES = (
    "utils",
    "data",
    "transforms",
    "networks",
    "metrics",
    "engines",
    "bundle",
    "inferers",
    "writers",
    "handlers",
    "apps",
)
"""The layers, lowest first: a module imports only from its own layer and the layers before it."""

__all__ = ["__version__", *SUBPACKAGES]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"bt_monai.{name}")
    raise AttributeError(f"module 'bt_monai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
