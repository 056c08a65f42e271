"""Killed runs (SIGKILL, as a crash or an out-of-memory kill would leave them): training resumes with
``--resume true`` losing at most the epoch in progress, and ``bt_monai infer`` run again completes the rest;
neither leaves a half-written file.

The kill points are random but seeded (``BT_MONAI_KILL_SEED`` picks others); every assertion is about what the
killed run had saved, read after the kill, so it holds wherever the kill lands."""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bundle_training_command, subprocess_env
from ignite.engine import Events
from PIL import Image
from test_bundles import BUNDLES, SPLIT, copy_bundle, run, workflow

from bt_monai.apps.curves import read_scalars
from bt_monai.apps.infer import PREDICTION_COLUMNS, PROGRESS_FILE, ProgressJournal, infer_folder
from bt_monai.bundle import load_weights
from bt_monai.inferers import TumorPredictor
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet
from bt_monai.utils import remove_stale_temporaries

SEED = int(os.environ.get("BT_MONAI_KILL_SEED", "8"))
ITERATION = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")


class Child:
    """A subprocess whose stdout lines are collected as they come (a thread reads them)."""

    def __init__(self, cmd: list[str], stderr: Path) -> None:
        self._stderr = stderr.open("w")
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=subprocess_env()
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 300, poll: float = 0.002) -> None:
        """Return once ``condition()`` holds; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"ended before the kill point:\n{self.output()}"
            assert time.monotonic() < deadline, "timed out before the kill point"
            time.sleep(poll)

    def kill(self) -> None:
        assert self.process.poll() is None, "the process had already ended: nothing was interrupted"
        self.process.send_signal(signal.SIGKILL)
        self.finish()
        assert self.process.returncode == -signal.SIGKILL

    def finish(self, timeout: float = 300) -> int:
        self.process.wait(timeout)
        self._reader.join(timeout)
        self._stderr.close()
        return self.process.returncode

    def output(self) -> str:
        return "".join(self.lines)[-3000:] + Path(self._stderr.name).read_text()[-3000:]


def iterations(lines: list[str]) -> list[tuple[int, int]]:
    """``(epoch, iteration)`` of every training iteration logged."""
    return [(int(m[1]), int(m[3])) for m in map(ITERATION.search, lines) if m]


def saved_progress(path: Path) -> tuple[int, int]:
    """``(epoch, iteration)`` a checkpoint's trainer state records."""
    trainer = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
    return trainer["iteration"] // trainer["epoch_length"], trainer["iteration"]


# --- training ---------------------------------------------------------------------------------------------


def test_training_killed_at_a_random_point_resumes_at_the_next_epoch_and_ends_at_the_planned_one(
    tmp_path, tiny_kaggle3m
):
    epochs, rng = 5, random.Random(SEED)
    root = copy_bundle(BUNDLES[0], tmp_path)
    models = root / "models"
    command = bundle_training_command(root, tiny_kaggle3m, "--max_epochs", str(epochs))
    killed = Child(command, tmp_path / "killed.err")
    killed.wait_until(lambda: (models / "checkpoint_latest.pt").is_file())
    per_epoch = int(ITERATION.search(next(line for line in killed.lines if ITERATION.search(line)))[4])
    target = (rng.randint(2, epochs - 2), rng.randint(1, per_epoch))  # in epoch 2 or 3, then up to 0.3 s more
    killed.wait_until(lambda: any(done >= target for done in iterations(killed.lines)))
    time.sleep(rng.uniform(0, 0.3))
    killed.kill()

    in_progress = max(epoch for epoch, _ in iterations(killed.lines))
    saved, _ = saved_progress(models / "checkpoint_latest.pt")
    assert in_progress - 1 <= saved <= in_progress  # at most the epoch in progress is lost

    resumed = Child(command + ["--resume", "true"], tmp_path / "resumed.err")
    assert resumed.finish() == 0, resumed.output()
    ran = iterations(resumed.lines)
    assert ran[0] == (saved + 1, 1)  # starts at the beginning of the epoch after the saved one
    assert sorted({epoch for epoch, _ in ran}) == list(range(saved + 1, epochs + 1))
    assert saved_progress(models / "checkpoint_latest.pt") == (epochs, epochs * per_epoch)
    scalars = read_scalars(root / "eval")  # both runs' TensorBoard files: every epoch validated, none twice
    assert scalars["val_patient_dice"][0].tolist() == list(range(1, epochs + 1))
    assert scalars["train_loss"][0].tolist() == list(range(1, epochs * per_epoch + 1))
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_latest.pt", "model.pt"]
    load_weights(MobileNetV2UNet(), models / "model.pt")  # intact, and fits the network


