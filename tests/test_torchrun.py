"""``bt-monai infer`` and ``evaluate`` as N processes under torchrun: each rank predicts its own share of the
slices, rank 0 writes the one set of outputs, byte for byte those of one process; DICOM input is refused there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import SUBSET, subprocess_env, write_mr_dicom
from PIL import Image

from bt_monai.__main__ import main
from bt_monai.apps.infer import PROGRESS_FILE, infer_folder
from bt_monai.inferers import TumorPredictor
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet
from bt_monai.utils import distributed


@pytest.fixture(scope="module")
def four_slices(lgg_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real patients, two slices each (one with tumor, one without), linked in the kaggle_3m layout."""
    root = tmp_path_factory.mktemp("four") / "kaggle_3m"
    for patient in SUBSET[:2]:
        masks = sorted((lgg_root / patient).glob("*_mask.tif"), key=lambda m: int(m.name.split("_")[-2]))
        tumor = next(m for m in masks if tifffile.imread(m).any())
        clear = next(m for m in masks if not tifffile.imread(m).any())
        (root / patient).mkdir(parents=True)
        for mask in (clear, tumor):
            image = mask.with_name(mask.name.replace("_mask", ""))
            (root / patient / image.name).symlink_to(image)
            (root / patient / mask.name).symlink_to(mask)
    return root


def bt_monai(processes: int, *args: str) -> subprocess.CompletedProcess:
    """``bt-monai ARGS`` as one process, or as ``processes`` under torchrun (a free port: --standalone)."""
    launcher = [sys.executable, "-m", "bt_monai"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        launcher += ["-m", "bt_monai"]
    # one thread per process either way: the same arithmetic in every run; batch 2: one batch per rank
    options = ["--batch-size", "2", "--threads", "1"]
    done = subprocess.run([*launcher, *args, *options], capture_output=True, text=True, env=subprocess_env(1))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_date(name: str, data: bytes) -> bytes:
    """metrics.json and report.html carry the time of the run; every other byte must be the same."""
    if name == "metrics.json":
        metrics = json.loads(data)
        del metrics["evaluated"]["date_utc"]
        return json.dumps(metrics).encode()
    if name == "report.html":
        return re.sub(rb"date_utc&quot;: &quot;[^&]*&quot;", b"", data)
    return data


def shares(stderr: str) -> list[str]:
    return sorted(re.findall(r"rank \d of \d: \d+ of \d+ slices", stderr))


@pytest.mark.real_data
def test_infer_on_two_processes_writes_the_files_of_one_process(four_slices, tmp_path):
    bt_monai(1, "infer", str(four_slices), "-o", str(tmp_path / "one"))
    two = bt_monai(2, "infer", str(four_slices), "-o", str(tmp_path / "two"))
    assert shares(two.stderr) == ["rank 0 of 2: 2 of 4 slices", "rank 1 of 2: 2 of 4 slices"]
    one, both = contents(tmp_path / "one"), contents(tmp_path / "two")
    assert len([name for name in both if name.startswith("masks/")]) == 4 and "predictions.csv" in both
    assert not any(Path(name).name.startswith(".") for name in both)  # no rank's progress journal left
    assert one == both
    assert two.stdout.count("4 slices predicted") == 1  # rank 0 reports, once


@pytest.mark.real_data
def test_evaluate_on_two_processes_writes_the_report_of_one_process(four_slices, tmp_path):
    bt_monai(1, "evaluate", str(four_slices), "-o", str(tmp_path / "one"), "--bootstrap", "20")
    two = bt_monai(2, "evaluate", str(four_slices), "-o", str(tmp_path / "two"), "--bootstrap", "20")
    assert shares(two.stderr) == ["rank 0 of 2: 2 of 4 slices", "rank 1 of 2: 2 of 4 slices"]
    one, both = contents(tmp_path / "one"), contents(tmp_path / "two")
    assert {"metrics.json", "per_slice.csv", "per_patient.csv", "report.html", "overlay_gallery.png"} <= set(both)
    assert {k: without_date(k, v) for k, v in one.items()} == {k: without_date(k, v) for k, v in both.items()}
    assert json.loads(both["metrics.json"])["segmentation"]["n_slices"] == 4


def test_the_shares_are_whole_batches_that_join_into_the_one_process_order(monkeypatch):
    for n_items, batch_size, size in [(4, 2, 2), (7, 2, 2), (40, 4, 3), (5, 1, 2), (3, 16, 2), (0, 4, 2)]:
        blocks = []
        for index in range(size):
            monkeypatch.setattr(distributed, "rank", lambda index=index: index)
            monkeypatch.setattr(distributed, "world_size", lambda size=size: size)
            blocks.append(distributed.block_of(n_items, batch_size))
        assert [i for block in blocks for i in block] == list(range(n_items))
        assert all(block.start % batch_size == 0 for block in blocks if block)  # no batch cut in two
        assert max(map(len, blocks)) - min(map(len, blocks)) <= batch_size  # as even as whole batches allow


@pytest.mark.parametrize("source", ["folder", "dicomweb"])
def test_dicom_input_under_torchrun_is_refused_with_what_to_do(source, tmp_path, monkeypatch, capsys):
    if source == "folder":
        (tmp_path / "series").mkdir()
        write_mr_dicom(tmp_path / "series" / "1.dcm", np.zeros((16, 16), np.uint16))
        where = str(tmp_path / "series")
    else:
        where = "http://127.0.0.1:9/dicom-web"  # never contacted: refused before
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["infer", where, "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "torchrun" in error and "one bt-monai infer per DICOM folder or per study list" in error
    assert not (tmp_path / "out").exists()


class Stopped(Exception):
    pass


def test_a_rerun_reuses_the_slices_another_rank_recorded(tmp_path, monkeypatch):
    """A killed 2-process run leaves rank 1's journal beside rank 0's: one process run again reuses both."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 20), np.uint8)).save(src / f"s_{i}.png")
    torch.manual_seed(0)
    predictor = TumorPredictor(MobileNetV2UNet(), MobileNetV2Classifier(), spatial_size=(32, 32), amp=False)
    clean = infer_folder(predictor, src, tmp_path / "clean", batch_size=2)
    original = predictor.predict_paths

    def stopping(paths, *args, **kwargs):  # stopped after 4 slices
        for done, prediction in enumerate(original(paths, *args, **kwargs)):
            if done == 4:
                raise Stopped
            yield prediction

    with monkeypatch.context() as m:
        m.setattr(predictor, "predict_paths", stopping)
        with pytest.raises(Stopped):
            infer_folder(predictor, src, tmp_path / "out", batch_size=2)
    journal = (tmp_path / "out" / PROGRESS_FILE).read_text().splitlines(keepends=True)
    assert len(journal) == 1 + 4  # its header, 4 slices
    (tmp_path / "out" / PROGRESS_FILE).write_text("".join(journal[:3]))  # rank 0 had recorded 2 slices ...
    (tmp_path / "out" / ".bt_monai_infer_progress.rank1.csv").write_text(journal[0] + "".join(journal[3:]))  # rank 1 2
    summary = infer_folder(predictor, src, tmp_path / "out", batch_size=2)
    assert (summary.slices, summary.reused) == (clean.slices, 4)
    assert contents(tmp_path / "out") == contents(tmp_path / "clean")  # no journal of either rank left
