"""How an error is named in reports and messages: one line, so a CSV row or a summary entry stays one line."""

from __future__ import annotations

__all__ = ["error_summary"]


def error_summary(error: BaseException) -> str:
    """``"<exception type>: <first line of its message>"``, e.g. ``"ValueError: truncated file"``.

    The reason ``skipped.csv``, ``summary.json`` and warnings give for a file left out: a decoder's multi-line
    message (a traceback-like dump) is cut to its first line; an exception without a message gives its type
    and the colon alone (``"OSError: "``).
    """
    return f"{type(error).__name__}: {error}".splitlines()[0]
