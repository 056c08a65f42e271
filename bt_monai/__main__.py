"""``python -m bt_monai`` and the ``bt-monai`` command: :mod:`bt_monai.apps.cli`."""

from __future__ import annotations

import sys

from bt_monai.apps.cli import UserError, build_parser, main

__all__ = ["UserError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
