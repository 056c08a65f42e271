"""Discovery: patients, numerically ordered slices, masks and tumor labels of a kaggle_3m dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import SUBSET

from bt_monai.data import DatasetError, discover_images, discover_kaggle3m, is_mask_file


@pytest.mark.real_data
def test_subset_counts_and_tumor_labels_match_the_files(lgg_subset):
    records = discover_kaggle3m(lgg_subset)
    assert sorted({r.patient_id for r in records}) == sorted(SUBSET)
    for patient in SUBSET:
        images = [p for p in (lgg_subset / patient).glob("*.tif") if not p.name.endswith("_mask.tif")]
        mine = [r for r in records if r.patient_id == patient]
        assert len(mine) == len(images)
        for r in mine:
            assert r.tumor == int(tifffile.imread(r.mask).any())


@pytest.mark.real_data
def test_slices_are_in_numeric_order_with_their_own_masks(lgg_subset):
    records = discover_kaggle3m(lgg_subset)
    for patient in SUBSET:
        indices = [r.slice_index for r in records if r.patient_id == patient]
        assert indices == list(range(1, len(indices) + 1))  # 1, 2, ..., 10, not 1, 10, 11, ...
    for r in records:
        assert r.image.endswith(f"_{r.slice_index}.tif") and r.mask.endswith(f"_{r.slice_index}_mask.tif")


@pytest.mark.real_data
def test_full_dataset_counts(lgg_root):
    records = discover_kaggle3m(lgg_root)
    assert len({r.patient_id for r in records}) == 62
    assert len(records) == 2214
    assert sum(r.tumor for r in records) == 741


@pytest.mark.real_data
def test_image_folder_discovery_skips_masks_and_other_files(lgg_subset):
    images = discover_images(lgg_subset)
    assert len(images) == len(discover_kaggle3m(lgg_subset))
    assert not any(is_mask_file(p) for p in images)
    patient = sorted(p for p in images if p.parent.name == SUBSET[0])
    assert [int(p.stem.rsplit("_", 1)[1]) for p in images if p.parent.name == SUBSET[0]] == list(
        range(1, len(patient) + 1)
    )


def test_image_folder_discovery_of_a_single_file_and_nested_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "a" / "b" / "x_2.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "a" / "b" / "x_10.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "a" / "b" / "x_2_mask.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "a" / "readme.txt").write_text("hello")
    assert [p.name for p in discover_images(tmp_path)] == ["x_2.tif", "x_10.tif"]
    assert discover_images(tmp_path / "a" / "b" / "x_2.tif") == [tmp_path / "a" / "b" / "x_2.tif"]


def test_missing_dataset_folder_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        discover_kaggle3m(tmp_path / "nope")


def test_empty_dataset_folder_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=f"no usable slices found in {tmp_path}"):
        discover_kaggle3m(tmp_path)


def test_image_without_mask_is_left_out_with_its_name_and_the_reason(tmp_path):
    (tmp_path / "P1").mkdir()
    for n in (1, 2):
        tifffile.imwrite(tmp_path / "P1" / f"P1_{n}.tif", np.zeros((4, 4, 3), np.uint8))
    tifffile.imwrite(tmp_path / "P1" / "P1_2_mask.tif", np.zeros((4, 4), np.uint8))
    skipped: list = []
    assert [Path(r.image).name for r in discover_kaggle3m(tmp_path, skipped)] == ["P1_2.tif"]
    assert skipped == [(str(tmp_path / "P1" / "P1_1.tif"), "no mask file P1_1_mask.tif beside it")]


def test_a_dataset_with_no_usable_slice_names_a_file_and_the_reason(tmp_path):
    (tmp_path / "P1").mkdir()
    tifffile.imwrite(tmp_path / "P1" / "P1_1.tif", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="P1_1.tif: no mask file"):
        discover_kaggle3m(tmp_path)


def test_synthetic_demo_dataset_is_deterministic_labelled_and_discoverable(tmp_path):
    from bt_monai.data import make_synthetic_kaggle3m

    a = make_synthetic_kaggle3m(tmp_path / "a", n_patients=2, n_slices=4, size=32, seed=5)
    b = make_synthetic_kaggle3m(tmp_path / "b", n_patients=2, n_slices=4, size=32, seed=5)
    assert "SYNTHETIC" in (a / "README_SYNTHETIC.txt").read_text()
    records = discover_kaggle3m(a)
    assert len(records) == 8 and all(r.patient_id.startswith("SYNTHETIC_") for r in records)
    assert any(r.tumor for r in records) and not all(r.tumor for r in records)
    for r in records:
        other = r.image.replace(str(a), str(b))
        assert np.array_equal(tifffile.imread(r.image), tifffile.imread(other))
