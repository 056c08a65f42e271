"""Per-institution datalists for federated training: one MONAI datalist per site, split by patient.

A TCGA patient ID names the institution that contributed it: ``TCGA_<site>_<case>`` (``TCGA_DU_5849`` comes
from site ``DU``). :func:`site_datalists` deals a patient-level datalist (:func:`bt_monai.data.make_datalist`,
or one that follows a recorded split such as ``configs/lgg_split.json``) out to its institutions. Each site
keeps the training and validation patients it contributed; the test patients stay outside every site (the
site files hold none) so that the federated model is scored on the same held-out patients as the others.

Sites with fewer than ``min_training_patients`` training patients are pooled into one site, named by their
codes (``CS_EZ_FG``): a site that trains on a handful of patients, or validates on none, would give FedAvg a
noisy update and an unreadable local Dice.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from bt_monai.data.discovery import DatasetError
from bt_monai.utils import atomic_write_bytes

__all__ = ["SITE_SPLITS", "institution_of", "site_datalists", "write_site_datalists"]

SITE_SPLITS = ("training", "validation")
"""The splits a site datalist holds; the test split stays with whoever scores the models."""

_TCGA_ID = re.compile(r"^TCGA_([A-Za-z0-9]+)_")


def institution_of(patient_id: str) -> str:
    """The contributing institution of a TCGA patient ID (``TCGA_DU_5849`` -> ``DU``)."""
    match = _TCGA_ID.match(patient_id)
    if match is None:
        raise DatasetError(
            f"cannot tell the institution of patient {patient_id!r}: --by-site reads it from TCGA IDs "
            "(TCGA_<site>_<case>); write one datalist per site yourself for other data"
        )
    return match.group(1)


def site_datalists(datalist: dict, min_training_patients: int = 10) -> dict[str, dict]:
    """Split ``datalist`` (``training``/``validation``/``test`` entries with ``patient_id``) by institution.

    Returns ``{site: datalist}`` with ``training`` and ``validation`` lists (a site's own patients of those
    splits), an empty ``test`` list and a ``metadata`` block (site, institutions, patients, counts). Sites with
    fewer than ``min_training_patients`` training patients are pooled into one (see the module docstring);
    a pool with no training patient at all is refused.
    """
    if min_training_patients < 1:
        raise DatasetError(f"min_training_patients must be at least 1, got {min_training_patients}")
    patients: dict[str, dict[str, set[str]]] = defaultdict(lambda: {s: set() for s in SITE_SPLITS})
    for split in SITE_SPLITS:
        for entry in datalist.get(split, []):
            patients[institution_of(entry["patient_id"])][split].add(entry["patient_id"])
    small = sorted(s for s, p in patients.items() if len(p["training"]) < min_training_patients)
    site_of = {s: s for s in patients if s not in small}
    if small:
        pooled = "_".join(small)
        site_of |= {s: pooled for s in small}
    if not any(patients[s]["training"] for s in small) and small:
        raise DatasetError(
            f"sites {', '.join(small)} have no training patient between them: lower the pooling "
            f"threshold (now {min_training_patients} training patients) so that they join a larger site"
        )
    sites: dict[str, dict] = {}
    for institution in sorted(patients):
        site = site_of[institution]
        sites.setdefault(site, {"training": [], "validation": [], "test": [], "institutions": []})
        sites[site]["institutions"].append(institution)
    for split in SITE_SPLITS:
        for entry in datalist.get(split, []):
            sites[site_of[institution_of(entry["patient_id"])]][split].append(entry)
    for site, site_list in sites.items():
        institutions = site_list.pop("institutions")
        site_list["metadata"] = {
            "site": site,
            "institutions": institutions,
            "min_training_patients": min_training_patients,
            "source": {k: datalist.get("metadata", {}).get(k) for k in ("dataset_dir", "seed", "split_file")},
            "patients": {s: sorted({e["patient_id"] for e in site_list[s]}) for s in SITE_SPLITS},
            "counts": {
                s: {
                    "patients": len({e["patient_id"] for e in site_list[s]}),
                    "slices": len(site_list[s]),
                    "tumor_slices": sum(int(e["tumor"]) for e in site_list[s]),
                }
                for s in SITE_SPLITS
            },
            "test_patients_held_out": len({e["patient_id"] for e in datalist.get("test", [])}),
        }
    return sites


def write_site_datalists(sites: dict[str, dict], output_dir: str | os.PathLike) -> list[Path]:
    """Write ``output_dir/<site>.json`` for each site; refuses to replace an existing file (names it)."""
    output_dir = Path(output_dir).expanduser()
    paths = [output_dir / f"{site}.json" for site in sites]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise DatasetError(f"{existing[0]} already exists: choose another --output folder or delete the file first")
    for path, site_list in zip(paths, sites.values(), strict=True):
        atomic_write_bytes(path, (json.dumps(site_list, indent=2) + "\n").encode())
    return paths
