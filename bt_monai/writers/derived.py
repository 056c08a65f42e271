"""What a derived DICOM object (the SEG, the SR) takes from its source series."""

from __future__ import annotations

from typing import Any

__all__ = ["DERIVED_SERIES_OFFSET", "derived_series_number"]

DERIVED_SERIES_OFFSET = {"seg": 1000, "sr": 2000}
"""A derived series is numbered its source's SeriesNumber plus this, so viewers list it beside its source."""


def derived_series_number(source_attributes: dict[str, Any], kind: str) -> int:
    """The SeriesNumber of the ``kind`` (``seg`` or ``sr``) object of a source series (IS, at most 2**31 - 1).

    A missing or unreadable source SeriesNumber counts as 0.
    """
    try:
        source = abs(int(source_attributes.get("SeriesNumber") or 0))
    except (TypeError, ValueError):
        source = 0
    return min(DERIVED_SERIES_OFFSET[kind] + source, 2**31 - 1)
