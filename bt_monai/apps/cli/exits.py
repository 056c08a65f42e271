"""The exit statuses of every ``bt-monai`` command, in one table, and the one place errors become messages."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum

__all__ = ["EXIT_STATUSES", "ExitStatus", "UserError", "os_error_message", "run_command"]


class ExitStatus(IntEnum):
    """What a ``bt-monai`` command's exit status means (the README's table is :data:`EXIT_STATUSES`)."""

    DONE = 0
    INCOMPLETE = 1
    REFUSED = 2
    INTERRUPTED = 130


EXIT_STATUSES = {
    ExitStatus.DONE: "done: every input was processed (unreadable files are listed in skipped.csv)",
    ExitStatus.INCOMPLETE: "the run finished, but its result is incomplete: no readable slice or series was found, "
    "or a DICOM study, series or store failed, or a federated site failed (the messages and summary.json say "
    "which)",
    ExitStatus.REFUSED: "refused or stopped with nothing more done: an option, a setting, a bundle, a weights "
    "file, a dataset or input that cannot be used, an output that would overwrite something of yours, or an "
    "operating-system error (disk full, permission); the message names the file or setting and what to do",
    ExitStatus.INTERRUPTED: "interrupted (Ctrl-C): run the same command again to continue where it stopped",
}
"""Exit status -> its meaning, for every command (argparse's own usage errors exit 2 as well)."""


class UserError(Exception):
    """A problem the user can fix (a path, a setting); printed as one line, exit status 2."""


def _refused_errors() -> tuple[type[BaseException], ...]:
    from bt_monai.bundle import WeightsError  # standard library only: cheap

    return (UserError, ValueError, WeightsError)  # DatasetError is a ValueError; OSError: see run_command


_RUN_AGAIN = "run the same command again"
_WHAT_TO_DO = {  # errno -> (what happened, what to do); EACCES / EPERM depend on reading or writing
    errno.ENOSPC: ("no space left on device", f"free space and {_RUN_AGAIN}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space (or have the quota raised) and {_RUN_AGAIN}"),
    errno.EROFS: ("read-only file system", f"choose an output folder on a writable disk and {_RUN_AGAIN}"),
}
_WRITING_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # these never come from reading


def os_error_message(error: OSError, outputs: Sequence[str | os.PathLike] = (), resumable: bool = False) -> str:
    """One line for an operating-system error: what failed (reading or writing which file) and what to do.

    ``outputs``: the command's output file or folder (a failing path inside one was being written);
    ``resumable``: the command continues where it stopped (``infer``), so the line says that finished work is
    kept. The path of a temporary (:func:`bt_monai.utils.files.atomic_write`) is named as its target. An error
    raised with a message of bt_monai's own (no file name) keeps that message.
    """
    from pathlib import Path

    from bt_monai.utils.files import final_path, inside  # standard library only: cheap

    if error.filename is None:
        return str(error)
    path = final_path(os.fsdecode(error.filename))
    writing = error.errno in _WRITING_ONLY or any(inside(Path(path), Path(o)) for o in outputs)
    verb = "writing" if writing else "reading"
    kept = " (finished slices are kept)" if resumable and writing else ""
    if error.errno in _WHAT_TO_DO:
        happened, to_do = _WHAT_TO_DO[error.errno]
    elif error.errno in (errno.EACCES, errno.EPERM):
        happened = "permission denied"
        to_do = (
            f"make the output folder writable for you (or choose another) and {_RUN_AGAIN}"
            if writing
            else f"make it readable for you (or move it out of the input) and {_RUN_AGAIN}"
        )
    else:  # anything else: the system's own words, and the file
        happened, to_do = (error.strerror or type(error).__name__).lower(), f"fix that and {_RUN_AGAIN}"
    return f"{verb} {path}: {happened}; {to_do}{kept}"


def _outputs(args: argparse.Namespace | None) -> list[str]:
    """What a command writes (``--output``, ``bundle copy``'s destination): paths inside were being written."""
    return [str(value) for name in ("output", "destination") if (value := getattr(args, name, None))]


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; map what it raises to the table's status, with one ``error: ...`` line on stderr."""
    try:
        return int(command(args))
    except KeyboardInterrupt:
        print(f"\ninterrupted: {EXIT_STATUSES[ExitStatus.INTERRUPTED].split(': ', 1)[1]}", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except OSError as e:  # disk full, permission, read-only: the file, and what to do
        resumable = getattr(args, "command", None) == "infer"
        print(f"error: {os_error_message(e, _outputs(args), resumable)}", file=sys.stderr)
        return ExitStatus.REFUSED
    except _refused_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.REFUSED