def test_a_kill_while_the_checkpoint_is_written_keeps_the_previous_one_and_resuming_removes_the_partial_file(
    tmp_path, tiny_kaggle3m
):
    root = copy_bundle(BUNDLES[0], tmp_path)
    models = root / "models"
    command = bundle_training_command(root, tiny_kaggle3m, "--max_epochs", "3")
    killed = Child(command, tmp_path / "killed.err")
    killed.wait_until(lambda: (models / "checkpoint_latest.pt").is_file())
    killed.wait_until(lambda: any(models.glob(".checkpoint_latest.pt.*.tmp")), poll=0.0005)  # epoch 2's, being written
    killed.kill()
    partial = list(models.glob(".checkpoint_latest.pt.*.tmp"))
    assert len(partial) == 1
    assert saved_progress(models / "checkpoint_latest.pt")[0] == 1  # the previous one, intact

    resumed = Child(command + ["--resume", "true"], tmp_path / "resumed.err")
    assert resumed.finish() == 0, resumed.output()
    assert iterations(resumed.lines)[0] == (2, 1)
    assert saved_progress(models / "checkpoint_latest.pt")[0] == 3
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_latest.pt", "model.pt"]


def test_resuming_a_run_stopped_before_its_first_checkpoint_trains_as_a_new_run(tmp_path, tiny_kaggle3m):
    root = copy_bundle(BUNDLES[0], tmp_path)
    (root / "models" / "model.pt").write_bytes(b"earlier weights")  # e.g. the shipped model: no checkpoint
    resumed = workflow(root, "train", dataset_dir=str(tiny_kaggle3m), max_epochs=2, resume=True, **SPLIT)
    epochs_run = []
    resumed.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    run(resumed)
    assert epochs_run == [1, 2]
    kept = list((root / "models").glob("model.*.pt"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"earlier weights"


def test_only_temporary_checkpoints_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".checkpoint_latest.pt.{finished.pid}.k2j4_x9a.tmp"
    alive = tmp_path / f".checkpoint_latest.pt.{os.getpid()}.q8w7e6r5.tmp"  # a run still writing it
    other = tmp_path / ".notes.tmp"
    for path in (dead, alive, other):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])


