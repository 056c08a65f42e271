"""Weight averaging over the last epochs (SWA): the snapshots the bundle keeps, their mean, batch norms remeasured."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import bundle_training_command, subprocess_env

from bt_monai.bundle import copy_bundle
from bt_monai.networks import MobileNetV2UNet, average_weights, epoch_snapshots, recompute_batch_norm
from bt_monai.utils import unwrap_state_dict


def small_network() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))


def test_the_average_is_the_mean_of_the_snapshots(tmp_path):
    torch.manual_seed(0)
    states = [small_network().state_dict() for _ in range(3)]
    for k, state in enumerate(states):
        state["1.num_batches_tracked"] = torch.tensor(k)
        torch.save(state, tmp_path / f"epoch_checkpoint_epoch={k + 1}.pt")
    averaged = average_weights(small_network(), epoch_snapshots(tmp_path)).state_dict()
    torch.testing.assert_close(averaged["0.weight"], sum(s["0.weight"] for s in states) / 3)
    assert averaged["1.num_batches_tracked"] == 2  # counters come from the last snapshot


def test_snapshots_come_in_epoch_order_and_last_keeps_the_latest(tmp_path):
    for epoch in (9, 10, 2):
        torch.save(small_network().state_dict(), tmp_path / f"epoch_checkpoint_epoch={epoch}.pt")
    assert [p.name for p in epoch_snapshots(tmp_path, last=2)] == [
        "epoch_checkpoint_epoch=9.pt",
        "epoch_checkpoint_epoch=10.pt",
    ]


def test_no_snapshot_names_the_folder_and_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="--epoch_snapshots"):
        epoch_snapshots(tmp_path)


def test_batch_norm_statistics_are_measured_again_on_the_batches():
    network = torch.nn.BatchNorm2d(1)
    network.running_mean.fill_(100.0)
    batches = [torch.full((2, 1, 4, 4), 1.0), torch.full((2, 1, 4, 4), 3.0)]
    assert recompute_batch_norm(network, batches) == 2
    assert network.running_mean.item() == pytest.approx(2.0)  # every batch counts the same, not the last most
    assert not network.training and network.momentum == 0.1


@pytest.mark.real_data
def test_the_bundle_averages_its_last_epochs_into_a_plain_state_dict(tmp_path, tiny_kaggle3m):
    root = copy_bundle("segmentation", tmp_path / "segmentation")
    training = bundle_training_command(root, tiny_kaggle3m, "--max_epochs", "3", "--epoch_snapshots", "2")
    done = subprocess.run(training, capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    snapshots = epoch_snapshots(root / "models" / "epochs")
    assert [p.name.split("=")[-1] for p in snapshots] == ["2.pt", "3.pt"]  # the last two epochs only

    configs = f"['{root / 'configs' / 'train.json'}', '{root / 'configs' / 'average_weights.json'}']"
    averaging = [*training[:4], "averaging", *training[5:]]
    averaging[averaging.index("--config_file") + 1] = configs
    done = subprocess.run(averaging, capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(root / "models" / "model_swa.pt", weights_only=True)
    MobileNetV2UNet().load_state_dict(state)  # a plain state dict of the bundle's network
    first, last = (unwrap_state_dict(torch.load(p, weights_only=True)) for p in snapshots)
    name = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    torch.testing.assert_close(state[name], (first[name] + last[name]) / 2)
    norm = next(k for k in state if k.endswith("running_var"))
    assert not torch.allclose(state[norm], (first[norm] + last[norm]) / 2)  # measured again, not averaged
