"""MONAI Label: a real server (MONAI Label 0.8.5, in its own virtual environment) serves the bundles over HTTP.

The server runs as the README says: the ``monaibundle`` sample app copied from the installed package, the
bundles linked into its ``model/`` folder, a datastore of real LGG slices, no network. Its masks must match the
bundle's own inference and the CLI's predictor on the same slice; training through it (labels saved into its
datastore) must update the model that the next inference uses. The project's own app adds the
``tumor_probability`` strategy: the unlabelled slice the detection model finds most likely to show tumor first.

MONAI Label needs pydicom 2 / numpy 1, so it lives in its own venv: set ``BT_MONAI_LABEL_PYTHON`` to that
venv's python (README, "MONAI Label"). CI sets it and ``BT_MONAI_REQUIRE_LABEL=1``, so there this never skips.
Without trained weights in the bundles, the test uses random ones, made to vary so that comparisons mean
something: the segmentation head's bias puts about a third of the slice in the mask, and the classifier's
batch-norm statistics come from the slices (through a random MobileNetV2 every slice's features vanish alike).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import SUBSET, tumor_slice
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bt_monai.apps.label import make_label_datastore
from bt_monai.apps.label.__main__ import main as label_main
from bt_monai.inferers import TumorPredictor
from bt_monai.metrics.functional import dice_from_counts, segmentation_counts

pytestmark = pytest.mark.real_data

REPO = Path(__file__).resolve().parents[1]
SEG, CLS = "brain_tumor_segmentation", "brain_tumor_classification"
PATIENT = SUBSET[0]
LABELLED = (10, 11, 12, 15)  # slices that get a finished label before training (three with tumor, one without)
# MONAI Label lists the datastore's files matching these patterns (the README's setting).
FILE_EXT = ["*.tif", "*.png", "*.nii.gz"]
START_TIMEOUT_S, TRAIN_TIMEOUT_S = 120, 300
# Trained weights, once shipped, are used as they are; until then random ones (see the module docstring).
SHIPPED = {name: (REPO / "bundle" / name / "models" / "model.pt").is_file() for name in (SEG, CLS)}


@pytest.fixture(scope="module")
def label_python() -> str:
    """The python of the MONAI Label venv (``BT_MONAI_LABEL_PYTHON``)."""
    python = os.environ.get("BT_MONAI_LABEL_PYTHON")
    if not python:
        msg = (
            "MONAI Label test: set BT_MONAI_LABEL_PYTHON to the label venv's python, e.g. "
            'python3 -m venv .venv-label && .venv-label/bin/pip install -e ".[label]" && '
            "BT_MONAI_LABEL_PYTHON=.venv-label/bin/python .venv/bin/python -m pytest tests/test_monailabel.py"
        )
        if os.environ.get("BT_MONAI_REQUIRE_LABEL"):
            pytest.fail(msg + " (BT_MONAI_REQUIRE_LABEL is set, so this is an error, not a skip)")
        pytest.skip(msg)
    python = str(Path(python).expanduser().absolute())  # the server runs in another folder
    if not os.access(python, os.X_OK):
        pytest.fail(f"BT_MONAI_LABEL_PYTHON={python} is not an executable python")
    return python


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("monailabel")


def _calibrate_segmentation_head(net: torch.nn.Module, image: torch.Tensor, foreground: float = 0.35) -> None:
    """Shift the last conv's bias so that ``foreground`` of the slice's pixels get a probability above 0.5."""
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
    with torch.no_grad():
        logits = net.eval()(image[None])
        head.bias -= torch.quantile(logits.flatten(), 1 - foreground)


def _calibrate_batch_norm(net: torch.nn.Module, images: torch.Tensor) -> None:
    """Batch-norm statistics from real slices: through a random MobileNetV2 every slice's features vanish alike."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batch
    with torch.no_grad():
        net.train()(images)
    net.eval()


