"""The patient-level split and its JSON datalist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from bt_monai.__main__ import main
from bt_monai.data import SPLITS, SliceRecord, discover_kaggle3m, make_datalist, split_patients, write_datalist


def synthetic_records(burdens: dict[str, float], slices: int = 20) -> list[SliceRecord]:
    return [
        SliceRecord(f"/d/{p}/{p}_{i}.tif", f"/d/{p}/{p}_{i}_mask.tif", p, i, int(i <= round(b * slices)))
        for p, b in burdens.items()
        for i in range(1, slices + 1)
    ]


@pytest.fixture(scope="module")
def real_records(lgg_root):
    return discover_kaggle3m(lgg_root)


@pytest.mark.real_data
def test_no_patient_is_in_two_splits_and_every_patient_is_in_one(real_records):
    split = split_patients(real_records, seed=0)
    seen = [p for s in SPLITS for p in split[s]]
    assert len(seen) == len(set(seen)) == 62
    datalist = make_datalist("unused", records=real_records)
    patients_of = {s: {e["patient_id"] for e in datalist[s]} for s in SPLITS}
    assert not (patients_of["training"] & patients_of["validation"])
    assert not (patients_of["training"] & patients_of["test"])
    assert not (patients_of["validation"] & patients_of["test"])
    assert sum(len(datalist[s]) for s in SPLITS) == len(real_records)


@pytest.mark.real_data
def test_split_is_deterministic_for_a_seed_and_changes_with_it(real_records):
    assert split_patients(real_records, seed=3) == split_patients(list(reversed(real_records)), seed=3)
    assert split_patients(real_records, seed=3) != split_patients(real_records, seed=4)


@pytest.mark.real_data
def test_split_sizes_follow_the_fractions(real_records):
    split = split_patients(real_records, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert [len(split[s]) for s in SPLITS] == [44, 9, 9]


def test_split_is_stratified_by_tumor_burden():
    burdens = {f"low{i:02d}": 0.05 for i in range(10)} | {f"high{i:02d}": 0.8 for i in range(10)}
    for seed in range(5):
        split = split_patients(synthetic_records(burdens), val_fraction=0.2, test_fraction=0.2, seed=seed)
        for s in ("validation", "test"):
            kinds = sorted(p[:3] for p in split[s])
            assert kinds == ["hig", "hig", "low", "low"], (seed, s, split[s])


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        split_patients(synthetic_records({"a": 0.5, "b": 0.5}), val_fraction=0.4, test_fraction=0.4)


@pytest.mark.real_data
def test_datalist_json_loads_with_monai_and_has_every_key(lgg_subset, tmp_path):
    path = write_datalist(make_datalist(lgg_subset, val_fraction=0.34, test_fraction=0.0), tmp_path / "dl.json")
    entries = load_decathlon_datalist(str(path), data_list_key="training")
    assert entries and set(entries[0]) == {"image", "label", "tumor", "patient_id", "slice_index"}
    assert json.loads(path.read_text())["metadata"]["counts"]["validation"]["patients"] == 1


@pytest.mark.real_data
def test_cli_writes_the_datalist(lgg_subset, tmp_path, capsys):
    assert main(["datalist", str(lgg_subset), "--output", str(tmp_path / "dl.json"), "--test-fraction", "0.34"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "dl.json").read_text())["metadata"]["counts"]["test"]["patients"] == 1


def test_cli_reports_a_missing_dataset_without_a_traceback(tmp_path, capsys):
    assert main(["datalist", str(tmp_path / "missing"), "--output", str(tmp_path / "dl.json")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert not (tmp_path / "dl.json").exists()


@pytest.mark.real_data
def test_the_committed_lgg_split_is_what_the_code_produces(real_records):
    """configs/lgg_split.json names the test patients of every reported figure: a code change must not move them."""
    committed = json.loads((Path(__file__).resolve().parents[1] / "configs" / "lgg_split.json").read_text())
    split = split_patients(real_records, committed["val_fraction"], committed["test_fraction"], committed["seed"])
    assert split == committed["patients"]
