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
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, onnx_export, verify_net_in_out

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


def torchrun(root: Path, names: tuple[str, ...], *args: str, run_id: str = "run", processes: int = 2):
    """``monai.bundle run`` of ``names`` (configs layered in order) on CPU processes, one thread each.

    ``processes`` 1 runs plain ``python -m monai.bundle``; more run under ``torchrun`` (gloo).
    """
    configs = "[" + ",".join(f"'{f}'" for f in files(root, *names)) + "]"
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "monai.bundle", "run", run_id, "--config_file", configs]
    cmd += ["--bundle_root", str(root), "--meta_file", str(root / "configs" / "metadata.json"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def train_network(root: Path) -> torch.nn.Module:
    """The training config's ``network_def``, newly built (its random weights from torch's current seed)."""
    parser = ConfigParser()
    parser.read_config(files(root, "train"))
    return parser.get_parsed_content("network_def")


def random_weights(root: Path, path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A state dict of the bundle's network with random weights drawn from ``seed``, saved to ``path``."""
    torch.manual_seed(seed)
    state = train_network(root).state_dict()
    torch.save(state, path)
    return state


@pytest.mark.parametrize("name", BUNDLES)
def test_distributed_training_starts_from_init_weights_and_reports_its_outputs(name, tmp_path, synthetic):
    root = copy_bundle(name, tmp_path)
    init = random_weights(root, tmp_path / "init.pt", seed=7)  # not the run's own initialization (seed 123)
    parameters = [k for k, _ in train_network(root).named_parameters()]
    # lr 0: no optimizer step moves a parameter, so the saved model holds the weights training started from
    args = ["--init_weights", str(tmp_path / "init.pt"), "--learning_rate", "0.0", "--dataset_dir", str(synthetic)]
    args += ["--max_epochs", "1", "--spatial_size", "[64,64]", "--batch_size", "2", "--num_workers", "0"]
    done = torchrun(root, ("train", "multi_gpu_train"), *args, "--val_fraction", "0.2", "--test_fraction", "0.2")
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel
    assert all(torch.equal(state[k], init[k]) for k in parameters)
    assert done.stdout.count("training finished: best model ") == 1  # rank 0 alone prints the outputs


def test_distributed_training_with_fewer_validation_slices_than_processes_says_which_split(tmp_path, synthetic):
    root = copy_bundle(BUNDLES[0], tmp_path)
    datalist = make_datalist(synthetic, 0.2, 0.2)
    datalist["validation"] = datalist["validation"][:1]
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    args = ["--dataset_dir", str(tmp_path / "datalist.json"), "--max_epochs", "1", "--spatial_size", "[64,64]"]
    done = torchrun(root, ("train", "multi_gpu_train"), *args, "--batch_size", "2", "--num_workers", "0")
    assert done.returncode != 0
    assert "the validation split holds 1 slice(s), fewer than the 2 processes" in done.stderr
    assert "dataset length is less than the number of participating ranks" not in done.stderr
    assert not (root / "models" / "model.pt").exists()


@pytest.mark.parametrize("name", BUNDLES)
def test_evaluation_on_two_cpu_processes_equals_one_process(name, tmp_path, synthetic):
    root = copy_bundle(name, tmp_path)
    random_weights(root, root / "models" / "model.pt", seed=3)
    # fp32, one slice a batch and one thread a process: both runs compute every slice exactly alike
    args = ["--dataset_dir", str(synthetic), "--val_fraction", "0.2", "--test_fraction", "0.4", "--amp", "False"]
    args += ["--spatial_size", "[64,64]", "--batch_size", "1", "--num_workers", "0"]
    one = torchrun(root, ("train", "evaluate"), *args, "--output_dir", str(tmp_path / "one"), processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(root, ("train", "evaluate", "multi_gpu_evaluate"), *args, "--output_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]

    def metrics(folder: str) -> dict[str, float]:
        return {k: float(v) for k, v in csv.reader((tmp_path / folder / "metrics.csv").open())}

    key = "val_patient_dice" if "segmentation" in name else "val_accuracy"
    assert 0.0 < metrics("one")[key] < 1.0  # a metric that could tell the runs apart
    assert metrics("two") == pytest.approx(metrics("one"), rel=1e-12, nan_ok=True)
    task = "segmentation" if "segmentation" in name else "detection"
    reports = [json.loads((tmp_path / f / "metrics.json").read_text()) for f in ("one", "two")]
    assert reports[1][task] == reports[0][task]
    assert reports[1]["confidence_intervals"] == reports[0]["confidence_intervals"]
    for table in ("per_slice.csv", "per_patient.csv"):  # rank 0 wrote every slice, once, in the same order
        assert (tmp_path / "two" / table).read_bytes() == (tmp_path / "one" / table).read_bytes()
    details = "val_dice_tumor_slices_raw.csv" if task == "segmentation" else "val_accuracy_raw.csv"
    rows = [(tmp_path / f / details).read_text().splitlines() for f in ("one", "two")]
    assert rows[1][0] == rows[0][0] and sorted(rows[1][1:]) == sorted(rows[0][1:])


# The lists each one-process config runs, and where its torchrun config must take them from.
SHARED_STEPS = {
    ("train", "multi_gpu_train"): {"initialize": "training_setup", "run": "training"},
    ("train", "evaluate", "multi_gpu_evaluate"): {"initialize": "evaluation_setup", "run": "evaluating"},
}


def steps(parser: ConfigParser, id: str) -> list:
    """The steps ``id`` runs, in order: an element ``"@other"`` naming a list stands for that list's steps."""
    found = []
    for step in parser[id]:
        named = step[1:] if isinstance(step, str) and step.startswith("@") else None
        found += steps(parser, named) if named and isinstance(parser.get(named), list) else [step]
    return found


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("layers", list(SHARED_STEPS))
def test_a_step_added_to_the_one_process_config_reaches_the_torchrun_run(name, layers, tmp_path):
    root = copy_bundle(name, tmp_path)
    base = root / "configs" / f"{layers[-2]}.json"
    config = json.loads(base.read_text())
    torchrun_file = json.loads((root / "configs" / f"{layers[-1]}.json").read_text())
    added = {}
    for phase, shared in SHARED_STEPS[layers].items():
        assert shared not in torchrun_file, f"{layers[-1]}.json redefines {shared}: reference it instead"
        added[phase] = f"$print('a step added to {shared}')"
        config[shared].append(added[phase])
    base.write_text(json.dumps(config))

    def parsed(names) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(files(root, *names))
        parser.resolve_macro_and_relative_ids()
        return parser

    one, many = parsed(layers[:-1]), parsed(layers)
    for phase, step in added.items():
        alone = steps(one, phase)
        assert step in alone
        together = steps(many, phase)
        assert any(together[i : i + len(alone)] == alone for i in range(len(together))), (phase, together)


@pytest.mark.parametrize("name", BUNDLES)
def test_inference_config_holds_the_settings_the_model_was_trained_with(name):
    configs = REPO / "bundle" / name / "configs"
    train = json.loads((configs / "train.json").read_text())
    inference = json.loads((configs / "inference.json").read_text())  # read alone, by load_bundle_network too
    for key in ("input_mode", "spatial_size", "amp", "channels_last", "threshold"):
        assert key in inference, f"{name} inference.json lacks {key}"
        assert inference[key] == train[key] and not str(inference[key]).startswith(("$", "@", "%")), key


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
