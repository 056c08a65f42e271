"""Find slices on disk: datasets in the LGG ``kaggle_3m`` layout, and plain folders of images.

kaggle_3m layout: ``ROOT/<patient>/<patient>_<n>.tif`` with its mask ``<patient>_<n>_mask.tif``; slice
numbers are 1-based and sort numerically. A slice is "tumor" when its mask has any non-zero pixel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bt_monai.data.readers import slice_format, strip_image_suffix

__all__ = [
    "DatasetError",
    "SliceRecord",
    "discover_kaggle3m",
    "discover_images",
    "is_mask_file",
    "mask_has_tumor",
    "mask_path_for",
]

_MASK_RE = re.compile(r"_mask(\.[^.]+)+$", re.IGNORECASE)
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

    def to_dict(self) -> dict:
        return asdict(self)


def is_mask_file(path: str | os.PathLike) -> bool:
    """True for kaggle_3m mask files (``..._mask.tif`` and the like)."""
    return bool(_MASK_RE.search(Path(path).name))


def mask_has_tumor(mask_path: str | os.PathLike, loader: Callable | None = None) -> bool:
    """Whether any pixel of the mask file is non-zero (``loader``: a :class:`LoadSlice` to reuse)."""
    if loader is None:
        from bt_monai.transforms.array import LoadSlice

        loader = LoadSlice()
    return bool(np.asarray(loader(mask_path)).any())


def mask_path_for(image: str | os.PathLike) -> Path:
    """The kaggle_3m mask file of an image: ``<name>_mask`` plus the image's extension, beside it."""
    image = Path(image)
    stem = strip_image_suffix(image.name)
    return image.with_name(stem + "_mask" + image.name[len(stem) :])


def discover_kaggle3m(root: str | os.PathLike) -> list[SliceRecord]:
    """All slices of a kaggle_3m-style dataset, ordered by patient, then slice number.

    Raises :class:`DatasetError` (naming the path) when ``root`` is missing, holds no patient folder with
    slices, or a slice has no mask file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root} (give the folder that holds one folder per patient)")
    from bt_monai.transforms.array import LoadSlice  # the one reader path, shared with training

    loader = LoadSlice()
    records: list[SliceRecord] = []
    missing: list[Path] = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        slices = []
        for image in patient_dir.iterdir():
            if not image.is_file() or is_mask_file(image) or slice_format(image) is None:
                continue
            match = _SLICE_RE.match(image.name)
            if match is None:
                raise DatasetError(
                    f"{image}: slice file names must end in _<slice number> (kaggle_3m layout: "
                    f"<patient>_<n>.tif with mask <patient>_<n>_mask.tif)"
                )
            slices.append((int(match["index"]), image))
        for index, image in sorted(slices):
            mask = mask_path_for(image)
            if not mask.is_file():
                missing.append(image)
                continue
            records.append(
                SliceRecord(str(image), str(mask), patient_dir.name, index, int(mask_has_tumor(mask, loader)))
            )
    if missing:
        shown = ", ".join(str(m) for m in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(
            f"{len(missing)} image(s) in {root} have no mask file (expected <image>_mask next to each): {shown}. "
            "For images without masks use inference, which needs no masks."
        )
    if not records:
        raise DatasetError(
            f"no slices found in {root}: expected one folder per patient holding <patient>_<n>.tif "
            "and <patient>_<n>_mask.tif files"
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
