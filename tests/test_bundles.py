"""The MONAI bundles, Zoo style: train, train+evaluate and inference workflows on synthetic and real slices,
resume, distributed training on two CPU processes, metadata and network checks, exports, tracking, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import tifffile
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, ckpt_export, onnx_export, verify_net_in_out

from bt_monai.data import DatasetError, make_datalist, make_synthetic_kaggle3m

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("brain_tumor_segmentation", "brain_tumor_classification")
# Small and fast: the networks are size-agnostic, so 64x64 exercises the same code as 224x224.
FAST = {"spatial_size": [64, 64], "batch_size": 4, "num_workers": 0}


def copy_bundle(name: str, dest: Path) -> Path:
    root = dest / name
    src = REPO / "bundle" / name
    shutil.copytree(src / "configs", root / "configs")
    shutil.copytree(src / "docs", root / "docs")
    shutil.copy(src / "LICENSE", root / "LICENSE")
    (root / "models").mkdir()
    return root


def files(root: Path, *names: str) -> list[str]:
    return [str(root / "configs" / f"{n}.json") for n in names]


def workflow(root: Path, *names: str, workflow_type: str | None = "train", **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=files(root, *names),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **{**FAST, **override},
    )
    wf.initialize()
    return wf


def run(wf: ConfigWorkflow) -> ConfigWorkflow:
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_kaggle3m(tmp_path_factory.mktemp("synthetic") / "kaggle_3m", 5, 6, size=64, seed=1)


SPLIT = {"val_fraction": 0.2, "test_fraction": 0.2}


@pytest.mark.parametrize("name", BUNDLES)
def test_main_command_trains_on_the_generated_synthetic_demo(name, tmp_path):
    root = copy_bundle(name, tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--bundle_root", str(root)]
    cmd += ["--config_file", files(root, "train")[0], "--meta_file", str(root / "configs" / "metadata.json")]
    cmd += ["--max_epochs", "1", "--spatial_size", "[64,64]"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SYNTHETIC" in (root / "demo_data" / "README_SYNTHETIC.txt").read_text()
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "checkpoint_latest.pt").is_file()
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict


@pytest.mark.parametrize("name", BUNDLES)
def test_train_then_evaluate_then_infer(name, tmp_path, synthetic):
    root = copy_bundle(name, tmp_path)
    wf = workflow(root, "train", dataset_dir=str(synthetic), max_epochs=2, **SPLIT)
    assert not wf.check_properties()
    run(wf)
    assert wf.trainer.state.epoch == 2
    assert (root / "models" / "model.pt").is_file()

    ev = workflow(root, "train", "evaluate", workflow_type=None, dataset_dir=str(synthetic), **SPLIT)
    run(ev)
    metrics = dict(csv.reader((root / "eval" / "metrics.csv").open()))
    key = "val_patient_dice" if "segmentation" in name else "val_accuracy"
    assert 0.0 <= float(metrics[key]) <= 1.0
    assert (root / "eval" / f"{key if 'classification' in name else 'val_dice_tumor_slices'}_raw.csv").is_file()
    report = json.loads((root / "eval" / "metrics.json").read_text())  # the same report as bt_monai evaluate
    task = "segmentation" if "segmentation" in name else "detection"
    assert set(report) == {task, "confidence_intervals", "evaluated"} and report["evaluated"]["split"] == "test"
    assert (root / "eval" / "report.html").is_file() and (root / "eval" / "per_patient.csv").is_file()

    out = tmp_path / "predictions"
    inf = workflow(root, "inference", workflow_type=None, dataset_dir=str(synthetic / "SYNTHETIC_0000_20000101"))
    inf.parser["output_dir"] = str(out)
    run(inf)
    if "segmentation" in name:
        masks = sorted(out.glob("*_seg.png"))
        assert len(masks) == 6
        from PIL import Image

        mask = np.asarray(Image.open(masks[0]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    else:
        rows = list(csv.reader((out / "predictions.csv").open()))
        assert len(rows) == 6 and all(0.0 <= float(r[1]) <= 1.0 for r in rows)


@pytest.mark.real_data
@pytest.mark.parametrize("name", BUNDLES)
def test_train_on_real_slices(name, tmp_path, lgg_subset):
    root = copy_bundle(name, tmp_path)
    wf = run(workflow(root, "train", dataset_dir=str(lgg_subset), max_epochs=1, val_fraction=0.34, test_fraction=0))
    assert wf.trainer.state.iteration == len(wf.parser.get_parsed_content("train#dataloader"))
    assert (root / "models" / "model.pt").is_file()


def test_resume_continues_at_the_next_epoch_with_optimizer_and_scheduler_state(tmp_path, synthetic):
    root = copy_bundle(BUNDLES[0], tmp_path)
    first = run(workflow(root, "train", dataset_dir=str(synthetic), max_epochs=1, **SPLIT))
    steps_per_epoch = first.trainer.state.iteration
    saved = torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == steps_per_epoch and saved["optimizer"]["state"]

    resumed = workflow(root, "train", dataset_dir=str(synthetic), max_epochs=3, resume=True, **SPLIT)
    epochs_run = []
    resumed.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    run(resumed)
    assert epochs_run == [2, 3]
    assert resumed.trainer.state.iteration == 3 * steps_per_epoch
    assert resumed.parser.get_parsed_content("lr_scheduler").last_epoch == 3
    latest = torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 3 * steps_per_epoch


def test_distributed_training_on_two_cpu_processes(tmp_path, synthetic):
    root = copy_bundle(BUNDLES[0], tmp_path)
    configs = "['{}','{}']".format(*files(root, "train", "multi_gpu_train"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(root)]
    cmd += ["--meta_file", str(root / "configs" / "metadata.json"), "--dataset_dir", str(synthetic)]
    cmd += ["--max_epochs", "1", "--spatial_size", "[64,64]", "--batch_size", "2", "--num_workers", "0"]
    cmd += ["--val_fraction", "0.2", "--test_fraction", "0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "models" / "model.pt").is_file()
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel


def test_distributed_training_with_fewer_validation_slices_than_processes_says_which_split(tmp_path, synthetic):
    root = copy_bundle(BUNDLES[0], tmp_path)
    datalist = make_datalist(synthetic, 0.2, 0.2)
    datalist["validation"] = datalist["validation"][:1]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    configs = "['{}','{}']".format(*files(root, "train", "multi_gpu_train"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(root)]
    cmd += ["--meta_file", str(root / "configs" / "metadata.json"), "--dataset_dir", str(tmp_path / "datalist.json")]
    cmd += ["--max_epochs", "1", "--spatial_size", "[64,64]", "--batch_size", "2", "--num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode != 0
    assert "the validation split holds 1 slice(s), fewer than the 2 training processes" in done.stderr
    assert "dataset length is less than the number of participating ranks" not in done.stderr
    assert not (root / "models" / "model.pt").exists()


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_follows_the_bundle_schema(name):
    schema = json.loads((REPO / "tests" / "data" / "bundle_meta_schema.json").read_text())
    metadata = json.loads((REPO / "bundle" / name / "configs" / "metadata.json").read_text())
    jsonschema.validate(metadata, schema)
    assert metadata["schema"].startswith("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/")


@pytest.mark.parametrize("name", BUNDLES)
def test_monai_verify_metadata_with_a_local_schema(name, tmp_path):
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    shutil.copy(REPO / "tests" / "data" / "bundle_meta_schema.json", schema)
    verify_metadata(meta_file=str(REPO / "bundle" / name / "configs" / "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("name", BUNDLES)
def test_monai_verify_net_in_out(name):
    root = REPO / "bundle" / name
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        n=1,
        any=32,
    )


def network_and_checkpoint(root: Path) -> tuple[torch.nn.Module, Path]:
    """The inference config's network with random weights, saved as the bundle's models/model.pt."""
    torch.manual_seed(0)
    wf = ConfigWorkflow(config_file=files(root, "inference"), workflow_type=None, bundle_root=str(root))
    wf.initialize()
    net = wf.parser.get_parsed_content("network_def").eval()
    ckpt = root / "models" / "model.pt"
    torch.save(net.state_dict(), ckpt)
    return net, ckpt


def export_args(root: Path, ckpt: Path) -> dict:
    return {
        "net_id": "network_def",
        "ckpt_file": str(ckpt),
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": files(root, "inference")[0],
        "bundle_root": str(root),
    }


@pytest.mark.parametrize("name", BUNDLES)
def test_torchscript_export_matches_the_checkpoint(name, tmp_path):
    root = copy_bundle(name, tmp_path)
    net, ckpt = network_and_checkpoint(root)
    ts = root / "models" / "model.ts"
    ckpt_export(filepath=str(ts), **export_args(root, ckpt))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net(x))


@pytest.mark.parametrize("name", BUNDLES)
def test_onnx_export_runs_in_onnxruntime_like_pytorch(name, tmp_path):
    import onnxruntime

    root = copy_bundle(name, tmp_path)
    net, ckpt = network_and_checkpoint(root)
    path = root / "models" / "model.onnx"
    onnx_export(filepath=str(path), input_shape=[1, 3, 224, 224], use_trace=True, **export_args(root, ckpt))
    x = torch.rand(1, 3, 224, 224)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-3, atol=1e-4)


def test_mlflow_tracking_records_the_run(tmp_path, synthetic):
    pytest.importorskip("mlflow")
    root = copy_bundle(BUNDLES[0], tmp_path)
    wf = ConfigWorkflow(
        config_file=files(root, "train"),
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type="train",
        tracking="mlflow",
        bundle_root=str(root),
        dataset_dir=str(synthetic),
        max_epochs=1,
        **FAST,
        **SPLIT,
    )
    wf.initialize()
    run(wf)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=wf.parser.get_parsed_content("tracking_uri"))
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and "train_loss" in runs[0].data.metrics


def test_missing_dataset_folder_stops_with_its_path(tmp_path):
    root = copy_bundle(BUNDLES[0], tmp_path)
    with pytest.raises(Exception) as err:
        run(workflow(root, "train", dataset_dir=str(tmp_path / "nowhere"), max_epochs=1))
    assert (
        isinstance(err.value, DatasetError)
        or isinstance(err.value.__cause__, DatasetError)
        or str(tmp_path / "nowhere") in str(err.value)
    )
    assert list((root / "models").iterdir()) == []


def test_datalist_naming_a_missing_file_stops_with_its_path(tmp_path, synthetic):
    root = copy_bundle(BUNDLES[0], tmp_path)
    missing = str(tmp_path / "gone_1.tif")
    datalist = {"training": [{"image": missing, "label": missing, "tumor": 0, "patient_id": "x"}], "validation": []}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(Exception) as err:
        run(workflow(root, "train", dataset_dir=str(tmp_path / "datalist.json"), max_epochs=1))
    assert missing in str(err.value) + str(err.value.__cause__)
    assert list((root / "models").iterdir()) == []


def test_images_without_masks_stop_with_their_path(tmp_path):
    root = copy_bundle(BUNDLES[0], tmp_path)
    (tmp_path / "data" / "P1").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "data" / "P1" / "P1_1.tif", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(Exception) as err:
        run(workflow(root, "train", dataset_dir=str(tmp_path / "data"), max_epochs=1))
    assert "P1_1.tif" in str(err.value) + str(err.value.__cause__)


def test_a_new_training_run_keeps_the_previous_model(tmp_path, synthetic):
    root = copy_bundle(BUNDLES[1], tmp_path)
    (root / "models" / "model.pt").write_bytes(b"previous weights")
    run(workflow(root, "train", dataset_dir=str(synthetic), max_epochs=1, **SPLIT))
    kept = [p for p in (root / "models").glob("model.*.pt")]
    assert len(kept) == 1 and kept[0].read_bytes() == b"previous weights"
    assert (root / "models" / "model.pt").read_bytes() != b"previous weights"
