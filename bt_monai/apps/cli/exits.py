"""The exit statuses of every ``bt-monai`` command, in one table, and the one place errors become messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from enum import IntEnum

__all__ = ["EXIT_STATUSES", "ExitStatus", "UserError", "run_command"]


class ExitStatus(IntEnum):
    """What a ``bt-monai`` command's exit status means (the README's table is :data:`EXIT_STATUSES`)."""

    DONE = 0
    INCOMPLETE = 1
    REFUSED = 2
    INTERRUPTED = 130


EXIT_STATUSES = {
    ExitStatus.DONE: "done: every input was processed (unreadable files are listed in skipped.csv)",
    ExitStatus.INCOMPLETE: "the run finished, but its result is incomplete: no readable slice or series was found, "
    "or a DICOM study, series or store failed (the messages and summary.json say which)",
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

    return (UserError, OSError, ValueError, WeightsError)  # DatasetError is a ValueError


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; map what it raises to the table's status, with one ``error: ...`` line on stderr."""
    try:
        return int(command(args))
    except KeyboardInterrupt:
        print(f"\ninterrupted: {EXIT_STATUSES[ExitStatus.INTERRUPTED].split(': ', 1)[1]}", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except _refused_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.REFUSED
