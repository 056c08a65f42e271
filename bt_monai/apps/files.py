"""Writing outputs safely: atomic files, and paths that never leave the output folder nor hit an input."""

from __future__ import annotations

import csv
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["atomic_write_bytes", "write_csv", "write_mask_png", "inside", "printable", "safe_name"]

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_length: int = 80) -> str:
    """A file or folder name made from untrusted text (e.g. DICOM PatientID, SeriesDescription).

    Only ASCII letters, digits, ``.``, ``_`` and ``-`` are kept (accents are dropped, anything else becomes
    ``_``): no path separator, no control character, no ``..``, no leading dot or dash, at most
    ``max_length`` characters. The result may be empty: the caller adds something that identifies it.
    """
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"\.{2,}", ".", _UNSAFE_CHARACTERS.sub("_", text))
    return text.strip("._-")[:max_length].rstrip("._-")


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to a place inside ``folder``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV file atomically."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([printable(cell) for cell in row] for row in rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def printable(cell):
    """``cell`` itself, or for text, the text with the undecodable bytes of a file name as ``\\xNN`` escapes.

    Linux file names may be any bytes; Python keeps the bytes that are not UTF-8 as lone surrogates, which
    cannot be written as UTF-8. Reports show them escaped instead.
    """
    if isinstance(cell, str):
        return cell.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return cell


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a 0/1 ``(H, W)`` mask as an 8-bit PNG of 0 and 255, atomically."""
    import io

    buffer = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
