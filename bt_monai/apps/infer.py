"""``python -m bt_monai infer``: both models over one slice, a folder of slices, or a kaggle_3m dataset.

Outputs under OUT: ``predictions.csv`` (one row per readable slice: path relative to INPUT,
tumor_probability, tumor, tumor_area_px), ``masks/<path without extension>.png`` (0/255, at the slice's own
size) and, when some files could not be read, ``skipped.csv`` (path, reason). Every file is written
atomically; nothing is written outside OUT, and no input file is ever overwritten (OUT may be INPUT).

Interrupted runs: while it runs, ``OUT/.bt_monai_infer_progress.csv`` records each finished slice (after its
mask is written, flushed at once) with a fingerprint of the run (both networks' weights, threshold, gating,
min_component_px, preprocessing, input folder). Run the same command again after a crash or a kill and it
continues: slices already recorded (same fingerprint, mask present, input file unchanged) are not predicted
again, ``predictions.csv`` comes out complete and in the same order as an uninterrupted run's, and the record
is removed at the end. ``overwrite=True`` (``--overwrite``) starts afresh instead; so does any change of
weights or settings. A finished run leaves no record: running it again predicts everything again. The
record is locked while a run uses it, so two runs into the same OUT at the same time are refused.
"""

from __future__ import annotations

import csv
import io
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from bt_monai.data import discover_images
from bt_monai.data.pixels import strip_image_suffix
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import inside, remove_stale_temporaries, write_csv
from bt_monai.writers.masks import write_mask_png

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

__all__ = ["PREDICTION_COLUMNS", "PROGRESS_FILE", "InferenceSummary", "ProgressJournal", "infer_folder"]

PREDICTION_COLUMNS = ("path", "tumor_probability", "tumor", "tumor_area_px")
PROGRESS_FILE = ".bt_monai_infer_progress.csv"


@dataclass
class InferenceSummary:
    slices: int = 0
    tumor_slices: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reused: int = 0  # of ``slices``: finished by an interrupted earlier run, not predicted again


def _relative(path: Path, root: Path) -> Path:
    return Path(path.name) if root.is_file() else path.relative_to(root)


