"""bt_monai: brain tumor detection and segmentation on 2D MRI slices, as a MONAI plugin."""

__version__ = "0.1.0"

from bt_monai import data, handlers, inferers, metrics, networks, transforms  # noqa: E402  (registers the backbone)

__all__ = ["__version__", "data", "handlers", "inferers", "metrics", "networks", "transforms"]
