"""``python -m bt_monai.apps.label datastore SOURCE --output STUDIES``: the same as ``bt-monai label datastore``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bt_monai.__main__ import main as bt_monai_main


def main(argv: Sequence[str] | None = None) -> int:
    return bt_monai_main(["label", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
