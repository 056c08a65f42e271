"""A MONAI Label datastore of 2D slices: one flat folder of images, labels under ``labels/final/``.

MONAI Label's local datastore lists the files of ONE folder whose names match its extension patterns
(``MONAI_LABEL_DATASTORE_FILE_EXT``) and looks for each image's label as ``labels/<tag>/<image id>.<ext>``. A
kaggle_3m dataset (one folder per patient, masks beside their slices) does not fit: masks would be listed as
images. :func:`make_label_datastore` links the slices of chosen patients into one folder and, on request,
writes their masks as MONAI Label labels (0 background, 1 tumor: the bundle's label index).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from bt_monai.data import DatasetError, discover_images, discover_kaggle3m
from bt_monai.data.readers import strip_image_suffix
from bt_monai.utils import atomic_write_bytes

__all__ = ["LABEL_TAG", "LABEL_SUFFIXES", "make_label_datastore"]

LABEL_TAG = "final"
"""MONAI Label's tag for finished labels: the ones its training reads (``labels/final/``)."""

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
"""Image types whose masks can be imported as labels (written in the image's own format)."""


def _write_label(mask_path: str, dest: Path) -> int:
    """Write the mask at ``mask_path`` as a 0/1 uint8 label ``dest`` (TIFF or PNG); return its tumor pixels."""
    is_tiff = mask_path.lower().endswith((".tif", ".tiff"))
    mask = tifffile.imread(mask_path) if is_tiff else np.asarray(Image.open(mask_path))
    label = (mask.reshape(mask.shape[0], mask.shape[1], -1) > 0).any(-1).astype(np.uint8)
    buffer = io.BytesIO()
    if dest.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(buffer, label, compression="zlib")
    else:
        Image.fromarray(label).save(buffer, format="PNG")
    atomic_write_bytes(dest, buffer.getvalue())
    return int(label.sum())


def make_label_datastore(
    source: str | os.PathLike,
    output: str | os.PathLike,
    patients: Sequence[str] | None = None,
    labels: bool = False,
    copy: bool = False,
) -> dict:
    """Make (or add to) a MONAI Label datastore folder ``output`` from the slices under ``source``.

    Args:
        source: a kaggle_3m dataset (patient folders, ``<patient>_<n>.tif`` with ``_mask`` files), or any
            folder of slices (TIFF, PNG, JPEG, DICOM, NIfTI; any nesting; mask files are skipped).
        output: the datastore folder (``--studies`` of ``monailabel start_server``); created if missing.
        patients: only these patient folders of a kaggle_3m ``source`` (default: all).
        labels: also write each slice's kaggle_3m mask as its finished label (``labels/final/<id>.<ext>``,
            0/1 uint8, TIFF or PNG like the image): to start from known masks, or to train right away.
        copy: copy the image files instead of linking them (symbolic links to absolute paths by default).

    Returns ``{"images": n, "labels": n, "tumor_labels": n, "folder": str}``. Image ids are the file names
    without extension, so names must be unique across patient folders (kaggle_3m names are); a clash, or an
    existing different file under the same name, stops with both paths named and nothing overwritten.
    """
    source, output = Path(source).expanduser().resolve(), Path(output).expanduser()
    try:
        found = discover_kaggle3m(source)
        records = [(Path(r.image), r.mask) for r in found if not patients or r.patient_id in patients]
    except DatasetError:
        if labels or patients:
            raise  # labels and patient selection need the kaggle_3m layout; say why it is not one
        records = [(path, None) for path in discover_images(source)]
    if patients and not records:
        raise DatasetError(f"none of the patients {', '.join(patients)} found in {source}")

    seen: dict[str, Path] = {}
    for image, _ in records:
        name = image.name
        if name in seen:
            raise DatasetError(f"two slices named {name}: {seen[name]} and {image}; MONAI Label ids must be unique")
        seen[name] = image
        if labels and not name.lower().endswith(LABEL_SUFFIXES):
            raise DatasetError(f"{image}: masks can be imported as labels for TIFF and PNG slices only")

    label_dir = output / "labels" / LABEL_TAG
    label_dir.mkdir(parents=True, exist_ok=True)
    n_labels = n_tumor = 0
    for image, mask in records:
        dest = output / image.name
        if dest.is_symlink() or dest.exists():
            if not dest.resolve().samefile(image) and not (copy and dest.read_bytes() == image.read_bytes()):
                raise DatasetError(f"{dest} already exists and is not {image}: remove it or use another --output")
        elif copy:
            dest.write_bytes(image.read_bytes())
        else:
            dest.symlink_to(image.resolve())  # the file itself, not a path through linked folders
        if labels and mask is not None:
            stem = strip_image_suffix(image.name)
            n_tumor += _write_label(mask, label_dir / (stem + image.name[len(stem) :])) > 0
            n_labels += 1
    return {"images": len(records), "labels": n_labels, "tumor_labels": n_tumor, "folder": str(output)}
