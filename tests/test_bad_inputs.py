"""A corpus of broken inputs, generated here, against ``infer``, ``evaluate`` and the bundles' training.

Each case is either handled (a prediction of the right size, an evaluated slice, a trained-on slice) or
skipped with one message naming the file and the reason; no traceback reaches the user and the run goes on.
Every case is its own test id, so the pytest summary states how many cases were tried and passed.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, SUBSET, bundle_training_command, subprocess_env, tumor_slice, write_mr_dicom
from PIL import Image

from bt_monai.utils import printable

NON_UTF8 = os.fsdecode(b"scan_\xff\xfe")  # a file name Linux allows but UTF-8 cannot decode


def _truncate(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def _real_pixels(lgg_root: Path) -> tuple[Path, Path]:
    return tumor_slice(lgg_root)


# ---------------------------------------------------------------------------------------------- infer
# name -> ("ok", (height, width)) or ("skip", words of the reason)
INFER_CASES: dict[str, tuple] = {
    "zero_bytes.tif": ("skip", ""),
    "zero_bytes.png": ("skip", ""),
    "truncated.tif": ("skip", ""),
    "truncated.png": ("skip", ""),
    "truncated.dcm": ("skip", ""),
    "text_named.tif": ("skip", ""),
    "text_named.dcm": ("skip", ""),
    "one_pixel.png": ("ok", (1, 1)),
    "huge_10000.png": ("ok", (10000, 10000)),
    "rgba.tif": ("ok", (256, 256)),
    "sixteen_bit.tif": ("ok", (256, 256)),
    "nan_float.tif": ("skip", "NaN or infinite"),
    "inf_float.tif": ("skip", "NaN or infinite"),
    NON_UTF8 + ".png": ("ok", (256, 256)),
    "good.tif": ("ok", (256, 256)),
}


def make_infer_corpus(folder: Path, image: Path) -> None:
    folder.mkdir(parents=True)
    pixels = tifffile.imread(image)  # (256, 256, 3) uint8, a real LGG slice
    shutil.copy(image, folder / "good.tif")
    (folder / "zero_bytes.tif").touch()
    (folder / "zero_bytes.png").touch()
    _truncate(image, folder / "truncated.tif")
    Image.fromarray(pixels).save(folder / "full.png")
    _truncate(folder / "full.png", folder / "truncated.png")
    (folder / "full.png").unlink()
    dicom = write_mr_dicom(folder / "full.dcm", pixels[..., 1].astype(np.uint16) * 16)
    _truncate(dicom, folder / "truncated.dcm")
    dicom.unlink()
    (folder / "text_named.tif").write_text("not an image\n")
    (folder / "text_named.dcm").write_text("not a DICOM file\n")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(folder / "one_pixel.png")
    huge = np.zeros((10000, 10000), np.uint8)
    huge[4000:6000, 4000:6000] = 255
    Image.fromarray(huge).save(folder / "huge_10000.png")
    alpha = np.full(pixels.shape[:2] + (1,), 255, np.uint8)
    tifffile.imwrite(folder / "rgba.tif", np.concatenate([pixels, alpha], -1), photometric="rgb", extrasamples=[2])
    tifffile.imwrite(folder / "sixteen_bit.tif", pixels.astype(np.uint16) * 257, photometric="rgb")
    with_nan = pixels.astype(np.float32)
    with_nan[100:110, 100:110] = np.nan
    tifffile.imwrite(folder / "nan_float.tif", with_nan, photometric="rgb")
    with_inf = pixels.astype(np.float32)
    with_inf[0, 0, 1] = np.inf
    tifffile.imwrite(folder / "inf_float.tif", with_inf, photometric="rgb")
    Image.fromarray(pixels).save(folder / (NON_UTF8 + ".png"))
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a symlink loop


@pytest.fixture(scope="module")
def infer_run(lgg_root, tmp_path_factory, weight_args):
    root = tmp_path_factory.mktemp("bad_infer")
    make_infer_corpus(root / "in", _real_pixels(lgg_root)[0])
    before = {p: p.stat().st_mtime_ns for p in (root / "in").iterdir() if not p.is_symlink()}
    cmd = [sys.executable, "-m", "bt_monai", "infer", str(root / "in"), "-o", str(root / "out"), *weight_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=subprocess_env(2), timeout=600)
    read = lambda name: list(csv.DictReader((root / "out" / name).open(encoding="utf-8")))  # noqa: E731
    predicted = {r["path"]: r for r in read("predictions.csv")}
    skipped = {r["path"]: r["reason"] for r in read("skipped.csv")}
    return root, proc, predicted, skipped, before


@pytest.mark.real_data
@pytest.mark.parametrize("name", list(INFER_CASES), ids=[printable(n) for n in INFER_CASES])
def test_infer_handles_or_skips_each_bad_input(infer_run, name):
    root, proc, predicted, skipped, _ = infer_run
    outcome, detail = INFER_CASES[name]
    assert proc.returncode == 0, proc.stderr[-2000:]
    key = printable(name)
    if outcome == "ok":
        assert key in predicted and key not in skipped
        mask = np.asarray(Image.open(root / "out" / "masks" / (Path(name).stem + ".png")))
        assert mask.shape == detail and set(np.unique(mask)) <= {0, 255}
        assert int(predicted[key]["tumor_area_px"]) == int((mask > 0).sum())
    else:
        assert key in skipped and key not in predicted, skipped
        assert detail in skipped[key] and len(skipped[key]) > 10


@pytest.mark.real_data
def test_infer_over_the_corpus_prints_no_traceback_and_counts_the_skipped(infer_run):
    _, proc, predicted, skipped, _ = infer_run
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert f"{len(skipped)} file(s) skipped" in proc.stderr
    assert len(predicted) + len(skipped) == len(INFER_CASES)  # the symlink loop adds nothing, twice or forever


@pytest.mark.real_data
def test_infer_leaves_the_inputs_untouched(infer_run):
    root, _, _, _, before = infer_run
    assert {p: p.stat().st_mtime_ns for p in (root / "in").iterdir() if not p.is_symlink()} == before


# ---------------------------------------------------------------------------------------------- evaluate
# (patient, image name) -> "ok" or words of the skip reason
EVALUATE_CASES: dict[tuple[str, str], str] = {
    ("PA", "PA_1.tif"): "ok",
    ("PA", "PA_2.tif"): "ok",
    ("PA", "PA_3.tif"): "mask is 128x128 pixels but the image 256x256",
    ("PA", "PA_4.tif"): "ok",  # mask of 0 and 7: non-zero is tumor
    ("PA", "PA_5.tif"): "ok",  # PA_5 and PA_05: the same slice number twice, both evaluated
    ("PA", "PA_05.tif"): "ok",
    ("PA", "PA_6.tif"): "image PA_6.tif unreadable",  # zero bytes
    ("PA", "PA_7.tif"): "image PA_7.tif unreadable",  # truncated
    ("PA", "PA_8.tif"): "image PA_8.tif unreadable",  # text
    ("PA", "PA_9.tif"): "NaN or infinite",
    ("PA", "PA_10.tif"): "mask PA_10_mask.tif unreadable",  # zero-byte mask
    ("PA", "PA_11.tif"): "NaN or infinite",  # NaN in the mask
    ("PB", "PB_1.tif"): "no mask file PB_1_mask.tif",  # a patient with images but no masks
    ("PB", "PB_2.tif"): "no mask file PB_2_mask.tif",
    (NON_UTF8, NON_UTF8 + "_1.tif"): "ok",
}


def make_evaluate_corpus(root: Path, lgg_root: Path) -> None:
    source = lgg_root / SUBSET[0]
    image, mask = _real_pixels(lgg_root)
    pa, pb, pc = root / "PA", root / "PB", root / NON_UTF8
    for folder in (pa, pb, pc):
        folder.mkdir(parents=True)

    def pair(name: str, image_file: Path = image, mask_file: Path = mask, folder: Path = pa) -> None:
        shutil.copy(image_file, folder / f"{name}.tif")
        shutil.copy(mask_file, folder / f"{name}_mask.tif")

    pair("PA_1")
    pair("PA_2", source / f"{SUBSET[0]}_1.tif", source / f"{SUBSET[0]}_1_mask.tif")
    pair("PA_3")
    tifffile.imwrite(pa / "PA_3_mask.tif", np.zeros((128, 128), np.uint8))
    pair("PA_4")
    tifffile.imwrite(pa / "PA_4_mask.tif", (tifffile.imread(mask) > 0).astype(np.uint8) * 7)
    pair("PA_5")
    pair("PA_05")
    pair("PA_6")
    (pa / "PA_6.tif").write_bytes(b"")
    pair("PA_7")
    _truncate(image, pa / "PA_7.tif")
    pair("PA_8")
    (pa / "PA_8.tif").write_text("not an image\n")
    pair("PA_9")
    nan = tifffile.imread(image).astype(np.float32)
    nan[5, 5, 0] = np.nan
    tifffile.imwrite(pa / "PA_9.tif", nan, photometric="rgb")
    pair("PA_10")
    (pa / "PA_10_mask.tif").write_bytes(b"")
    pair("PA_11")
    bad_mask = tifffile.imread(mask).astype(np.float32)
    bad_mask[0, 0] = np.nan
    tifffile.imwrite(pa / "PA_11_mask.tif", bad_mask)
    shutil.copy(image, pb / "PB_1.tif")
    shutil.copy(image, pb / "PB_2.tif")
    pair(NON_UTF8 + "_1", folder=pc)
    (pa / "loop").symlink_to(root, target_is_directory=True)


@pytest.fixture(scope="module")
def evaluate_run(lgg_root, tmp_path_factory, weight_args):
    root = tmp_path_factory.mktemp("bad_evaluate")
    make_evaluate_corpus(root / "data", lgg_root)
    cmd = [sys.executable, "-m", "bt_monai", "evaluate", str(root / "data"), "-o", str(root / "out"), *weight_args]
    cmd += ["--bootstrap", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=subprocess_env(2), timeout=600)
    read = lambda name: list(csv.DictReader((root / "out" / name).open(encoding="utf-8")))  # noqa: E731
    evaluated = {Path(r["path"]).name: r for r in read("per_slice.csv")}
    skipped = {Path(r["path"]).name: r["reason"] for r in read("skipped.csv")}
    return proc, evaluated, skipped


@pytest.mark.real_data
@pytest.mark.parametrize("case", list(EVALUATE_CASES), ids=[printable(n) for _, n in EVALUATE_CASES])
def test_evaluate_handles_or_skips_each_bad_input(evaluate_run, case):
    proc, evaluated, skipped = evaluate_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected, name = EVALUATE_CASES[case], printable(case[1])
    if expected == "ok":
        assert name in evaluated and name not in skipped
    else:
        assert name in skipped and name not in evaluated, skipped
        assert expected in skipped[name]
        messages = [line for line in proc.stderr.splitlines() if line.startswith("skipping ")]
        assert sum(f"/{case[1]}: " in line for line in messages) == 1, messages  # one message per file


@pytest.mark.real_data
def test_evaluate_reads_any_nonzero_mask_value_as_tumor(evaluate_run):
    _, evaluated, _ = evaluate_run
    assert evaluated["PA_4.tif"]["tumor_true"] == "1"
    assert evaluated["PA_4.tif"]["true_area_px"] == evaluated["PA_1.tif"]["true_area_px"]


@pytest.mark.real_data
def test_evaluate_over_the_corpus_prints_no_traceback_and_counts_the_skipped(evaluate_run):
    proc, evaluated, skipped = evaluate_run
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert f"{len(skipped)} file(s) skipped" in proc.stderr
    assert len(evaluated) + len(skipped) == len(EVALUATE_CASES)


# ---------------------------------------------------------------------------------------------- training
TRAINING_BAD = {
    "zero_bytes": "unreadable",
    "truncated": "unreadable",
    "text_named": "unreadable",
    "nan_float": "NaN or infinite",
    "mask_size": "mask is 32x32 pixels but the image 64x64",
    "zero_byte_mask": "unreadable",
    "no_mask": "no mask file",
}
TRAINING_OK = ("one_pixel", "huge_10000", "rgba", "sixteen_bit", "mask_values_0_7", "duplicate_number")


def make_training_corpus(dataset: Path, patient: str) -> dict[str, Path]:
    """Bad and odd slices added to one patient of a synthetic dataset; returns case -> image path."""
    folder = dataset / patient
    # The valid cases copy a tumor slice, so that the patient's tumor burden (which the split follows) rises.
    mask = next(m for m in sorted(folder.glob("*_mask.tif")) if tifffile.imread(m).any())
    image = mask.with_name(mask.name.replace("_mask", ""))
    pixels, truth = tifffile.imread(image), tifffile.imread(mask)
    cases: dict[str, Path] = {}
    stem = folder.name

    def add(case: str, number: int, suffix: str = ".tif") -> tuple[Path, Path]:
        cases[case] = folder / f"{stem}_{number}{suffix}"
        return cases[case], folder / f"{stem}_{number}_mask{suffix}"

    i, m = add("zero_bytes", 101)
    i.touch()
    shutil.copy(mask, m)
    i, m = add("truncated", 102)
    _truncate(image, i)
    shutil.copy(mask, m)
    i, m = add("text_named", 103)
    i.write_text("not an image\n")
    shutil.copy(mask, m)
    i, m = add("nan_float", 104)
    tifffile.imwrite(i, np.where(pixels > 0, np.nan, 0).astype(np.float32), photometric="rgb")
    shutil.copy(mask, m)
    i, m = add("mask_size", 105)
    shutil.copy(image, i)
    tifffile.imwrite(m, np.zeros((32, 32), np.uint8))
    i, m = add("zero_byte_mask", 106)
    shutil.copy(image, i)
    m.touch()
    i, _ = add("no_mask", 107)
    shutil.copy(image, i)
    i, m = add("one_pixel", 108, ".png")
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(i)
    Image.fromarray(np.full((1, 1), 255, np.uint8)).save(m)
    i, m = add("huge_10000", 109, ".png")
    huge = np.zeros((10000, 10000), np.uint8)
    huge[3000:7000, 3000:7000] = 255
    Image.fromarray(huge).save(i)
    Image.fromarray(huge).save(m)
    i, m = add("rgba", 110)
    tifffile.imwrite(i, np.concatenate([pixels, pixels[..., :1]], -1), photometric="rgb", extrasamples=[2])
    shutil.copy(mask, m)
    i, m = add("sixteen_bit", 111)
    tifffile.imwrite(i, pixels.astype(np.uint16) * 257, photometric="rgb")
    shutil.copy(mask, m)
    i, m = add("mask_values_0_7", 112)
    shutil.copy(image, i)
    tifffile.imwrite(m, (truth > 0).astype(np.uint8) * 7)
    cases["duplicate_number"] = folder / f"{stem}_01.tif"  # slice number 1 again
    shutil.copy(image, cases["duplicate_number"])
    shutil.copy(mask, folder / f"{stem}_01_mask.tif")
    return cases


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    from test_bundles import copy_bundle

    from bt_monai.data import make_datalist, make_synthetic_kaggle3m

    root = tmp_path_factory.mktemp("bad_training")
    # The corpus changes its patient's tumor burden, hence the split: take a patient that the training run
    # reads (its training or validation split), not a test patient.
    for attempt in range(5):
        dataset = make_synthetic_kaggle3m(root / f"data{attempt}", 5, 6, size=64, seed=1)
        patient = sorted(p.name for p in dataset.iterdir() if p.is_dir())[attempt]
        cases = make_training_corpus(dataset, patient)
        datalist = make_datalist(dataset, 0.2, 0.2)  # what the bundle's training builds from the folder
        if patient not in datalist["metadata"]["patients"]["test"]:
            break
    else:
        pytest.fail("every synthetic patient given the corpus became a test patient")
    bundle = copy_bundle("brain_tumor_segmentation", root)
    cmd = bundle_training_command(bundle, dataset, "--max_epochs", "1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(2), timeout=600, cwd=REPO)
    read = {e["image"] for split in ("training", "validation") for e in datalist[split]}  # the slices training reads
    return proc, cases, bundle, read


@pytest.mark.parametrize("case", list(TRAINING_BAD))
def test_training_skips_each_bad_slice_with_one_message(training_run, case):
    proc, cases, _, read = training_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(cases[case]) not in read
    log = proc.stdout + proc.stderr
    lines = [line for line in log.splitlines() if f"skipping {cases[case]}:" in line]
    assert len(lines) == 1 and TRAINING_BAD[case] in lines[0], lines


@pytest.mark.parametrize("case", TRAINING_OK)
def test_training_uses_each_odd_but_valid_slice(training_run, case):
    proc, cases, _, read = training_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping {cases[case]}" not in proc.stdout + proc.stderr
    assert str(cases[case]) in read  # discovered, kept, and in a split the training run reads


def test_training_over_the_corpus_ends_with_a_model_and_no_traceback(training_run):
    proc, _, bundle, _ = training_run
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (bundle / "models" / "model.pt").is_file()
