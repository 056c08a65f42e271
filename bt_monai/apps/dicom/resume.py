"""Resumable output: when a series folder an earlier run finished is reused, and the UIDs of its SEG and SR.

Three hashes, three names:

- the predictor's **fingerprint** (:meth:`bt_monai.inferers.TumorPredictor.fingerprint`): both networks' weights
  and every setting that decides the masks;
- a series' **slices digest** (:func:`slices_digest`): the instances and frames the series had;
- the **reuse key** (:func:`reuse_key_for`): the two, :data:`OUTPUTS_VERSION`, and for a series reformatted to
  axial slices the reformat settings. A finished folder is reused when its marker holds the same reuse key; the
  SEG's and SR's UIDs are derived from it (:func:`object_uids`). A series predicted as acquired keeps the key
  (and UIDs) of earlier versions; one now reformatted gets a new key, so its outputs made in the acquisition
  plane are redone.

The marker, ``<series folder>/series.json``, is written last (:func:`publish_series`): a folder without one was
never finished. It records the reuse key under the JSON key ``"fingerprint"`` (its name since the first
version: kept, so the folders of earlier runs are still reused).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bt_monai import __version__
from bt_monai.apps.dicom_input import GENERATOR, SERIES_MARKER, read_marker
from bt_monai.data.dicom import DicomSeries
from bt_monai.utils import atomic_write_bytes, derived_uid, replace_folder

__all__ = [
    "MARKER_REUSE_KEY",
    "OUTPUTS_VERSION",
    "finished_marker",
    "object_uids",
    "publish_series",
    "reuse_key_for",
    "slices_digest",
]

OUTPUTS_VERSION = 2  # in the reuse key: folders of an earlier bt_monai (no SR, random UIDs) are redone
MARKER_REUSE_KEY = "fingerprint"  # the marker's JSON key for the reuse key (see the module docstring)


def slices_digest(series: DicomSeries) -> str:
    """SHA-256 (hex) of the series' instances and frames: new or removed instances mean redo."""
    keys = sorted(f"{f.sop_instance_uid}/{f.frame}" for f in series.frames)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def reuse_key_for(series: DicomSeries, predictor_fingerprint: str, reformat: dict | None = None) -> dict:
    """What a finished folder must have been made with to be reused: these slices, this predictor, these outputs,
    and ``reformat`` (the reformat settings, for a series predicted on axial slices; None: as acquired)."""
    key = {"slices": slices_digest(series), "models": predictor_fingerprint, "outputs": OUTPUTS_VERSION}
    if reformat is not None:
        key["reformat"] = reformat
    return key


def object_uids(series_uid: str, reuse_key: dict, kind: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the ``kind`` ("SEG" or "SR") object made for a source series.

    Derived (:func:`bt_monai.utils.derived_uid`, a UUID-derived ``2.25.`` UID) from the source series and the
    reuse key (its slices and the predictor's fingerprint): the same inputs, weights and settings give the same
    UIDs, so a re-run that stores its results again creates no duplicate on the server.
    """
    key = json.dumps(reuse_key, sort_keys=True)
    return derived_uid(GENERATOR, series_uid, key, kind, "series"), derived_uid(GENERATOR, series_uid, key, kind, "sop")


def finished_marker(folder: Path, reuse_key: dict) -> dict | None:
    """The marker of ``folder`` when an earlier run finished it with ``reuse_key`` (so it may be reused), else None.

    The marker holds the series' ``summary`` (its entry of ``summary.json``) and ``rows`` (of ``predictions.csv``).
    A folder whose SEG or SR could not be written is never reused: a re-run tries them again (a fixed header
    rule, highdicom installed since), and reports them again when they still fail.
    """
    marker = read_marker(folder) if folder.exists() else None
    if not marker or marker.get(MARKER_REUSE_KEY) != reuse_key or "rows" not in marker:
        return None
    outputs = marker.get("summary", {}).get("outputs", {})
    if outputs.get("seg_error") or outputs.get("sr_error"):
        return None
    return marker


def publish_series(
    temporary: Path, target: Path, series: DicomSeries, reuse_key: dict, summary: dict, rows: list[dict]
) -> None:
    """Write the series' marker into ``temporary`` (last: it says the folder is complete), then move the folder
    onto ``target`` (an earlier version of it is replaced)."""
    marker = {
        "generator": GENERATOR,
        "version": __version__,
        "series_instance_uid": series.uid,
        MARKER_REUSE_KEY: reuse_key,
        "summary": summary,
        "rows": rows,  # no patient name or ID here: the reports add them from the headers unless anonymized
    }
    atomic_write_bytes(temporary / SERIES_MARKER, json.dumps(marker, indent=1).encode())
    replace_folder(temporary, target)
