"""Which series of a study to segment: the models know FLAIR.

A study holds T1, T2, FLAIR, diffusion and localizer series. The rule, one for folder and DICOMweb input:
with ``--series REGEX``, the series whose SeriesDescription or ProtocolName matches REGEX (case-insensitive,
anywhere in the text); without it, per study the MR series naming FLAIR in either attribute, or every MR
series of a study where none does. Series are given as attribute dicts (the keywords below), as a folder scan
(:attr:`DicomSeries.attributes`) and QIDO-RS both provide them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_RULE", "SeriesChoice", "compile_series_pattern", "choose_series"]

DEFAULT_RULE = "default: the MR series naming FLAIR (SeriesDescription or ProtocolName), else every MR series"
_FLAIR = re.compile(r"flair", re.IGNORECASE)


def compile_series_pattern(regex: str | None) -> re.Pattern | None:
    """``--series REGEX`` as a case-insensitive pattern (None: the default rule); ``ValueError`` if malformed."""
    if regex is None:
        return None
    try:
        return re.compile(regex, re.IGNORECASE)
    except re.error as e:
        raise ValueError(f"--series {regex!r} is not a valid regular expression: {e}") from None


def _names(attributes: dict) -> list[str]:
    return [attributes.get("SeriesDescription", "") or "", attributes.get("ProtocolName", "") or ""]


@dataclass
class SeriesChoice:
    """The outcome of the rule for a set of series: the chosen ones, the others with the reason, the rule."""

    rule: str
    chosen: list[Any] = field(default_factory=list)
    not_chosen: list[tuple[Any, str]] = field(default_factory=list)  # (series, reason)


def choose_series(
    series: list[Any],
    pattern: re.Pattern | None,
    all_modalities: bool = False,
    attributes_of: Callable[[Any], dict] = lambda s: s,
) -> SeriesChoice:
    """Apply the series rule to ``series``, in their order.

    ``attributes_of(s)`` gives a series' attributes (Modality, StudyInstanceUID, SeriesDescription,
    ProtocolName); by default the series are such dicts. ``all_modalities`` admits series that are not MR
    (the FLAIR rule still applies).
    """
    if pattern is not None:
        choice = SeriesChoice(f"--series {pattern.pattern}: SeriesDescription or ProtocolName matches")
    else:
        choice = SeriesChoice(DEFAULT_RULE)
    not_mr = "not MR (--all-modalities processes it)"
    eligible = []
    for s in series:
        modality = attributes_of(s).get("Modality", "")
        if modality == "MR" or all_modalities:
            eligible.append(s)
        else:
            choice.not_chosen.append((s, f"modality {modality or 'unknown'}, {not_mr}"))
    if pattern is not None:
        unmatched = f"not selected: SeriesDescription / ProtocolName do not match --series {pattern.pattern}"
        for s in eligible:
            if any(pattern.search(name) for name in _names(attributes_of(s))):
                choice.chosen.append(s)
            else:
                choice.not_chosen.append((s, unmatched))
        return choice
    flair_studies = {
        attributes_of(s).get("StudyInstanceUID", "")
        for s in eligible
        if any(_FLAIR.search(name) for name in _names(attributes_of(s)))
    }
    other = "not selected: another series of its study names FLAIR (--series REGEX chooses otherwise)"
    for s in eligible:
        attributes = attributes_of(s)
        names_flair = any(_FLAIR.search(name) for name in _names(attributes))
        if names_flair or attributes.get("StudyInstanceUID", "") not in flair_studies:
            choice.chosen.append(s)
        else:
            choice.not_chosen.append((s, other))
    return choice
