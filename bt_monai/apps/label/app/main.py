"""MONAI Label app folder: ``monailabel start_server --app bt_monai/apps/label/app ...`` (see the README).

MONAI Label loads the ``MONAILabelApp`` subclass found in an app folder's ``main.py``; the app itself lives
in :mod:`bt_monai.apps.label.application`.
"""

from bt_monai.apps.label.application import BrainTumorApp

__all__ = ["BrainTumorApp"]
