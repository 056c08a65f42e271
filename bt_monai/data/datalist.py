"""Patient-level train/validation/test split, written as a MONAI-style JSON datalist.

Entry keys: ``image`` (slice path), ``label`` (mask path: MONAI's key for a segmentation target),
``tumor`` (0/1, the slice's detection target), ``patient_id``, ``slice_index``.
The file also has a ``test`` list and a ``metadata`` block (seed, fractions, counts).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bt_monai.data.discovery import DatasetError, SliceRecord, discover_kaggle3m, slice_problem
from bt_monai.utils import atomic_write_bytes, error_summary

__all__ = [
    "check_split_sizes",
    "patients_in_split",
    "read_datalist",
    "SPLITS",
    "datalist_entry",
    "load_or_make_datalist",
    "make_datalist",
    "split_patients",
    "write_datalist",
]

SPLITS = ("training", "validation", "test")

logger = logging.getLogger(__name__)


def datalist_entry(record: SliceRecord) -> dict:
    """One datalist entry for a slice (see the module docstring for its keys)."""
    return {
        "image": record.image,
        "label": record.mask,
        "tumor": record.tumor,
        "patient_id": record.patient_id,
        "slice_index": record.slice_index,
    }


def split_patients(
    records: Sequence[SliceRecord], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[str]]:
    """Assign each patient to exactly one split, deterministically for a given ``seed``.

    Stratified by tumor burden: patients are ranked by their fraction of tumor slices, shuffled (seeded)
    within small blocks of similar burden, and dealt out along that ranking so that every split receives
    its share of low- and high-burden patients. Every split gets at least one patient when its fraction is
    non-zero and there are enough patients.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"fractions must be in [0, 1) and sum below 1, got val={val_fraction} test={test_fraction}")
    slices: dict[str, list[int]] = defaultdict(list)
    for r in records:
        slices[r.patient_id].append(r.tumor)
    patients = sorted(slices, key=lambda p: (float(np.mean(slices[p])), p))
    n = len(patients)
    fractions = {"training": 1.0 - val_fraction - test_fraction, "validation": val_fraction, "test": test_fraction}
    wanted = {s: int(round(f * n)) for s, f in fractions.items() if s != "training"}
    for s in wanted:  # a requested split never ends up empty when there are patients to spare
        if fractions[s] > 0 and wanted[s] == 0 and n >= 3:
            wanted[s] = 1
    wanted["training"] = n - sum(wanted.values())
    if wanted["training"] < 1:
        raise DatasetError(f"{n} patient(s) are too few to split into training/validation/test")

    rng = np.random.default_rng(seed)
    # Shuffle within blocks of similar burden, then deal along the burden ranking so that each split's
    # cumulative count tracks its share at every rank (a proportional staircase): every split samples
    # the whole range of tumor burden.
    block = max(1, n // min(w for w in wanted.values() if w > 0))
    order = [p for i in range(0, n, block) for p in rng.permutation(patients[i : i + block])]
    assigned: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, p in enumerate(order):
        target = max(SPLITS, key=lambda s: ((i + 1) * wanted[s] / n - len(assigned[s]), wanted[s]))
        assigned[target].append(str(p))
    return {s: sorted(v) for s, v in assigned.items()}


def make_datalist(
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    records: Sequence[SliceRecord] | None = None,
    split_file: str | os.PathLike | None = None,
) -> dict:
    """Discover a kaggle_3m dataset and split it by patient into a datalist dict (see module docstring).

    With ``split_file`` (a split record such as ``configs/lgg_split.json``, or a datalist) the patients go
    where that file puts them instead of the seeded split; a patient it does not name is refused.
    """
    records = list(records) if records is not None else discover_kaggle3m(dataset_dir)
    if split_file is None:
        split = split_patients(records, val_fraction, test_fraction, seed)
    else:
        split = {s: sorted(_named_patients(split_file, s)) for s in SPLITS}
        unnamed = sorted({r.patient_id for r in records} - {p for ps in split.values() for p in ps})
        if unnamed:
            raise DatasetError(
                f"{split_file} does not name {len(unnamed)} patient(s) of {dataset_dir} (e.g. {unnamed[0]}): "
                "give a split file that lists every patient, or leave --split out to split by seed"
            )
        present = {r.patient_id for r in records}
        split = {s: [p for p in ps if p in present] for s, ps in split.items()}
    where = {p: s for s, ps in split.items() for p in ps}
    datalist: dict = {s: [] for s in SPLITS}
    for r in records:
        datalist[where[r.patient_id]].append(datalist_entry(r))
    datalist["metadata"] = {
        "dataset_dir": str(Path(dataset_dir).expanduser().resolve()),
        "seed": seed,
        "split_file": None if split_file is None else str(Path(split_file).expanduser().resolve()),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "patients": {s: split[s] for s in SPLITS},
        "counts": {
            s: {
                "patients": len(split[s]),
                "slices": len(datalist[s]),
                "tumor_slices": sum(e["tumor"] for e in datalist[s]),
            }
            for s in SPLITS
        },
    }
    return datalist


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write ``datalist`` as JSON atomically (a temporary file renamed into place)."""
    path = Path(path).expanduser()
    atomic_write_bytes(path, (json.dumps(datalist, indent=2) + "\n").encode())
    return path


def _usable_entries(datalist: dict, source: Path) -> dict:
    """Drop (with one warning each, naming the file and the reason) entries whose files cannot be used."""
    from bt_monai.data.readers import SliceLoader

    loader = SliceLoader()
    problems: list[str] = []
    for split in SPLITS:
        kept = []
        for entry in datalist.get(split, []):
            image, label = entry.get("image"), entry.get("label")
            if isinstance(label, str):
                problem = slice_problem(image, label, loader)
            else:
                try:
                    loader(image)
                    problem = None
                except Exception as e:
                    problem = error_summary(e)
            if problem is None:
                kept.append(entry)
            else:
                logger.warning("skipping %s (%s entry of %s): %s", image, split, source, problem)
                problems.append(f"{image}: {problem}")
        datalist[split] = kept
    if not datalist.get("training"):
        example = f", e.g. {problems[0]}" if problems else ""
        raise DatasetError(f"{source}: no usable training slice is left ({len(problems)} skipped{example})")
    return datalist


def read_datalist(path: str | os.PathLike) -> dict:
    """A JSON datalist file as it is; refuses (naming the file) a missing, unreadable or training-less one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"datalist file not found: {path}")
    try:
        datalist = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(datalist, dict) or not datalist.get("training"):
        raise DatasetError(f"{path}: a datalist needs a non-empty 'training' list (and 'validation')")
    return datalist