def mask_names(relatives: list[Path]) -> dict[Path, Path]:
    """``masks/`` path of each input: its path without the image extension, plus ``.png``.

    Two inputs that differ only by extension (``a.tif``, ``a.png``) keep their extension in the name.
    """
    stems = {r: r.with_name(strip_image_suffix(r.name) + ".png") for r in relatives}
    counts: dict[Path, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {r: stem if counts[stem] == 1 else r.with_name(r.name + ".png") for r, stem in stems.items()}


def _input_state(path: Path) -> tuple[str, str]:
    """Size and modification time of an input file: a slice whose file changed is predicted again."""
    stat = path.stat()
    return str(stat.st_size), str(stat.st_mtime_ns)


class ProgressJournal:
    """The append-only record of the slices a run has finished, for resuming it (``OUT/.bt_monai_infer_progress.csv``).

    Its first line names the run's fingerprint; each further line is one finished slice: its
    :data:`PREDICTION_COLUMNS`, then its mask path under ``masks/`` and the input file's size and modification
    time. A line is written only after its mask, and flushed at once, so a killed run loses at most the slices
    of the batch in progress; an unfinished last line is ignored. Use it as a context manager: the file is
    locked while the run holds it.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.header = f"# bt_monai infer progress {fingerprint}\n"
        self._file: IO[str] | None = None

    def __enter__(self) -> ProgressJournal:
        self._file = open(self.path, "a+", newline="", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        if fcntl is not None:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                raise BlockingIOError(
                    f"another bt_monai infer run is writing into {self.path.parent} (it holds {self.path.name})"
                ) from None
        return self

    def __exit__(self, *exc) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None

    def finished(self) -> dict[str, list[str]]:
        """The slices recorded by an earlier run with this fingerprint: ``{path: row}`` (the last row wins)."""
        assert self._file is not None
        self._file.seek(0)
        text = self._file.read()
        if not text.startswith(self.header):
            return {}
        complete = text[len(self.header) :]
        complete = complete[: complete.rfind("\n") + 1]  # a line cut short by a kill is not a record
        return {row[0]: row for row in csv.reader(io.StringIO(complete)) if len(row) == len(PREDICTION_COLUMNS) + 3}

    def restart(self) -> None:
        """Forget every record (another fingerprint, or ``overwrite``): the file holds the header alone."""
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate()
        self._write(self.header)

    def append(self, row: list[str]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(row)
        self._write(buffer.getvalue())

    def _write(self, text: str) -> None:
        assert self._file is not None
        self._file.write(text)
        self._file.flush()

    def remove(self) -> None:
        """Delete the record (the run is complete); the lock is held until the context ends."""
        self.path.unlink(missing_ok=True)


def infer_folder(
    predictor: TumorPredictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int = 16,
    overwrite: bool = False,
) -> InferenceSummary:
    """Predict every slice below ``source`` and write the outputs under ``output`` (see module docstring).

    An interrupted earlier run into ``output`` is continued (its finished slices are not predicted again)
    unless ``overwrite``. Memory stays flat whatever the number of slices: one batch of images at a time.
    """
    source, output = Path(source).expanduser(), Path(output).expanduser()
    inputs = [p for p in discover_images(source) if not inside(p, output / "masks")]  # our own outputs
    relatives = {p: _relative(p, source).as_posix() for p in inputs}
    names = {r.as_posix(): m.as_posix() for r, m in mask_names([Path(r) for r in relatives.values()]).items()}
    input_set = {os.path.realpath(p) for p in inputs}
    output.mkdir(parents=True, exist_ok=True)
    fingerprint = f"{predictor.fingerprint()} {os.path.realpath(source)}"
    summary, rows = InferenceSummary(), {}

    with ProgressJournal(output / PROGRESS_FILE, fingerprint) as journal:
        remove_stale_temporaries(output)  # killed runs' half-written reports and masks
        remove_stale_temporaries(output / "masks", recursive=True)
        by_relative = {r: p for p, r in relatives.items()}
        for row in ({} if overwrite else journal.finished()).values():
            path, mask, state = row[0], row[len(PREDICTION_COLUMNS)], tuple(row[len(PREDICTION_COLUMNS) + 1 :])
            if path in by_relative and names[path] == mask and (output / "masks" / mask).is_file():
                if _input_state(by_relative[path]) == state:  # the same file as then
                    rows[path] = tuple(row[: len(PREDICTION_COLUMNS)])
        if overwrite or not rows:
            journal.restart()
        summary.reused = len(rows)

        def skip(path: str, error: Exception) -> None:
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            summary.skipped.append((_relative(Path(path), source).as_posix(), reason))
            progress.update()

        todo = [p for p in inputs if relatives[p] not in rows]
        progress = tqdm(total=len(inputs), initial=len(inputs) - len(todo), desc="slices", unit="slice", disable=None)

        def write(prediction, relative: str, row: tuple) -> None:
            # mask first, then its journal line: a line in the journal always has its mask on disk
            write_mask_png(output / "masks" / names[relative], prediction.mask)
            journal.append([*row, names[relative], *_input_state(Path(prediction.path))])
            progress.update()

        # One writer thread, in order, overlaps PNG encoding with the networks; a bounded queue keeps memory flat.
        with ThreadPoolExecutor(1, thread_name_prefix="bt_monai-write") as writer:
            pending: deque = deque()
            for prediction in predictor.predict_paths(todo, batch_size, on_error=skip):
                relative = relatives[Path(prediction.path)]
                if os.path.realpath(output / "masks" / names[relative]) in input_set:
                    raise RuntimeError(f"refusing to overwrite the input {output / 'masks' / names[relative]}")
                probability, area = f"{prediction.tumor_probability:.6f}", str(prediction.tumor_area_px)
                row = (relative, probability, str(prediction.tumor), area)
                pending.append(writer.submit(write, prediction, relative, row))
                rows[relative] = row
                while len(pending) > 2 * batch_size:
                    pending.popleft().result()  # raises a write error here, in order
            while pending:
                pending.popleft().result()
        progress.close()
        ordered = [rows[relatives[p]] for p in inputs if relatives[p] in rows]  # the inputs' order, as uninterrupted
        summary.slices = len(ordered)
        summary.tumor_slices = sum(int(row[2]) for row in ordered)
        write_csv(output / "predictions.csv", PREDICTION_COLUMNS, ordered)
        if summary.skipped:
            write_csv(output / "skipped.csv", ("path", "reason"), summary.skipped)
        else:
            (output / "skipped.csv").unlink(missing_ok=True)  # an earlier run's list no longer holds
        journal.remove()
    return summary
