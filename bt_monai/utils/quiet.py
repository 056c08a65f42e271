"""Silencing third-party loggers and warnings around a call whose problems the caller reports itself."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_loggers"]


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR, ignore_warnings: bool = True) -> Iterator[None]:
    """Raise the loggers ``names`` to ``level`` (and ignore Python warnings) inside the block, then restore.

    For libraries that log or warn about every non-conformant value (pydicom, highdicom) or about optional
    plugins a CPU machine lacks (MONAI's GPU codecs), when bt_monai names the problem once itself.
    """
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            if ignore_warnings:
                warnings.simplefilter("ignore")
            yield
    finally:
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)
