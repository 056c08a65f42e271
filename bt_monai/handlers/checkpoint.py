"""MONAI's ``CheckpointSaver`` with atomic writes and a fixed-name "latest" checkpoint for resuming.

Temporaries are named by :func:`bt_monai.utils.atomic_write`, which also writes them."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from bt_monai.utils import atomic_write, remove_stale_temporaries

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "keep_previous_model",
    "remove_stale_checkpoint_temporaries",
    "should_resume",
]


def remove_stale_checkpoint_temporaries(dirname: str | os.PathLike) -> list[Path]:
    """Remove the half-written checkpoints that killed runs left in ``dirname`` (never a running one's)."""
    removed = remove_stale_temporaries(dirname)
    if removed:
        logging.getLogger("bt_monai").warning(f"removed {len(removed)} half-written checkpoint(s) of killed runs")
    return removed


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing through a temporary file renamed into place (never a half-written file).

    With a fixed ``filename`` every save replaces that file atomically, so the previous one is never deleted
    first: an interruption, even a ``SIGKILL`` or a power cut, leaves either the old or the new checkpoint,
    intact. The temporary file is hidden (``.<name>.<pid>.<random>.tmp``), synced to disk before the rename,
    and one left behind by a killed run is removed when the next saver for the folder is created.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        if idist.get_rank() == self.save_on_rank:
            remove_stale_checkpoint_temporaries(self.dirname)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        with atomic_write(self.dirname / (self.filename or filename), "wb", fsync=True) as f:
            torch.save(checkpoint, f, **self.kwargs)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
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


def should_resume(checkpoint: str | os.PathLike, resume: bool) -> bool:
    """Whether a run asked to ``resume`` does: only when ``checkpoint`` exists.

    A run stopped before it saved its first checkpoint has nothing to resume from: asked to resume, it starts
    from the beginning (with a warning), so running the same command with ``--resume True`` again always
    works after an interruption.
    """
    if resume and not Path(checkpoint).is_file():
        logging.getLogger("bt_monai").warning(
            f"resume: there is no {checkpoint} (the run stopped before its first epoch ended): starting afresh"
        )
        return False
    return bool(resume)
