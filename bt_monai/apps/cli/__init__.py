"""Command line: ``bt-monai <command> ...`` (also ``python -m bt_monai``).

- :mod:`~bt_monai.apps.cli.parser`: the commands and their options;
- :mod:`~bt_monai.apps.cli.options`: the model options, built from :class:`bt_monai.inferers.PredictorSettings`,
  and the predictor they make;
- :mod:`~bt_monai.apps.cli.commands`: what each command does;
- :mod:`~bt_monai.apps.cli.exits`: the exit statuses of every command and the one place errors become messages.

Importing it is cheap (no torch, no MONAI), so ``bt-monai --help`` answers at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from bt_monai.apps.cli.exits import EXIT_STATUSES, ExitStatus, UserError, run_command
from bt_monai.apps.cli.parser import build_parser

__all__ = ["EXIT_STATUSES", "ExitStatus", "UserError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the command, return its exit status."""
    args = build_parser().parse_args(argv)
    # A blank slice (one value everywhere) scales to zeros; MONAI warns about it on every such slice.
    warnings.filterwarnings("ignore", message=r"Divide by zero \(a_min == a_max\)")
    return run_command(args.func, args)
