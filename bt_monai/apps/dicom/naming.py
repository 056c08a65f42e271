"""Series folder names in OUT: made from DICOM attributes, safe, one per series, never over someone else's folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bt_monai.apps.dicom_input import SERIES_MARKER, read_marker
from bt_monai.data.dicom import DicomSeries
from bt_monai.utils import inside, safe_name

__all__ = ["SERIES_OUTPUTS", "claim_folder_name", "holds_only_outputs_of", "series_folder_name"]

SERIES_OUTPUTS = {SERIES_MARKER, "seg.dcm", "sr.dcm", "mask.nii.gz", "overlays"}  # all a series folder may hold


def series_folder_name(series: DicomSeries, anonymize: bool = False) -> str:
    """``<PatientID>_<StudyDate>_S<SeriesNumber>_<Modality>_<SeriesDescription>_<uid hash>``, made safe.

    Every part comes through :func:`safe_name` (no separator, ``..``, control character or leading dot can
    survive); the hash of the SeriesInstanceUID keeps two series apart. ``anonymize`` leaves out PatientID.
    """
    a = series.attributes
    parts = [] if anonymize else [a.get("PatientID", "")]
    parts += [a.get("StudyDate", ""), f"S{a['SeriesNumber']}" if a.get("SeriesNumber") else ""]
    parts += [a.get("Modality", ""), a.get("SeriesDescription", "")]
    base = safe_name("_".join(safe_name(p, 40) for p in parts if safe_name(p, 40)), 100)
    digest = hashlib.sha1(series.uid.encode()).hexdigest()[:8]
    return f"{base}_{digest}" if base else f"series_{digest}"


def holds_only_outputs_of(folder: Path, series: DicomSeries) -> bool:
    """Whether ``folder`` is this tool's output for ``series``, holding nothing else (so it may be replaced)."""
    marker = read_marker(folder)
    return (
        marker is not None
        and marker.get("series_instance_uid") == series.uid
        and all(p.name in SERIES_OUTPUTS for p in folder.iterdir())
    )


def claim_folder_name(output: Path, series: DicomSeries, anonymize: bool, taken: set[str]) -> str:
    """The name of the series' folder in ``output``, added to ``taken`` (the names this run has used).

    Its own name (:func:`series_folder_name`), numbered ``_2``, ``_3``, ... when this run took that name already
    or a folder of that name holds something else (another series, a user's files), which is left alone.
    """
    name = series_folder_name(series, anonymize)
    base, n = name, 1
    while name in taken or ((output / name).exists() and not holds_only_outputs_of(output / name, series)):
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    if not inside(output / name, output):  # safe_name makes this impossible; checked all the same
        raise RuntimeError(f"refusing to write outside {output}: {output / name}")
    return name
