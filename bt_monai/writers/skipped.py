"""``OUT/skipped.csv``: the inputs a run left out, with the reason; one rule for ``infer`` (slices and DICOM) and
``evaluate`` alike.

The rule: every run writes it, always, with its header ``path,reason`` and one row per file left out (none when
every input was used). So the file in OUT always describes the run that wrote OUT's other outputs: a list left
by an earlier run into the same folder never survives, and "nothing skipped" reads the same in every command.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from bt_monai.utils import write_csv

__all__ = ["SKIPPED_COLUMNS", "SKIPPED_FILE", "write_skipped"]

SKIPPED_FILE = "skipped.csv"
SKIPPED_COLUMNS = ("path", "reason")


def write_skipped(output: str | os.PathLike, skipped: Iterable[tuple[str, str]]) -> Path:
    """Write ``output/skipped.csv`` (atomically) from ``(path, reason)`` pairs, in their order; return its path.

    ``path`` is how the command names the input (relative to INPUT where it has one), ``reason`` one line
    (:func:`bt_monai.utils.error_summary`). Written even when ``skipped`` is empty: header only.
    """
    path = Path(output) / SKIPPED_FILE
    write_csv(path, SKIPPED_COLUMNS, skipped)
    return path
