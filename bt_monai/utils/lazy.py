"""Lazy re-exports for package ``__init__`` modules (PEP 562): a name is imported when it is first used.

A subpackage that re-exports names from heavy modules (MONAI, highdicom, scipy) stays cheap to import this way,
so a command imports only what it runs: ``bt-monai infer`` over TIFF slices never loads MONAI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``exports[name]`` (a module) on first use.

    ``exports`` maps each public name to the module that defines it, e.g. ``{"SliceLoader":
    "bt_monai.data.readers"}``. Use as ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)``.
    """

    def __getattr__(name: str) -> object:
        if name not in exports:
            # a submodule accessed as an attribute (e.g. ``bt_monai.data.readers``) is imported as usual
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
