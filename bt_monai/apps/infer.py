"""``python -m bt_monai infer``: both models over one slice, a folder of slices, or a kaggle_3m dataset.

Outputs under OUT: ``predictions.csv`` (one row per readable slice: path relative to INPUT,
tumor_probability (the detector's), tumor_score (what the call ``tumor`` thresholds: the predictor's slice score),
tumor, tumor_area_px), ``masks/<path without extension>.png`` (0/255, at the slice's own
size) and ``skipped.csv`` (path, reason: the files that could not be read; header only when none). Every file is written
atomically; nothing is written outside OUT, and no input file is ever overwritten (OUT may be INPUT).

Interrupted runs: while it runs, ``OUT/.bt_monai_infer_progress.csv`` records each finished slice (after its
mask is written, flushed at once) with a fingerprint of the run (both networks' weights, threshold, gating,
min_component_px, preprocessing, input folder). Run the same command again after a crash or a kill and it
continues: slices already recorded (same fingerprint, mask present, input file unchanged) are not predicted
again, ``predictions.csv`` comes out complete and in the same order as an uninterrupted run's, and the record
is removed at the end. ``overwrite=True`` (``--overwrite``) starts afresh instead; so does any change of
weights or settings. A finished run leaves no record: running it again predicts everything again. The
record is locked while a run uses it, so two runs into the same OUT at the same time are refused.

Many processes: under ``torchrun --nproc_per_node N -m bt_monai infer ...`` each rank predicts one contiguous
share of the slices (:func:`bt_monai.utils.distributed.block_of`) and writes its own masks; rank 0 gathers the
rows and writes ``predictions.csv`` and ``skipped.csv``, the same files as one process writes. Each rank
records its finished slices in its own journal (rank 0: the file above, rank r:
``.bt_monai_infer_progress.rank<r>.csv``); a run again, with any number of processes, reuses what all of them
recorded.
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
from bt_monai.utils import error_summary, file_stamp, inside, relative_path, remove_stale_temporaries, write_csv
from bt_monai.utils.distributed import (
    barrier,
    broadcast_from_main,
    gather_blocks,
    init_process_group,
    is_main_process,
    rank,
    share,
    world_size,
)
from bt_monai.writers.masks import write_mask_png
from bt_monai.writers.skipped import write_skipped

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

__all__ = ["PREDICTION_COLUMNS", "PROGRESS_FILE", "InferenceSummary", "ProgressJournal", "infer_folder"]

PREDICTION_COLUMNS = ("path", "tumor_probability", "tumor_score", "tumor", "tumor_area_px")
PROGRESS_FILE = ".bt_monai_infer_progress.csv"
_RANK_PROGRESS = ".bt_monai_infer_progress.rank{}.csv"  # rank r > 0 of a torchrun run: its own journal


@dataclass
class InferenceSummary:
    slices: int = 0
    tumor_slices: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reused: int = 0  # of ``slices``: finished by an interrupted earlier run, not predicted again


def mask_names(relatives: list[Path]) -> dict[Path, Path]:
    """``masks/`` path of each input: its path without the image extension, plus ``.png``.

    Two inputs that differ only by extension (``a.tif``, ``a.png``) keep their extension in the name.
    """
    stems = {r: r.with_name(strip_image_suffix(r.name) + ".png") for r in relatives}
    counts: dict[Path, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {r: stem if counts[stem] == 1 else r.with_name(r.name + ".png") for r, stem in stems.items()}


def _input_state(path: str | os.PathLike) -> tuple[str, ...]:
    """The journal's cells for an input file: its :func:`~bt_monai.utils.file_stamp` (size, modification time)
    as text; a slice whose file changed since (or is gone) is predicted again."""
    return tuple(str(value) for value in file_stamp(path) or ("", ""))


def _progress_path(output: Path, index: int) -> Path:
    return output / (PROGRESS_FILE if index == 0 else _RANK_PROGRESS.format(index))


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

    def finished(self, *others: Path) -> dict[str, list[str]]:
        """The slices recorded by an earlier run with this fingerprint: ``{path: row}`` (the last row wins).

        ``others``: more journals of that run to read after this one (its other ranks', under torchrun).
        """
        assert self._file is not None
        self._file.seek(0)
        texts = [self._file.read()]
        for path in others:
            try:
                texts.append(path.read_text(encoding="utf-8", errors="surrogateescape"))
            except FileNotFoundError:
                pass
        rows = {}
        for text in texts:
            if not text.startswith(self.header):
                continue
            complete = text[len(self.header) :]
            complete = complete[: complete.rfind("\n") + 1]  # a line cut short by a kill is not a record
            rows.update(
                (row[0], row) for row in csv.reader(io.StringIO(complete)) if len(row) == len(PREDICTION_COLUMNS) + 3
            )
        return rows

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
    Under torchrun every rank calls it alike and each predicts its share (see module docstring); every rank
    returns the summary of the whole run.
    """
    init_process_group(getattr(predictor, "device", None))  # a torchrun launch: join its group (else nothing)
    source, output = Path(source).expanduser(), Path(output).expanduser()
    inputs = [p for p in discover_images(source) if not inside(p, output / "masks")]  # our own outputs
    relatives = {p: relative_path(p, source) for p in inputs}
    names = {r.as_posix(): m.as_posix() for r, m in mask_names([Path(r) for r in relatives.values()]).items()}
    input_set = {os.path.realpath(p) for p in inputs}
    output.mkdir(parents=True, exist_ok=True)
    fingerprint = f"{predictor.fingerprint()} {os.path.realpath(source)}"
    summary, rows = InferenceSummary(), {}

    with ProgressJournal(_progress_path(output, rank()), fingerprint) as journal:
        if is_main_process():  # the other ranks wait at the broadcast: nothing of theirs is on disk yet
            rows = _resume(journal, output, relatives, names, overwrite)
        rows = broadcast_from_main(rows)
        if not is_main_process():
            journal.restart()  # rank 0 took over what it held
        summary.reused = len(rows)

        def skip(path: str, error: Exception) -> None:
            summary.skipped.append((relative_path(path, source), error_summary(error)))
            progress.update()

        todo = [p for p in inputs if relatives[p] not in rows]
        mine = share(todo, batch_size)  # all of them for one process
        done = len(inputs) - len(todo)
        shown = None if is_main_process() else True  # one progress bar: rank 0's
        progress = tqdm(total=done + len(mine), initial=done, desc="slices", unit="slice", disable=shown)

        def write(prediction, relative: str, row: tuple) -> None:
            # mask first, then its journal line: a line in the journal always has its mask on disk
            write_mask_png(output / "masks" / names[relative], prediction.mask)
            journal.append([*row, names[relative], *_input_state(prediction.path)])
            progress.update()

        # One writer thread, in order, overlaps PNG encoding with the networks; a bounded queue keeps memory flat.
        fresh: dict[str, tuple] = {}
        with ThreadPoolExecutor(1, thread_name_prefix="bt_monai-write") as writer:
            pending: deque = deque()
            for prediction in predictor.predict_paths(mine, batch_size, on_error=skip):
                relative = relatives[Path(prediction.path)]
                if os.path.realpath(output / "masks" / names[relative]) in input_set:
                    raise RuntimeError(f"refusing to overwrite the input {output / 'masks' / names[relative]}")
                probability, score = f"{prediction.tumor_probability:.6f}", f"{prediction.tumor_score:.6f}"
                row = (relative, probability, score, str(prediction.tumor), str(prediction.tumor_area_px))
                pending.append(writer.submit(write, prediction, relative, row))
                fresh[relative] = row
                while len(pending) > 2 * batch_size:
                    pending.popleft().result()  # raises a write error here, in order
            while pending:
                pending.popleft().result()
        progress.close()
        skipped = []
        for share_rows, share_skipped in gather_blocks([(fresh, summary.skipped)]):  # rank order: input order
            rows.update(share_rows)
            skipped += share_skipped
        summary.skipped = skipped
        ordered = [rows[relatives[p]] for p in inputs if relatives[p] in rows]  # the inputs' order, as uninterrupted
        summary.slices = len(ordered)
        summary.tumor_slices = sum(int(row[PREDICTION_COLUMNS.index("tumor")]) for row in ordered)
        if is_main_process():
            write_csv(output / "predictions.csv", PREDICTION_COLUMNS, ordered)
            write_skipped(output, summary.skipped)  # always: an earlier run's list never survives
        barrier()  # predictions.csv is whole: now every rank's record may go
        journal.remove()
    return summary


def _resume(journal: ProgressJournal, output: Path, relatives: dict, names: dict, overwrite: bool) -> dict:
    """The rows of the slices an interrupted earlier run finished, checked; the journal made ready for this run.

    Rank 0's work (or the one process's). Reads this journal and any other rank's of that run (under torchrun,
    with any number of processes); a row counts when its mask is there and its input file unchanged. The
    journal is kept as it is when it alone holds them, else rewritten with them, and other ranks' journals
    that no rank of this run owns are removed: the records survive one more kill either way.
    """
    remove_stale_temporaries(output)  # killed runs' half-written reports and masks
    remove_stale_temporaries(output / "masks", recursive=True)
    others = sorted(p for p in output.glob(_RANK_PROGRESS.format("*")) if p != journal.path)
    by_relative = {r: p for p, r in relatives.items()}
    rows, lines = {}, []
    for row in ({} if overwrite else journal.finished(*others)).values():
        path, mask, state = row[0], row[len(PREDICTION_COLUMNS)], tuple(row[len(PREDICTION_COLUMNS) + 1 :])
        if path in by_relative and names[path] == mask and (output / "masks" / mask).is_file():
            if _input_state(by_relative[path]) == state:  # the same file as then
                rows[path] = tuple(row[: len(PREDICTION_COLUMNS)])
                lines.append(row)
    if others:  # their records move into this journal: their owners (if any run now) start theirs afresh
        journal.restart()
        for line in lines:
            journal.append(line)
        owned = {_progress_path(output, index) for index in range(world_size())}
        for path in others:
            if path not in owned:
                path.unlink(missing_ok=True)
    elif overwrite or not rows:
        journal.restart()
    return rows