# --- inference --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    """40 small 8-bit slices of noise, in two folders."""
    folder = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    for i in range(40):
        (folder / f"p{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40), np.uint8)).save(folder / f"p{i % 2}" / f"s_{i}.png")
    return folder


def infer_command(src: Path, out: Path, weight_args: list[str]) -> list[str]:
    options = ["--output", str(out), "--batch-size", "1", *weight_args]
    return [sys.executable, "-m", "bt_monai", "infer", str(src), *options]


def journal_rows(out: Path) -> list[list[str]]:
    """The complete rows of the progress journal: path, probability, tumor, area, mask, ... (line 1: fingerprint)."""
    text = (out / PROGRESS_FILE).read_text() if (out / PROGRESS_FILE).is_file() else ""
    return list(csv.reader(text[: text.rfind("\n") + 1].splitlines()[1:]))


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def file_identity(path: Path) -> tuple[int, int]:
    """Inode and modification time: both change when a file is written again (atomic writes make a new file)."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def clean_run(slices, weight_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    done = subprocess.run(infer_command(slices, out, weight_args), capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def killed_and_rerun(slices, weight_args, tmp_path_factory) -> dict:
    """``infer`` killed after a random number of slices, then the same command again: what each left."""
    work = tmp_path_factory.mktemp("interrupted")
    out = work / "out"
    killed = Child(infer_command(slices, out, weight_args), work / "killed.err")
    target = random.Random(SEED).randint(5, 30)
    killed.wait_until(lambda: len(journal_rows(out)) >= target, poll=0.01)
    killed.kill()
    after_kill = {
        "recorded": journal_rows(out),
        "files": files_below(out),
        "identities": {p: file_identity(out / "masks" / p) for p in files_below(out / "masks")},
    }
    rerun = Child(infer_command(slices, out, weight_args), work / "rerun.err")
    assert rerun.finish() == 0, rerun.output()
    return {"out": out, "after_kill": after_kill, "stdout": "".join(rerun.lines)}


def test_a_killed_inference_leaves_no_partial_output(killed_and_rerun):
    after_kill = killed_and_rerun["after_kill"]
    visible = {f for f in after_kill["files"] if not any(part.startswith(".") for part in f.split("/"))}
    assert "predictions.csv" not in visible  # written once, at the end
    assert 5 <= len(after_kill["recorded"]) < 40
    for name in visible:  # every mask there is whole
        assert name.startswith("masks/") and np.asarray(Image.open(killed_and_rerun["out"] / name)).shape == (48, 40)


def test_inference_run_again_after_a_kill_gives_the_outputs_of_an_uninterrupted_run(killed_and_rerun, clean_run):
    out = killed_and_rerun["out"]
    table = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(table) == 40 and len({row["path"] for row in table}) == 40  # every slice exactly once
    assert (out / "predictions.csv").read_bytes() == (clean_run / "predictions.csv").read_bytes()
    assert files_below(out) == files_below(clean_run)  # no progress record, no temporary file left
    for name in files_below(clean_run / "masks"):
        assert (out / "masks" / name).read_bytes() == (clean_run / "masks" / name).read_bytes()


def test_inference_run_again_after_a_kill_predicts_only_the_unfinished_slices(killed_and_rerun):
    recorded = killed_and_rerun["after_kill"]["recorded"]
    summary = f"40 slices predicted ({len(recorded)} of them done by an interrupted earlier run)"
    assert summary in killed_and_rerun["stdout"]
    masks, identities = killed_and_rerun["out"] / "masks", killed_and_rerun["after_kill"]["identities"]
    for row in recorded:  # their masks were not written again
        mask = row[len(PREDICTION_COLUMNS)]  # the journal row: the CSV columns, then the mask
        assert file_identity(masks / mask) == identities[mask]


# In-process interruptions of infer_folder (an exception after some slices), for the resume rules.


@pytest.fixture(scope="module")
def predictor() -> TumorPredictor:
    torch.manual_seed(0)
    return TumorPredictor(MobileNetV2UNet(), MobileNetV2Classifier(), spatial_size=(32, 32), amp=False)


class Interrupted(Exception):
    pass


def interrupted_run(predictor: TumorPredictor, src: Path, out: Path, after: int, monkeypatch) -> None:
    """``infer_folder`` stopped by an exception once ``after`` slices are done."""
    original = predictor.predict_paths

    def stopping(paths, *args, **kwargs):
        for done, prediction in enumerate(original(paths, *args, **kwargs)):
            if done == after:
                raise Interrupted
            yield prediction

    with monkeypatch.context() as m:
        m.setattr(predictor, "predict_paths", stopping)
        with pytest.raises(Interrupted):
            infer_folder(predictor, src, out, batch_size=4)


def test_a_rerun_reuses_the_finished_slices(predictor, slices, tmp_path, monkeypatch):
    interrupted_run(predictor, slices, tmp_path / "out", 10, monkeypatch)
    assert infer_folder(predictor, slices, tmp_path / "out").reused == 10
    assert not (tmp_path / "out" / PROGRESS_FILE).exists()


def test_overwrite_ignores_an_interrupted_runs_progress(predictor, slices, tmp_path, monkeypatch):
    interrupted_run(predictor, slices, tmp_path / "out", 10, monkeypatch)
    summary = infer_folder(predictor, slices, tmp_path / "out", overwrite=True)
    assert (summary.slices, summary.reused) == (40, 0)


def test_other_settings_start_afresh(predictor, slices, tmp_path, monkeypatch):
    interrupted_run(predictor, slices, tmp_path / "out", 10, monkeypatch)
    monkeypatch.setattr(predictor, "settings", predictor.settings.replace(min_component_px=5))
    assert infer_folder(predictor, slices, tmp_path / "out").reused == 0


def test_other_weights_start_afresh(predictor, slices, tmp_path, monkeypatch):
    interrupted_run(predictor, slices, tmp_path / "out", 10, monkeypatch)
    other = TumorPredictor(MobileNetV2UNet(), predictor.detector, spatial_size=(32, 32), amp=False)
    assert infer_folder(other, slices, tmp_path / "out").reused == 0


def test_a_slice_whose_file_changed_since_is_predicted_again(predictor, slices, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for path in sorted((slices / "p0").iterdir())[:6]:
        (src / path.name).write_bytes(path.read_bytes())
    interrupted_run(predictor, src, tmp_path / "out", 4, monkeypatch)
    first = sorted(src.iterdir())[0]
    Image.fromarray((np.arange(48 * 40).reshape(48, 40) % 251).astype(np.uint8)).save(first)
    assert infer_folder(predictor, src, tmp_path / "out").reused == 3


def test_a_second_run_into_the_same_output_at_once_is_refused(predictor, slices, tmp_path):
    (tmp_path / "out").mkdir()
    with ProgressJournal(tmp_path / "out" / PROGRESS_FILE, "another run"):
        with pytest.raises(BlockingIOError, match="another bt_monai infer run"):
            infer_folder(predictor, slices, tmp_path / "out")


def test_temporary_files_left_by_a_killed_run_are_removed(predictor, slices, tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    out = tmp_path / "out"
    (out / "masks" / "p0").mkdir(parents=True)
    stale = [
        out / "masks" / "p0" / f".s_0.png.{finished.pid}.ab12cd_3.tmp",
        out / f".predictions.csv.{finished.pid}.zz99yy88.tmp",
    ]
    users = out / ".notes.txt.tmp"
    for path in stale + [users]:
        path.write_bytes(b"partial")
    infer_folder(predictor, slices, out)
    assert not any(path.exists() for path in stale) and users.exists()
