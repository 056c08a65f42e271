"""Training is reproducible on CPU: the same seed (the bundles' ``seed``, 123) gives the same weights, training
losses and validation metrics, run after run, in this process or a new one, with or without DataLoader workers;
another seed gives other weights, so the comparison does tell runs apart.

Reproducible means on one machine with the same thread count and ``num_workers``: each worker process draws its
own random stream, and a different thread count may sum floating point numbers in another order."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import bundle_training_command, subprocess_env
from ignite.engine import Events
from monai.handlers import from_engine
from test_bundles import BUNDLES, SPLIT, copy_bundle, run, workflow


def train(name: str, folder: Path, dataset: Path, **override) -> dict:
    """Two epochs of the bundle ``name`` on ``dataset``: what a run produces."""
    root = copy_bundle(name, folder)
    wf = workflow(root, "train", dataset_dir=str(dataset), max_epochs=2, **SPLIT, **override)
    losses, metrics = [], []
    wf.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output)))
    )
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: metrics.append(dict(e.state.metrics)))
    run(wf)
    return {"losses": losses, "metrics": metrics, **saved_weights(root)}


def saved_weights(root: Path) -> dict:
    models = root / "models"
    return {
        "model.pt": torch.load(models / "model.pt", weights_only=True),
        "checkpoint": torch.load(models / "checkpoint_latest.pt", weights_only=True)["model"],
    }


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("model.pt", "checkpoint"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_kaggle3m):
    """One run of each bundle with the default seed and no DataLoader workers (trained when first asked)."""
    runs = {}

    def get(name: str) -> dict:
        if name not in runs:
            runs[name] = train(name, tmp_path_factory.mktemp("first"), tiny_kaggle3m)
        return runs[name]

    return get


@pytest.mark.parametrize("name", BUNDLES)
def test_the_same_seed_trains_the_same_weights_losses_and_metrics(name, first_run, tmp_path, tiny_kaggle3m):
    again = train(name, tmp_path, tiny_kaggle3m)
    assert again["losses"] == first_run(name)["losses"]
    assert again["metrics"] == first_run(name)["metrics"] and len(again["metrics"]) == 2
    assert_same_weights(again, first_run(name))


def test_the_same_seed_with_data_loader_workers_trains_the_same_weights(tmp_path, tiny_kaggle3m):
    runs = [train(BUNDLES[0], tmp_path / str(k), tiny_kaggle3m, num_workers=2) for k in range(2)]
    assert runs[0]["losses"] == runs[1]["losses"] and runs[0]["metrics"] == runs[1]["metrics"]
    assert_same_weights(*runs)


def test_a_training_command_in_a_new_process_trains_the_same_weights(first_run, tmp_path, tiny_kaggle3m):
    root = copy_bundle(BUNDLES[0], tmp_path)
    command = bundle_training_command(root, tiny_kaggle3m, "--max_epochs", "2")
    env = subprocess_env(threads=torch.get_num_threads())  # the thread count of the run in this process
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(saved_weights(root), first_run(BUNDLES[0]))


def test_another_seed_trains_other_weights(first_run, tmp_path, tiny_kaggle3m):
    other = train(BUNDLES[0], tmp_path, tiny_kaggle3m, seed=7)
    assert other["losses"] != first_run(BUNDLES[0])["losses"]
    with pytest.raises(AssertionError):
        assert_same_weights(other, first_run(BUNDLES[0]))
