"""bt_monai: brain tumor detection and segmentation on 2D MRI slices, as a MONAI plugin."""

__version__ = "0.1.0"

from bt_monai import data, networks, transforms  # noqa: E402  (networks registers the MONAI backbone)

__all__ = ["__version__", "data", "networks", "transforms"]
