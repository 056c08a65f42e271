"""Whether ``bt-monai infer`` reads its input as DICOM, and which folders are this tool's own DICOM outputs.

Kept apart from the modules of :mod:`bt_monai.apps.dicom` (which load pydicom, highdicom and MONAI) so that
deciding how to read an input costs nothing: a folder of TIFF slices never imports the DICOM stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bt_monai.data.pixels import slice_format
from bt_monai.utils import is_temporary

__all__ = ["CACHE_FOLDER", "GENERATOR", "SERIES_MARKER", "is_own_output_dir", "looks_like_dicom_input", "read_marker"]

SERIES_MARKER = "series.json"
GENERATOR = "bt_monai DICOM inference"
CACHE_FOLDER = ".dicomweb"  # OUT/.dicomweb: the instances retrieved from a DICOMweb server


def read_marker(folder: Path) -> dict | None:
    """The ``series.json`` this tool wrote into a finished series folder, or None (not one of ours)."""
    try:
        marker = json.loads((folder / SERIES_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR else None


def is_own_output_dir(folder: Path) -> bool:
    """A folder this tool wrote (a finished series folder, a temporary one in progress, the DICOMweb cache):
    never an input."""
    return is_temporary(folder) or folder.name == CACHE_FOLDER or read_marker(folder) is not None


def looks_like_dicom_input(source: str | os.PathLike) -> bool:
    """Whether ``infer`` should read ``source`` as DICOM: a DICOM file or DICOMDIR, or a folder holding a
    DICOMDIR or at least as many DICOM files (``DICM`` preamble or ``.dcm``) as other slice images.

    This tool's own outputs (series folders, PNG overlays) do not count.
    """
    source = Path(source).expanduser()
    if source.is_file():
        return source.name.upper() == "DICOMDIR" or slice_format(source) == "dicom"
    dicom = other = 0
    for dirpath, dirnames, names in os.walk(source):
        dirnames[:] = [d for d in dirnames if not is_own_output_dir(Path(dirpath) / d)]
        for name in names:
            if name.upper() == "DICOMDIR":
                return True
            kind = slice_format(Path(dirpath) / name)  # by suffix first: image files are not opened
            dicom, other = dicom + (kind == "dicom"), other + (kind not in (None, "dicom"))
    return dicom > 0 and dicom >= other