@pytest.fixture(scope="module")
def bundles(work, lgg_root) -> dict[str, Path]:
    """Copies of both bundles with weights: the shipped models/model.pt, else random weights made to vary."""
    out = {}
    image, _ = tumor_slice(lgg_root, PATIENT)
    slices = sorted((lgg_root / PATIENT).glob(f"{PATIENT}_*[0-9].tif"))
    for name in (SEG, CLS):
        src, root = REPO / "bundle" / name, work / "bundles" / name
        shutil.copytree(src / "configs", root / "configs")
        shutil.copytree(src / "docs", root / "docs")
        (root / "models").mkdir()
        if SHIPPED[name]:
            shutil.copy(src / "models" / "model.pt", root / "models" / "model.pt")
        else:
            parser = ConfigParser()
            parser.read_config(str(root / "configs" / "inference.json"))
            torch.manual_seed(0)
            net = parser.get_parsed_content("network_def")
            preprocess = parser.get_parsed_content("preprocessing")
            if name == SEG:
                _calibrate_segmentation_head(net, preprocess({"image": str(image)})["image"].as_tensor())
            else:
                _calibrate_batch_norm(net, torch.stack([preprocess({"image": str(p)})["image"] for p in slices]))
            torch.save(net.state_dict(), root / "models" / "model.pt")
        out[name] = root
    return out


@pytest.fixture(scope="module")
def studies(work, lgg_root) -> Path:
    """A datastore of one real patient's 20 slices, made by the README's command (no labels yet)."""
    (work / "one_patient").mkdir()
    (work / "one_patient" / PATIENT).symlink_to(lgg_root / PATIENT, target_is_directory=True)
    done = make_label_datastore(work / "one_patient", work / "studies")
    assert done["images"] == 20 and done["labels"] == 0
    return work / "studies"


