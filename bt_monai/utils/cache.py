"""Where bt_monai keeps files it can always rebuild (e.g. the TorchScript exports of the bundles' networks).

The folder is ``$BT_MONAI_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/bt_monai``, else ``~/.cache/bt_monai``;
read at each call, so a test or a job can point it elsewhere at any time. Deleting it only costs a rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "cache_dir"]

CACHE_DIR_ENV = "BT_MONAI_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """The cache folder (see the module docstring), or ``parts`` inside it; nothing is created."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser().joinpath(*parts)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec: absolute only
    return base.joinpath("bt_monai", *parts)