def load_or_make_datalist(
    dataset: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict:
    """The datalist the bundles train on.

    ``dataset`` is either a kaggle_3m-style folder (discovered and split by patient, see
    :func:`make_datalist`) or a JSON datalist file (relative paths are taken from the file's folder). When
    ``dataset`` is ``demo_dir`` and does not exist yet, the synthetic demo dataset is generated there first.
    Slices that cannot be used (missing or unreadable files, mask and image of different sizes) are left out
    of either, with one warning each naming the file and the reason.
    """
    path = Path(dataset).expanduser()
    if demo_dir is not None and path == Path(demo_dir).expanduser():
        from bt_monai.data.synthetic import make_synthetic_kaggle3m

        make_synthetic_kaggle3m(path)
    if path.suffix.lower() == ".json":
        datalist = read_datalist(path)
        for split in SPLITS:
            for entry in datalist.get(split, []):
                for key in ("image", "label"):
                    if isinstance(entry.get(key), str) and not Path(entry[key]).is_absolute():
                        entry[key] = str(path.parent / entry[key])
        return _usable_entries(datalist, path)
    return make_datalist(path, val_fraction, test_fraction, seed)  # discovery already left out unusable slices


def _named_patients(split_file: str | os.PathLike, split: str) -> list[str]:
    """:func:`patients_in_split`, where an empty split is allowed."""
    try:
        return patients_in_split(split_file, split)
    except DatasetError as e:
        if "names no patient" in str(e):
            return []
        raise


def patients_in_split(split_file: str | os.PathLike, split: str) -> list[str]:
    """The patient IDs of ``split`` in a split record such as ``configs/lgg_split.json`` or a datalist.

    A split record lists ``{"patients": {split: [ids]}}``; a datalist written by ``bt_monai datalist`` lists
    entries with a ``patient_id`` under each split.
    """
    path = Path(split_file).expanduser()
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"split file not found: {path}") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    if isinstance(record.get("patients"), dict):
        patients = list(record["patients"].get(split, []))
    else:
        patients = sorted({e["patient_id"] for e in record.get(split, []) if "patient_id" in e})
    if not patients:
        raise DatasetError(f"{path} names no patient in its {split!r} split")
    return patients


def check_split_sizes(datalist: dict, processes: int, splits: Sequence[str] = ("training", "validation")) -> bool:
    """Refuse a distributed run (``processes`` ranks; training or evaluation) with a split of fewer slices than ranks.

    MONAI's ``DistributedSampler`` stops such a run from deep inside with "the dataset length is less than
    the number of participating ranks"; this names the split and what to do instead. Returns True when fine.
    """
    for split in splits:
        n = len(datalist.get(split) or [])
        if n < processes:
            raise DatasetError(
                f"the {split} split holds {n} slice(s), fewer than the {processes} processes: run with "
                f"at most {max(n, 1)} process(es) (torchrun --nproc_per_node), or give the split more patients "
                "(--val_fraction, --test_fraction, or a datalist with more entries)"
            )
    return True
