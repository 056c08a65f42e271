"""``python -m bt_monai infer``: both models over one slice, a folder of slices, or a kaggle_3m dataset.

Outputs under OUT: ``predictions.csv`` (one row per readable slice: path relative to INPUT,
tumor_probability, tumor, tumor_area_px), ``masks/<path without extension>.png`` (0/255, at the slice's own
size) and, when some files could not be read, ``skipped.csv`` (path, reason). Every file is written
atomically; nothing is written outside OUT, and no input file is ever overwritten (OUT may be INPUT).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bt_monai.apps.files import inside, write_csv, write_mask_png
from bt_monai.data import discover_images
from bt_monai.data.readers import strip_image_suffix
from bt_monai.inferers import TumorPredictor

__all__ = ["PREDICTION_COLUMNS", "InferenceSummary", "infer_folder"]

PREDICTION_COLUMNS = ("path", "tumor_probability", "tumor", "tumor_area_px")


@dataclass
class InferenceSummary:
    slices: int = 0
    tumor_slices: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _relative(path: Path, root: Path) -> Path:
    return Path(path.name) if root.is_file() else path.relative_to(root)


def mask_names(relatives: list[Path]) -> dict[Path, Path]:
    """``masks/`` path of each input: its path without the image extension, plus ``.png``.

    Two inputs that differ only by extension (``a.tif``, ``a.png``) keep their extension in the name.
    """
    stems = {r: r.with_name(strip_image_suffix(r.name) + ".png") for r in relatives}
    counts: dict[Path, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {r: stem if counts[stem] == 1 else r.with_name(r.name + ".png") for r, stem in stems.items()}


def infer_folder(
    predictor: TumorPredictor, source: str | os.PathLike, output: str | os.PathLike, batch_size: int = 16
) -> InferenceSummary:
    """Predict every slice below ``source`` and write the outputs under ``output`` (see module docstring)."""
    source, output = Path(source).expanduser(), Path(output).expanduser()
    inputs = [p for p in discover_images(source) if not inside(p, output / "masks")]  # our own outputs
    names = mask_names([_relative(p, source) for p in inputs])
    input_set = {os.path.realpath(p) for p in inputs}
    summary, rows = InferenceSummary(), []

    def skip(path: str, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        summary.skipped.append((_relative(Path(path), source).as_posix(), reason))
        progress.update()

    progress = tqdm(total=len(inputs), desc="slices", unit="slice", disable=None)
    for prediction in predictor.predict_paths(inputs, batch_size, on_error=skip):
        relative = _relative(Path(prediction.path), source)
        mask_path = output / "masks" / names[relative]
        if os.path.realpath(mask_path) in input_set:
            raise RuntimeError(f"refusing to overwrite the input {mask_path}")
        write_mask_png(mask_path, prediction.mask)
        probability = f"{prediction.tumor_probability:.6f}"
        rows.append((relative.as_posix(), probability, prediction.tumor, prediction.tumor_area_px))
        summary.slices += 1
        summary.tumor_slices += prediction.tumor
        progress.update()
    progress.close()
    write_csv(output / "predictions.csv", PREDICTION_COLUMNS, rows)
    if summary.skipped:
        write_csv(output / "skipped.csv", ("path", "reason"), summary.skipped)
    return summary
