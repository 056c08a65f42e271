"""MONAI's ``CheckpointSaver`` with atomic writes and a fixed-name "latest" checkpoint for resuming."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

__all__ = ["AtomicDiskSaver", "CheckpointSaver", "keep_previous_model"]


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing through a temporary file renamed into place (never a half-written file).

    With a fixed ``filename`` every save replaces that file atomically, so the previous one is never deleted
    first: an interruption leaves either the old or the new checkpoint, intact.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments), plus:

    - every file is written atomically (:class:`AtomicDiskSaver`);
    - ``interval_filename`` gives the interval checkpoint a fixed name (e.g. ``checkpoint_latest.pt``) that a
      ``CheckpointLoader`` can resume from;
    - ``state_dict()``, so the key-metric tracking (best value so far) can itself be saved in a checkpoint
      and restored on resume via ``load_state_dict``.
    """

    def __init__(self, save_dir: str, save_dict: dict, interval_filename: str | None = None, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        fixed_names = (
            (self._final_checkpoint, kwargs.get("final_filename")),
            (self._key_metric_checkpoint, kwargs.get("key_metric_filename")),
            (self._interval_checkpoint, interval_filename),
        )
        for checkpoint, filename in fixed_names:
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


def keep_previous_model(path: str | os.PathLike, resume: bool = False) -> Path | None:
    """Before a new training run overwrites ``path`` (e.g. the shipped ``models/model.pt``), copy it aside.

    The old file is kept as ``model.<UTC time>.pt`` next to it and the copy is logged; nothing is lost. It is
    copied, not moved: a run that starts from these weights (MONAI Label's fine-tuning loads ``model.pt`` when
    training starts) still finds them, and until the new run saves its first model, ``path`` stays usable. A
    resumed run continues the run that wrote ``path``, so nothing is copied.
    """
    path = Path(path)
    if resume or not path.is_file():
        return None
    kept = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}{path.suffix}")
    shutil.copy2(path, kept)
    logging.getLogger("bt_monai").warning(f"training writes a new {path.name}: the previous one is kept as {kept}")
    return kept