@pytest.fixture(scope="module")
def monaibundle_app(work, label_python, bundles) -> Path:
    """MONAI Label's monaibundle sample app, copied from the installed package, with the bundles linked in."""
    cmd = [label_python, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle"]
    done = subprocess.run([*cmd, "--output", str(work / "apps")], capture_output=True, text=True, timeout=120)
    app = work / "apps" / "monaibundle"
    assert (app / "main.py").is_file(), done.stdout + done.stderr
    (app / "model").mkdir()
    for name, root in bundles.items():
        (app / "model" / name).symlink_to(root, target_is_directory=True)
    return app


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost only, whatever the env says


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A MONAI Label server process on a free localhost port, and small HTTP helpers."""

    def __init__(self, label_python: str, app: Path, studies: Path, conf: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [label_python, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
        for key, value in conf.items():
            cmd += ["--conf", key, value]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        # Offline: a local bundle with zoo_source github is never downloaded (the default source would try).
        env = {**os.environ, "BUNDLE_DOWNLOAD_SRC": "github", "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(FILE_EXT)}
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            cmd,
            cwd=log.parent,  # MONAI Label reads a .env file from its working folder: keep it away from the repo
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stopping it also stops a training subprocess
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited at start:\n{self.log_tail()}"
            with contextlib.suppress(OSError):
                if self.get("/info/"):
                    return
            time.sleep(1)
        self.stop()
        pytest.fail(f"the server did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with NO_PROXY.open(req, timeout=300) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code} {e.read()[:500]!r}\n{self.log_tail()}") from e

    def get(self, path: str) -> dict | list:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        return json.loads(self.request("POST", path, data, {"Content-Type": "application/json"}))

    def multipart(self, method: str, path: str, files: dict[str, tuple[str, bytes]] | None = None) -> bytes:
        """A multipart form with ``params={}`` (as MONAI Label's clients send) and optional files."""
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'.encode()]
        for field, (filename, content) in (files or {}).items():
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request(method, path, b"".join(parts), headers)

    def infer_mask(self, model: str, image_id: str) -> np.ndarray:
        """``POST /infer/<model>?image=<id>&output=image``: the returned label file, decoded ``(H, W)``."""
        return tifffile.imread(io.BytesIO(self.multipart("POST", f"/infer/{model}?image={image_id}&output=image")))


@contextlib.contextmanager
def serve(label_python: str, app: Path, studies: Path, conf: dict[str, str], log: Path) -> Iterator[Server]:
    server = Server(label_python, app, studies, conf, log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(label_python, monaibundle_app, studies, work) -> Iterator[Server]:
    """The monaibundle sample app serving both bundles, with every setting the README gives."""
    conf = {"models": f"{SEG},{CLS}", "zoo_source": "github", "sam2": "false"}
    with serve(label_python, monaibundle_app, studies, conf, work / "monaibundle.log") as s:
        yield s


@pytest.fixture(scope="module")
def labelled(server, lgg_root) -> set[str]:
    """Finished labels for the LABELLED slices, saved as an annotator's client does (``PUT /datastore/label``)."""
    for n in LABELLED:
        mask = tifffile.imread(lgg_root / PATIENT / f"{slice_id(n)}_mask.tif")
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, (mask > 0).astype(np.uint8))  # 0 background, 1 tumor: the bundle's label
        url = f"/datastore/label?image={slice_id(n)}&tag=final"
        saved = json.loads(server.multipart("PUT", url, {"label": (f"{slice_id(n)}.tif", buffer.getvalue())}))
        assert saved["label"] == slice_id(n)
    training = server.get("/datastore/?output=train")  # what MONAI Label's training will read
    assert sorted(Path(d["label"]).name for d in training) == sorted(f"{slice_id(n)}.tif" for n in LABELLED)
    return {slice_id(n) for n in LABELLED}


def slice_id(n: int) -> str:
    return f"{PATIENT}_{n}"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    counts = segmentation_counts(torch.as_tensor(a > 0)[None, None], torch.as_tensor(b > 0)[None, None])
    return float(dice_from_counts(counts)[0])


def predictor_mask(bundles: dict[str, Path], image: Path) -> np.ndarray:
    """The CLI's predictor (``python -m bt_monai infer``) on one slice, with the bundles' current weights."""
    predictor = TumorPredictor.from_bundles(bundles[SEG], bundles[CLS])
    return next(predictor.predict_paths([image])).mask


def bundle_inference_mask(bundle: Path, image: Path, out: Path) -> np.ndarray:
    """The segmentation bundle's own inference (``monai.bundle run`` of configs/inference.json): its PNG, 0/1."""
    (out / "in").mkdir(parents=True)
    (out / "in" / image.name).symlink_to(image)
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type=None,
        bundle_root=str(bundle),
        dataset_dir=str(out / "in"),
        output_dir=str(out / "masks"),
        num_workers=0,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return (np.asarray(Image.open(out / "masks" / f"{image.stem}_seg.png")) > 0).astype(np.uint8)


def train(server: Server, model: str) -> None:
    """One epoch through ``POST /train/<model>`` (MONAI Label's BundleTrainTask, in a subprocess), waited for."""
    submitted = server.post_json(f"/train/{model}", {"max_epochs": 1, "val_split": 0.25, "device": "cpu"})
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while (task := server.get("/train/"))["status"] not in ("DONE", "ERROR") and time.monotonic() < deadline:
        time.sleep(2)
    assert task["id"] == submitted["id"]  # the status of this request, not of an earlier one
    assert task["status"] == "DONE", "\n".join(task.get("details", [])) + "\n" + server.log_tail()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_datastore_command_links_slices_and_writes_masks_as_0_1_labels(work, lgg_root, capsys):
    source = work / "one_patient_for_labels"
    source.mkdir()
    (source / PATIENT).symlink_to(lgg_root / PATIENT, target_is_directory=True)
    out = work / "studies_with_labels"
    args = ["datastore", str(source), "--output", str(out), "--patients", PATIENT, "--labels"]
    assert label_main(args) == 0 and label_main(args) == 0  # twice: adding the same slices again is fine
    assert "20 slices, 20 labels (6 with tumor)" in capsys.readouterr().out

    images = sorted(p.name for p in out.iterdir() if p.is_file())
    assert images == sorted(f"{slice_id(n)}.tif" for n in range(1, 21))  # no _mask file among the images
    assert all((out / name).resolve() == (lgg_root / PATIENT / name).resolve() for name in images)
    for name in images:
        label = tifffile.imread(out / "labels" / "final" / name)
        truth = tifffile.imread(lgg_root / PATIENT / name.replace(".tif", "_mask.tif"))
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
        np.testing.assert_array_equal(label, truth > 0)

    (out / f"{slice_id(1)}.tif").unlink()
    (out / f"{slice_id(1)}.tif").write_bytes(b"another file")
    assert label_main(args) == 2  # refused, never overwritten (README, "Exit statuses")
    assert f"{out / slice_id(1)}.tif already exists" in capsys.readouterr().err


def test_the_server_lists_the_bundles_as_2d_models_and_the_datastore_slices(server):
    info = server.get("/info/")
    seg, cls = info["models"][SEG], info["models"][CLS]
    assert (seg["type"], seg["dimension"], seg["labels"]) == ("segmentation", 2, {"tumor": 1})
    assert (cls["type"], cls["dimension"]) == ("classification", 2)
    assert SEG in info["trainers"]
    objects = server.get("/datastore/?output=all")["objects"]
    assert sorted(objects) == sorted(slice_id(n) for n in range(1, 21))  # slices only: no mask is an image


def test_server_mask_is_the_bundle_mask_of_the_slice(server, bundles, lgg_root, work):
    image, _ = tumor_slice(lgg_root, PATIENT)
    mask = server.infer_mask(SEG, image.stem)

    height, width = tifffile.imread(image).shape[:2]
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert SHIPPED[SEG] or 0 < mask.sum() < mask.size  # random weights are set to give a partial mask
    assert dice(mask, predictor_mask(bundles, image)) >= 0.99
    assert dice(mask, bundle_inference_mask(bundles[SEG], image, work / "bundle_inference")) >= 0.99


def test_server_tumor_probability_is_the_predictor_one(server, bundles, lgg_root):
    image, _ = tumor_slice(lgg_root, PATIENT)
    answer = json.loads(server.multipart("POST", f"/infer/{CLS}?image={image.stem}&output=json"))
    (prediction,) = answer["prediction"]
    assert prediction["label"] == "tumor"
    expected = next(TumorPredictor.from_bundles(bundles[SEG], bundles[CLS]).predict_paths([image])).tumor_probability
    assert prediction["score"] == pytest.approx(expected, abs=1e-3)


def test_training_on_saved_labels_updates_the_model_the_next_inference_uses(server, bundles, lgg_root, labelled):
    image, _ = tumor_slice(lgg_root, PATIENT)
    before = server.infer_mask(SEG, image.stem)
    weights = bundles[SEG] / "models" / "model.pt"
    old = sha256(weights)
    train(server, SEG)

    assert sha256(weights) != old  # a new model.pt ...
    assert [sha256(p) for p in (bundles[SEG] / "models").glob("model.*.pt")] == [old]  # ... and the old one kept
    after, new = server.infer_mask(SEG, image.stem), predictor_mask(bundles, image)
    assert dice(after, new) >= 0.99  # the server answers with the new weights ...
    assert SHIPPED[SEG] or dice(new, before) < 0.99  # ... which give another mask (one epoch moves random ones)


def test_the_classification_bundle_trains_on_the_same_mask_labels(server, bundles, labelled):
    weights = bundles[CLS] / "models" / "model.pt"
    old = sha256(weights)
    train(server, CLS)
    assert sha256(weights) != old


def test_project_app_ranks_unlabelled_slices_by_tumor_probability(
    label_python, bundles, studies, work, lgg_root, labelled
):
    app = work / "apps" / "bt_monai"
    shutil.copytree(REPO / "bt_monai" / "apps" / "label" / "app", app)
    conf = {"bundles_dir": str(work / "bundles"), "skip_trainers": "true"}
    with serve(label_python, app, studies, conf, work / "bt_monai_app.log") as s:
        assert {"tumor_probability", "random", "first"} <= set(s.get("/info/")["strategies"])
        assert {SEG, CLS} <= set(s.get("/info/")["models"])
        answer = s.post_json("/activelearning/tumor_probability", {})

    predictor = TumorPredictor.from_bundles(bundles[SEG], bundles[CLS])
    unlabelled = [lgg_root / PATIENT / f"{slice_id(n)}.tif" for n in range(1, 21) if slice_id(n) not in labelled]
    expected = {Path(p.path).stem: p.tumor_probability for p in predictor.predict_paths(unlabelled)}
    assert SHIPPED[CLS] or max(expected.values()) - min(expected.values()) > 0.01  # random weights: made to differ
    assert answer["id"] in expected
    assert answer["tumor_probability"] == pytest.approx(expected[answer["id"]], abs=1e-3)
    assert answer["tumor_probability"] >= max(expected.values()) - 1e-3  # the most likely tumor slice first
