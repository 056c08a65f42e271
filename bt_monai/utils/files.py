"""Writing files safely: atomic writes, their temporaries, and names and paths that stay where they belong.

Every file bt_monai writes goes through :func:`atomic_write`: a hidden temporary beside the target, renamed
into place when complete, so a crash or a kill leaves the old file or the new one, never half of one. A
temporary is named ``.<target name>.<pid>.<random>.tmp`` (a folder too, see :func:`make_temporary_dir`), so
:func:`remove_stale_temporaries` can tell the leftovers of killed runs from the work of a run still going.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "file_stamp",
    "final_path",
    "inside",
    "is_temporary",
    "make_temporary_dir",
    "printable",
    "relative_path",
    "remove_stale_temporaries",
    "replace_folder",
    "safe_name",
    "write_csv",
]

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp$")


def safe_name(text: str, max_length: int = 80) -> str:
    """A file or folder name made from untrusted text (e.g. DICOM PatientID, SeriesDescription).

    Only ASCII letters, digits, ``.``, ``_`` and ``-`` are kept (accents are dropped, anything else becomes
    ``_``): no path separator, no control character, no ``..``, no leading dot or dash, at most
    ``max_length`` characters. The result may be empty: the caller adds something that identifies it.
    """
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"\.{2,}", ".", _UNSAFE_CHARACTERS.sub("_", text))
    return text.strip("._-")[:max_length].rstrip("._-")


def file_stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size in bytes, modification time in ns)`` of a file, or None when it cannot be read (gone, no access).

    What tells a file changed since it was last seen (an edit changes either), without reading it: ``infer``
    resumes only slices whose stamp is the one its progress journal recorded, the MONAI Label ranking keeps a
    cached probability only while the stamp holds.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to a place inside ``folder``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def relative_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """How reports name an input file: ``path`` relative to the input ``root``, with ``/`` separators.

    ``root`` may be the file itself (one slice given as INPUT): its name. A path outside ``root`` is given whole
    rather than failing: a report names every file it lists. Lexical only (no file system access, no symlink
    resolution): a file found through a symlinked folder keeps the path it was found by.
    """
    path, root = Path(path), Path(root)
    if path == root:
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def printable(cell):
    """``cell`` itself, or for text, the text with the undecodable bytes of a file name as ``\\xNN`` escapes.

    Linux file names may be any bytes; Python keeps the bytes that are not UTF-8 as lone surrogates, which
    cannot be written as UTF-8. Reports show them escaped instead.
    """
    if isinstance(cell, str):
        return cell.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return cell


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", fsync: bool = False) -> Iterator[IO]:
    """Open a temporary beside ``path`` for writing; on success rename it onto ``path`` (mode 0644).

    ``fsync``: sync the file to disk before the rename, so that even a power cut leaves an intact file (worth
    it for checkpoints; left off for per-slice outputs, where one sync per file would dominate the cost). On
    any error the temporary is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and (e.filename is None or e.filename == tmp):
            e.filename = str(path)  # a full disk fails the write itself, which names no file: name the target
        raise


def final_path(path: str | os.PathLike) -> str:
    """``path`` with each temporary folder or file of :func:`atomic_write` / :func:`make_temporary_dir` in it
    named as its target: where the file was going (``OUT/.x.png.12.ab.tmp`` -> ``OUT/x.png``), for messages."""
    parts = [(m["name"] if (m := _TEMPORARY.match(part)) else part) for part in Path(path).parts]
    return str(Path(*parts)) if parts else str(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", fsync) as f:
        f.write(data)


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temporary of :func:`atomic_write` or :func:`make_temporary_dir`."""
    return bool(_TEMPORARY.match(Path(path).name))


def make_temporary_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden folder in ``parent`` for building ``name`` before it is renamed into place.

    Named like :func:`atomic_write`'s temporaries, so :func:`remove_stale_temporaries` cleans it up after a kill.
    """
    return Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporaries (files or folders) that killed processes left in ``folder``; return them.

    Only names of :func:`atomic_write` / :func:`make_temporary_dir` whose writing process is gone are
    removed: the temporaries of a run that is still going, and every other file, are left alone. Symbolic
    links are never followed nor removed. ``recursive`` also looks into sub-folders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    folders = [Path(d) for d, _, _ in os.walk(folder)] if recursive else [folder]
    removed = []
    for parent in folders:
        for path in parent.glob(".*.tmp"):
            match = _TEMPORARY.match(path.name)
            if not match or path.is_symlink() or _alive(int(match["pid"])):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV file atomically (text cells through :func:`printable`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([printable(cell) for cell in row] for row in rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def replace_folder(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete folder ``temporary`` onto ``target``; an older ``target`` is swapped out, then removed.

    Both must be on one file system. ``target`` is never missing or half-written for longer than one rename.
    """
    temporary, target = Path(temporary), Path(target)
    old = None
    if target.exists():
        old = make_temporary_dir(target.parent, target.name)
        os.replace(target, old / "previous")
    os.replace(temporary, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
