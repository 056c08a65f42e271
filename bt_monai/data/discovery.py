"""Find slices on disk: datasets in the LGG ``kaggle_3m`` layout, and plain folders of images.

kaggle_3m layout: ``ROOT/<patient>/<patient>_<n>.tif`` with its mask ``<patient>_<n>_mask.tif``; slice
numbers are 1-based and sort numerically. A slice is "tumor" when its mask has any non-zero pixel.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bt_monai.data.pixels import slice_format, strip_image_suffix
from bt_monai.utils import error_summary

__all__ = [
    "DatasetError",
    "SliceRecord",
    "discover_kaggle3m",
    "discover_images",
    "is_mask_file",
    "load_truth_mask",
    "mask_has_tumor",
    "mask_path_for",
    "patient_id_from_name",
    "patient_id_of",
    "slice_problem",
]

logger = logging.getLogger(__name__)

_MASK_RE = re.compile(r"_mask(\.[^.]+)+$", re.IGNORECASE)
_SLICE_NAME = re.compile(r"^(?P<patient>.+)_\d+$")
_SLICE_RE = re.compile(r"^(?P<stem>.+)_(?P<index>\d+)(?P<suffix>(\.[^.]+)+)$")


class DatasetError(ValueError):
    """A dataset folder that cannot be used as given; the message names the path and what to do."""


@dataclass(frozen=True)
class SliceRecord:
    """One slice of a patient: its image, its mask, and whether the mask shows tumor."""

    image: str
    mask: str
    patient_id: str
    slice_index: int
    tumor: int


def is_mask_file(path: str | os.PathLike) -> bool:
    """True for kaggle_3m mask files (``..._mask.tif`` and the like)."""
    return bool(_MASK_RE.search(Path(path).name))


def mask_has_tumor(mask_path: str | os.PathLike, loader: Callable | None = None) -> bool:
    """Whether any pixel of the mask file is non-zero (``loader``: a :class:`SliceLoader` to reuse)."""
    if loader is None:
        from bt_monai.data.readers import SliceLoader

        loader = SliceLoader()
    return bool(np.asarray(loader(mask_path)).any())


def load_truth_mask(mask_path: str | os.PathLike, loader: Callable | None = None) -> np.ndarray:
    """A ground-truth mask file as a bool array ``(H, W)`` (rows, columns: the layout of a prediction's mask).

    A pixel is tumor when any channel is above 0 (255, 1 or 128 all count), as
    :class:`bt_monai.transforms.BinarizeMask` decides for training. ``loader``: a :class:`SliceLoader` to reuse
    (it reads ``(C, W, H)``, MONAI's axis order); any reading error is raised, naming the file.
    """
    if loader is None:
        from bt_monai.data.readers import SliceLoader

        loader = SliceLoader()
    return (np.asarray(loader(mask_path)) > 0).any(0).T


def mask_path_for(image: str | os.PathLike) -> Path:
    """The kaggle_3m mask file of an image: ``<name>_mask`` plus the image's extension, beside it."""
    image = Path(image)
    stem = strip_image_suffix(image.name)
    return image.with_name(stem + "_mask" + image.name[len(stem) :])


def patient_id_of(item: Mapping, patient_key: str = "patient_id", image_key: str = "image") -> str:
    """The patient of one datalist item: its ``patient_key``, else taken from the image's file name.

    Datalists made by bt_monai carry ``patient_id``; MONAI Label's carry only ``image`` and ``label``, so
    there a kaggle_3m name ``<patient>_<n>.tif`` gives ``<patient>``, and any other name counts as its own
    patient (per-slice Dice).
    """
    if patient_key in item:
        return str(item[patient_key])
    image = item.get(image_key)
    source = getattr(image, "meta", {}).get("filename_or_obj") if image is not None else None
    if not source:
        raise KeyError(f"no {patient_key!r} in the batch and no image file name to take the patient from")
    return patient_id_from_name(source)


def patient_id_from_name(path: str) -> str:
    """``<patient>`` of a kaggle_3m slice file ``<patient>_<n>.<ext>``; any other file name is its own patient."""
    stem = strip_image_suffix(Path(str(path)).name)
    match = _SLICE_NAME.match(stem)
    return match["patient"] if match else stem


def _unreadable(role: str, path: str | os.PathLike, error: Exception) -> str:
    return f"{role} {Path(path).name} unreadable: {error_summary(error)}"


def _inspect_pair(image, mask, loader: Callable, check_image: bool = True) -> tuple[str | None, int]:
    """``(problem or None, tumor)`` of an image/mask pair, reading each file once."""
    if not Path(mask).is_file():
        return f"no mask file {Path(mask).name} beside it", 0
    try:
        label = loader(mask)
    except Exception as e:
        return _unreadable("mask", mask, e), 0
    if check_image:
        try:
            image_shape = tuple(loader(image).shape[1:])
        except Exception as e:
            return _unreadable("image", image, e), 0
        if image_shape != tuple(label.shape[1:]):
            (mw, mh), (iw, ih) = label.shape[1:], image_shape
            return f"mask is {mw}x{mh} pixels but the image {iw}x{ih}", 0
    return None, int(bool(label.any()))


def slice_problem(image: str | os.PathLike, mask: str | os.PathLike, loader: Callable | None = None) -> str | None:
    """Why an image/mask pair cannot be used for training or evaluation, or None when it can.

    Both files must exist and read as 2D slices with finite values (see :class:`SliceLoader`), and have the
    same width and height. A mask may hold any values: non-zero is tumor (``BinarizeMask``).
    """
    if loader is None:
        from bt_monai.data.readers import SliceLoader

        loader = SliceLoader()
    return _inspect_pair(image, mask, loader)[0]


def discover_kaggle3m(
    root: str | os.PathLike, skipped: list[tuple[str, str]] | None = None, check_images: bool = True
) -> list[SliceRecord]:
    """All usable slices of a kaggle_3m-style dataset, ordered by patient, then slice number.

    A slice that cannot be used (no mask, unreadable image or mask, sizes that differ: see
    :func:`slice_problem`) is left out with one warning naming the file and the reason; ``(path, reason)``
    is also appended to ``skipped`` when given. ``check_images=False`` reads only the masks (faster; the
    images are then checked when they are loaded). Two slices with the same number are both kept.
    Raises :class:`DatasetError` (naming the path) when ``root`` is missing or holds no usable slice.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root} (give the folder that holds one folder per patient)")
    from bt_monai.data.readers import SliceLoader  # the one reader path, shared with training

    loader = SliceLoader()
    records: list[SliceRecord] = []
    problems: list[tuple[str, str]] = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        slices = []
        for image in patient_dir.iterdir():
            if not image.is_file() or is_mask_file(image) or slice_format(image) is None:
                continue
            match = _SLICE_RE.match(image.name)
            if match is None:
                problems.append((str(image), "name does not end in _<slice number> (kaggle_3m: <patient>_<n>.tif)"))
                continue
            slices.append((int(match["index"]), image.name, image))
        for index, _, image in sorted(slices):
            mask = mask_path_for(image)
            problem, tumor = _inspect_pair(image, mask, loader, check_images)
            if problem is not None:
                problems.append((str(image), problem))
                continue
            records.append(SliceRecord(str(image), str(mask), patient_dir.name, index, tumor))
    for path, reason in problems:
        logger.warning("skipping %s: %s", path, reason)
    if skipped is not None:
        skipped.extend(problems)
    if not records:
        detail = f" ({len(problems)} slice(s) skipped, e.g. {problems[0][0]}: {problems[0][1]})" if problems else ""
        raise DatasetError(
            f"no usable slices found in {root}: expected one folder per patient holding <patient>_<n>.tif "
            f"and <patient>_<n>_mask.tif files{detail}"
        )
    return records


def discover_images(root: str | os.PathLike) -> list[Path]:
    """Image slices for inference: ``root`` itself if it is a file, else every slice file below it.

    Any nesting; mask files are not inputs; symlinked folders are followed, each real folder once (a
    symlink loop ends there). Sorted by folder, then slice number where the name ends in one, then name.
    """
    root = Path(root).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"input not found: {root}")

    def order(path: Path) -> tuple:
        match = _SLICE_RE.match(path.name)
        return (
            str(path.parent),
            match["stem"] if match else path.stem,
            int(match["index"]) if match else -1,
            path.name,
        )

    found: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        found += [
            Path(dirpath) / name
            for name in names
            if not is_mask_file(name) and slice_format(Path(dirpath) / name) is not None
        ]
    return sorted(found, key=order)
