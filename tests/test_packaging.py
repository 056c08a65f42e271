"""Where the shipped bundles are found, how a user copies one, and that training never overwrites them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bt_monai import bundle

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SEG = REPO / "bundle" / "brain_tumor_segmentation"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bt_monai", *args], capture_output=True, text=True, cwd=cwd)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundles_are_found_by_name_folder_name_or_alias():
    assert bundle.locate_bundle(name="segmentation") == SHIPPED_SEG
    for name in ("detection", "classification", "brain_tumor_classification"):
        assert bundle.locate_bundle(name) == REPO / "bundle" / "brain_tumor_classification"


def test_the_bundle_root_variable_is_read_at_each_call(tmp_path, monkeypatch):
    mine = bundle.copy_bundle("segmentation", tmp_path / "root" / "brain_tumor_segmentation")
    monkeypatch.setenv("BT_MONAI_BUNDLE_ROOT", str(tmp_path / "root"))
    assert bundle.locate_bundle(name="segmentation") == mine
    monkeypatch.delenv("BT_MONAI_BUNDLE_ROOT")
    assert bundle.locate_bundle(name="segmentation") == SHIPPED_SEG


def test_search_folders_are_looked_in_first_in_their_order_then_the_usual_places(tmp_path):
    """The MONAI Label app's lookup: its ``model/`` folder, then ``bundles_dir``, then the installed bundles."""
    model, bundles_dir = tmp_path / "app" / "model", tmp_path / "bundles"
    custom = bundle.copy_bundle("segmentation", bundles_dir / "my_unet")  # any folder name
    assert bundle.locate_bundle("my_unet", search=[model, bundles_dir]) == custom
    assert bundle.locate_bundle("segmentation", search=[model, bundles_dir]) == SHIPPED_SEG
    own = bundle.copy_bundle("segmentation", model / "brain_tumor_segmentation")
    bundle.copy_bundle("segmentation", bundles_dir / "brain_tumor_segmentation")
    assert bundle.locate_bundle("segmentation", search=[model, bundles_dir]) == own
    assert bundle.locate_bundle("brain_tumor_segmentation", search=[model, bundles_dir]) == own
    with pytest.raises(bundle.BundleNotFoundError, match=f"my_unet: no such bundle folder, not in {model}, and"):
        bundle.locate_bundle("my_unet", search=[model])


def test_an_unknown_bundle_name_says_what_would_work():
    with pytest.raises(bundle.BundleNotFoundError, match="no such bundle folder.*segmentation"):
        bundle.locate_bundle("segmentaton")


def test_a_folder_that_is_not_a_bundle_is_named(tmp_path):
    with pytest.raises(bundle.BundleNotFoundError, match=f"no {tmp_path}/configs/inference.json"):
        bundle.locate_bundle(tmp_path)


def test_bundle_list_and_path_name_the_installed_folders():
    listed = cli("bundle", "list")
    assert listed.returncode == 0
    assert str(SHIPPED_SEG) in listed.stdout and "with weights" in listed.stdout
    found = cli("bundle", "path", "classification")
    assert found.stdout.strip() == str(REPO / "bundle" / "brain_tumor_classification")


def test_bundle_copy_takes_configs_docs_license_and_weights_but_no_run_outputs(tmp_path):
    done = cli("bundle", "copy", "segmentation", str(tmp_path / "mine"))
    assert done.returncode == 0, done.stderr
    copied = {p.relative_to(tmp_path / "mine").as_posix() for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    shipped = {
        p.relative_to(SHIPPED_SEG).as_posix()
        for p in SHIPPED_SEG.rglob("*")
        if p.is_file() and p.parts[len(SHIPPED_SEG.parts)] in ("configs", "docs", "LICENSE")
    }
    assert shipped <= copied and "models/model.pt" in copied
    assert not [name for name in copied if name.startswith(("eval/", "demo_data")) or "checkpoint" in name]
    assert sha256(tmp_path / "mine" / "models" / "model.pt") == sha256(SHIPPED_SEG / "models" / "model.pt")


def test_bundle_copy_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    done = cli("bundle", "copy", "segmentation", str(tmp_path / "mine"))
    assert done.returncode == 2 and "is not an empty folder" in done.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_training_in_the_shipped_bundle_is_refused_and_changes_nothing(tmp_path):
    before = sha256(SHIPPED_SEG / "models" / "model.pt")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--bundle_root", str(SHIPPED_SEG)]
    cmd += ["--config_file", str(SHIPPED_SEG / "configs" / "train.json"), "--max_epochs", "1"]
    cmd += ["--output_dir", str(tmp_path / "eval")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert "holds the shipped weights of bt_monai: train in a copy instead" in done.stderr
    assert sha256(SHIPPED_SEG / "models" / "model.pt") == before
    assert not (SHIPPED_SEG / "demo_data").exists()
    assert not list((SHIPPED_SEG / "models").glob("model.*.pt"))


def test_a_copy_may_be_trained_and_the_shipped_folder_only_on_purpose(tmp_path):
    mine = bundle.copy_bundle("segmentation", tmp_path / "mine")
    assert bundle.refuse_shipped_ckpt_dir(mine / "models")
    assert bundle.refuse_shipped_ckpt_dir(SHIPPED_SEG / "models", overwrite_shipped=True)
    with pytest.raises(ValueError, match="True or False"):
        bundle.refuse_shipped_ckpt_dir(mine / "models", "False")


def readme_main_command() -> str:
    """The shell command of the README's "main job" block."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("The main job") :].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").strip()


def test_the_readme_main_command_trains_in_a_copy_and_leaves_tracked_files_as_they_were(tmp_path):
    command = readme_main_command()
    assert "bt-monai bundle copy segmentation runs/segmentation" in command
    name = f"runs/readme-test-{os.getpid()}"
    command = command.replace("runs/segmentation", name) + " --max_epochs 1 --output_dir eval"
    tracked = ["git", "status", "--porcelain", "--untracked-files=no"]
    before = subprocess.run(tracked, cwd=REPO, capture_output=True, text=True).stdout
    try:
        done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"best model {REPO / name / 'models' / 'model.pt'}" in done.stdout
        assert (REPO / name / "demo_data" / "README_SYNTHETIC.txt").is_file()
    finally:
        shutil.rmtree(REPO / name, ignore_errors=True)
    assert subprocess.run(tracked, cwd=REPO, capture_output=True, text=True).stdout == before
