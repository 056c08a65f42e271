"""MONAI Label support: annotation assistance with the two bundles (see the README's "MONAI Label" section).

- :mod:`~bt_monai.apps.label.datastore`: a MONAI Label datastore (one flat folder of slices, optional labels)
  made from a kaggle_3m dataset or any folder of slices;
- :mod:`~bt_monai.apps.label.ranking`: tumor probabilities of slice files by the detection model, through
  :class:`bt_monai.inferers.TumorPredictor`, cached per file;
- :mod:`~bt_monai.apps.label.strategy` and :mod:`~bt_monai.apps.label.application`: the ``tumor_probability``
  active-learning strategy and the MONAI Label app that serves it (``app/main.py``). These two import
  ``monailabel``, which lives in its own virtual environment (``pip install -e ".[label]"``), so this package
  does not import them.
"""

from bt_monai.apps.label.datastore import LABEL_TAG, make_label_datastore
from bt_monai.apps.label.ranking import TumorProbabilityRanker

__all__ = ["LABEL_TAG", "TumorProbabilityRanker", "make_label_datastore"]
