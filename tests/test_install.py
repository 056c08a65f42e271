"""bt_monai installed the normal way: from its wheel, non-editable, in a clean venv, run from outside the checkout.

``.ci/run`` builds the wheel, installs it into ``.venv-wheel`` (no system site packages) and sets
``BT_MONAI_WHEEL_PYTHON`` to that venv's python; in CI (``BT_MONAI_REQUIRE_WHEEL=1``) these tests fail rather
than skip without it. Locally: ``pip wheel --no-deps -w dist . && python3 -m venv .venv-wheel &&
.venv-wheel/bin/pip install dist/bt_monai-*.whl``, then ``BT_MONAI_WHEEL_PYTHON=.venv-wheel/bin/python pytest
tests/test_install.py``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import SUBSET, TINY_SPLIT, subprocess_env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_python() -> Path:
    python = os.environ.get("BT_MONAI_WHEEL_PYTHON")
    if python and Path(python).is_file():
        return Path(python)
    msg = "no wheel install to test (BT_MONAI_WHEEL_PYTHON: the python of a venv with the bt_monai wheel)"
    if os.environ.get("BT_MONAI_REQUIRE_WHEEL"):
        pytest.fail(msg + "; BT_MONAI_REQUIRE_WHEEL is set, so this is an error, not a skip")
    pytest.skip(msg)


def run(python: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python`` (or a script of its venv) with ``args``: no PYTHONPATH nor bundle root, ``env`` added."""
    env = {k: v for k, v in subprocess_env(2).items() if k not in ("PYTHONPATH", "BT_MONAI_BUNDLE_ROOT")} | (env or {})
    done = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def installed_package(python: Path, cwd: Path) -> Path:
    done = run(python, "-c", "import bt_monai, os; print(os.path.dirname(bt_monai.__file__))", cwd=cwd)
    return Path(done.stdout.strip())


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def few_slices(lgg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real slices (tumor and tumor-free) of one patient, as a plain folder."""
    folder = tmp_path_factory.mktemp("slices")
    for image in sorted((lgg_root / SUBSET[0]).glob("*_1[0-5].tif")):
        (folder / image.name).symlink_to(image)
    return folder


def test_the_wheel_is_installed_outside_the_checkout_with_the_bundles(wheel_python, tmp_path):
    package = installed_package(wheel_python, tmp_path)
    assert "site-packages" in package.parts  # the installed copy, not the checkout's bt_monai/
    assert not package.resolve().is_relative_to(REPO / "bt_monai")
    for bundle in ("brain_tumor_segmentation", "brain_tumor_classification"):
        folder = package / "shipped_bundles" / bundle
        assert (folder / "models" / "model.pt").stat().st_size > 1_000_000
        # No TorchScript export is tracked (it is made into the cache on first use): the wheel carries a
        # models/model.ts only where the checkout it was built from has one (written by ckpt_export).
        checkout = REPO / "bundle" / bundle / "models" / "model.ts"
        assert (folder / "models" / "model.ts").is_file() == checkout.is_file()
        for name in ("configs/inference.json", "configs/train.json", "configs/metadata.json", "docs/README.md"):
            assert (folder / name).is_file(), name
        assert (folder / "LICENSE").is_file()
    listed = run(wheel_python.parent / "bt-monai", "bundle", "list", cwd=tmp_path).stdout
    assert listed.count("with weights") == 2 and str(package / "shipped_bundles") in listed


def test_infer_from_the_wheel_gives_the_masks_of_the_checkout(wheel_python, few_slices, tmp_path):
    """The first ``infer`` of the wheel scripts each network without a shipped model.ts into the cache it is given;
    its outputs are those of the checkout's (editable) install."""
    package = installed_package(wheel_python, tmp_path)
    unexported = [
        bundle
        for bundle in ("brain_tumor_segmentation", "brain_tumor_classification")
        if not (package / "shipped_bundles" / bundle / "models" / "model.ts").is_file()
    ]
    cache = {"BT_MONAI_CACHE_DIR": str(tmp_path / "cache")}
    bt_monai = wheel_python.parent / "bt-monai"
    run(bt_monai, "infer", str(few_slices), "--output", str(tmp_path / "wheel"), cwd=tmp_path, env=cache)
    cached = sorted(p.name for p in (tmp_path / "cache" / "torchscript").glob("*"))
    assert len(cached) == len(unexported) and all(name.endswith(".ts") for name in cached), cached
    run(
        Path(sys.executable),
        "-m",
        "bt_monai",
        "infer",
        str(few_slices),
        "--output",
        str(tmp_path / "checkout"),
        cwd=REPO,
    )
    masks = sorted(p.relative_to(tmp_path / "wheel") for p in (tmp_path / "wheel" / "masks").rglob("*.png"))
    assert len(masks) == len(list(few_slices.iterdir())) == 6
    for mask in masks:
        assert (tmp_path / "wheel" / mask).read_bytes() == (tmp_path / "checkout" / mask).read_bytes(), mask
    rows = [list(csv.reader(open(tmp_path / name / "predictions.csv"))) for name in ("wheel", "checkout")]
    assert rows[0] == rows[1]


def test_training_a_bundle_copy_leaves_the_installed_package_unchanged(wheel_python, tiny_kaggle3m, tmp_path):
    package = installed_package(wheel_python, tmp_path)
    before = tree_digest(package)
    bt_monai = wheel_python.parent / "bt-monai"
    run(bt_monai, "bundle", "copy", "segmentation", str(tmp_path / "mine"), cwd=tmp_path)
    cmd = ["-m", "monai.bundle", "run", "training", "--bundle_root", ".", "--config_file", "configs/train.json"]
    cmd += ["--meta_file", "configs/metadata.json", "--dataset_dir", str(tiny_kaggle3m), "--max_epochs", "1"]
    cmd += ["--spatial_size", "[64,64]", "--batch_size", "4", "--num_workers", "0", *TINY_SPLIT]
    done = run(wheel_python, *cmd, cwd=tmp_path / "mine")
    assert f"best model {tmp_path / 'mine' / 'models' / 'model.pt'}" in done.stdout
    kept = list((tmp_path / "mine" / "models").glob("model.*.pt"))  # the copied weights, kept aside
    assert len(kept) == 1
    assert tree_digest(package) == before


def test_training_inside_the_installed_package_is_refused(wheel_python, tmp_path):
    package = installed_package(wheel_python, tmp_path)
    before = tree_digest(package)
    shipped = package / "shipped_bundles" / "brain_tumor_segmentation"
    cmd = [str(wheel_python), "-m", "monai.bundle", "run", "training", "--bundle_root", str(shipped)]
    cmd += ["--config_file", str(shipped / "configs" / "train.json"), "--max_epochs", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode != 0 and "bt-monai bundle copy segmentation" in done.stderr
    assert tree_digest(package) == before


def test_the_sdist_carries_both_bundles_with_their_weights(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (sdist,) = tmp_path.glob("bt_monai-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for bundle in ("brain_tumor_segmentation", "brain_tumor_classification"):
        for name in ("models/model.pt", "configs/inference.json", "docs/README.md", "LICENSE"):
            assert f"bundle/{bundle}/{name}" in names


def test_federated_simulate_from_the_wheel_runs_its_installed_client_script(wheel_python, lgg_root, tmp_path):
    """Two sites of real slices (one CS patient each: 6 training, 3 validation slices), one round."""
    import json

    package = installed_package(wheel_python, tmp_path)
    sites = []
    for name, patient in (("A", SUBSET[0]), ("B", SUBSET[1])):
        images = sorted((lgg_root / patient).glob(f"{patient}_1[0-8].tif"))
        entries = [
            {"image": str(i), "label": str(i.with_name(i.stem + "_mask.tif")), "patient_id": patient, "tumor": 1}
            for i in images
        ]
        sites.append(tmp_path / f"{name}.json")
        sites[-1].write_text(json.dumps({"training": entries[:6], "validation": entries[6:]}))
    bt_monai = wheel_python.parent / "bt-monai"
    output = tmp_path / "federated"
    cmd = ["federated", "simulate", "--sites", *map(str, sites), "--rounds", "1", "--no-cross-site"]
    done = run(bt_monai, *cmd, "--output", str(output), cwd=tmp_path)
    assert f"global model: {output / 'model.pt'}" in done.stdout
    import torch

    assert torch.load(output / "model.pt", weights_only=True)
    app = output / "job" / "bt_monai_segmentation_fedavg" / "app_A"
    assert '"bt_monai/apps/federated/client.py"' in (app / "config" / "config_fed_client.json").read_text()
    installed = package / "apps" / "federated" / "client.py"
    assert (app / "custom" / "bt_monai" / "apps" / "federated" / "client.py").read_bytes() == installed.read_bytes()
