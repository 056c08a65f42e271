"""Federated training with NVIDIA FLARE: real simulator runs (server and one process per site) on real slices.

Each run: 2 sites (DU, HT) of the LGG patients, 2 training patients x 6 slices and 1 validation patient x 6
slices each, 1 local epoch per round; about a minute each on 2 CPU cores.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from bt_monai.data import DatasetError, make_datalist, site_datalists

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "configs" / "lgg_split.json"
pytestmark = pytest.mark.real_data


def bt_monai(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bt_monai", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(2),
        cwd=cwd,
        timeout=900,
    )


@pytest.fixture(scope="module")
def lgg_datalist(lgg_root: Path) -> dict:
    return make_datalist(lgg_root.resolve(), split_file=SPLIT)


@pytest.fixture(scope="module")
def small_sites(lgg_datalist: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """DU.json and HT.json: each site's first 2 training and 1 validation patients, 6 slices of each."""
    folder = tmp_path_factory.mktemp("sites")
    paths = {}
    for site, site_list in site_datalists(lgg_datalist).items():
        if site not in ("DU", "HT"):
            continue
        small = {}
        for split, n in (("training", 2), ("validation", 1)):
            patients = sorted({e["patient_id"] for e in site_list[split]})[:n]
            small[split] = [e for p in patients for e in [x for x in site_list[split] if x["patient_id"] == p][8:14]]
        paths[site] = folder / f"{site}.json"
        paths[site].write_text(json.dumps(small))
    return paths


@pytest.fixture(scope="module")
def federated_run(small_sites: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("federated") / "run"
    done = bt_monai(
        "federated",
        "simulate",
        "--sites",
        *map(str, small_sites.values()),
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--output",
        str(output),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return output, done


# -- sites from the data ------------------------------------------------------------------------------------------
def test_datalist_by_site_keeps_each_site_its_own_patients_and_the_test_patients_out(lgg_root, tmp_path):
    done = bt_monai("datalist", str(lgg_root), "--split", str(SPLIT), "--by-site", "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    split = json.loads(SPLIT.read_text())["patients"]
    sites = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(sites) == ["CS_EZ_FG", "DU", "HT"]  # CS (6), FG (7) and EZ (0 training patients) are pooled
    counts = {
        s: tuple(d["metadata"]["counts"][k]["patients"] for k in ("training", "validation")) for s, d in sites.items()
    }
    assert counts == {"DU": (15, 4), "HT": (16, 1), "CS_EZ_FG": (13, 4)}
    for site, datalist in sites.items():
        assert datalist["test"] == []
        for key in ("training", "validation"):
            patients = {e["patient_id"] for e in datalist[key]}
            assert patients <= set(split[key]), f"{site} {key} holds patients of another split"
            assert all(Path(e["image"]).is_absolute() for e in datalist[key])
    seen = [p for d in sites.values() for k in ("training", "validation") for p in d["metadata"]["patients"][k]]
    assert len(seen) == len(set(seen)) == len(split["training"]) + len(split["validation"])


def test_sites_below_the_threshold_are_pooled_under_their_codes(lgg_datalist):
    sites = site_datalists(lgg_datalist, min_training_patients=16)
    assert sorted(sites) == ["CS_DU_EZ_FG", "HT"]
    assert sites["CS_DU_EZ_FG"]["metadata"]["institutions"] == ["CS", "DU", "EZ", "FG"]


def test_a_patient_id_without_an_institution_is_refused():
    with pytest.raises(DatasetError, match="cannot tell the institution of patient 'P001'"):
        site_datalists({"training": [{"patient_id": "P001", "tumor": 0}], "validation": []})


def test_site_datalists_never_replace_a_file(lgg_subset, tmp_path):
    (tmp_path / "CS.json").write_text("mine")  # the subset's three patients are all from CS
    done = bt_monai("datalist", str(lgg_subset), "--by-site", "--output", str(tmp_path))
    assert done.returncode == 2 and f"{tmp_path / 'CS.json'} already exists" in done.stderr
    assert (tmp_path / "CS.json").read_text() == "mine" and sorted(tmp_path.iterdir()) == [tmp_path / "CS.json"]


def test_fedavg_weighs_each_site_by_its_training_steps_and_keeps_dtypes():
    import numpy as np

    from bt_monai.apps.federated.controller import weighted_mean

    a = {"w": np.array([[0.0, 2.0]], dtype=np.float32), "n": np.array(10, dtype=np.int64)}
    b = {"w": np.array([[4.0, 6.0]], dtype=np.float32), "n": np.array(30, dtype=np.int64)}
    mean = weighted_mean([a, b], [30.0, 10.0])
    np.testing.assert_allclose(mean["w"], [[1.0, 3.0]])
    assert mean["w"].dtype == np.float32 and mean["n"].dtype == np.int64 and int(mean["n"]) == 15


# -- a federated run ----------------------------------------------------------------------------------------------
def test_the_global_model_loads_weights_only_and_changes_between_rounds(federated_run):
    output, _ = federated_run
    model = torch.load(output / "model.pt", weights_only=True)
    rounds = [torch.load(output / "rounds" / f"round_{r}.pt", weights_only=True) for r in (0, 1)]
    assert model.keys() == rounds[1].keys()
    assert all(torch.equal(model[k], rounds[1][k]) for k in model)
    changed = [k for k in model if model[k].is_floating_point() and not torch.equal(rounds[0][k], rounds[1][k])]
    assert len(changed) > len(model) // 2


def test_each_round_writes_the_global_and_every_sites_validation_dice(federated_run):
    output, done = federated_run
    rows = list(csv.DictReader((output / "rounds.csv").open()))
    assert [r["round"] for r in rows] == ["0", "1"]
    for row in rows:
        for column in ("global_val_patient_dice", "DU_val_patient_dice", "HT_val_patient_dice"):
            assert 0.0 <= float(row[column]) <= 1.0
        assert int(row["DU_bytes_sent"]) > 10_000_000  # the whole state dict, about 22 MiB
    assert "global val Dice" in done.stdout


def test_cross_site_evaluation_scores_every_model_on_every_site(federated_run):
    output, done = federated_run
    rows = {r["model"]: r for r in csv.DictReader((output / "cross_site.csv").open())}
    assert sorted(rows) == ["DU", "HT", "global"]
    assert all(row["DU_val_patient_dice"] and row["HT_val_patient_dice"] for row in rows.values())
    assert "cross-site validation Dice" in done.stdout


def test_infer_runs_with_the_federated_model(federated_run, lgg_root, tmp_path):
    output, _ = federated_run
    slices = tmp_path / "slices"
    slices.mkdir()
    for image in sorted((lgg_root / "TCGA_CS_4942_19970222").glob("*_1[0-2].tif")):
        (slices / image.name).symlink_to(image)
    done = bt_monai(
        "infer", str(slices), "--segmentation-weights", str(output / "model.pt"), "--output", str(tmp_path / "out")
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))) == 3


def test_the_job_folder_is_printed_and_holds_the_server_and_each_site(federated_run):
    output, done = federated_run
    job = output / "job" / "bt_monai_segmentation_fedavg"
    assert f"NVFlare job folder (submit it to a POC or provisioned deployment): {job}" in done.stdout
    assert sorted(p.name for p in job.iterdir() if p.is_dir()) == ["app_DU", "app_HT", "app_server"]
    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    assert "bt_monai.apps.federated.controller.FederatedSegmentationController" in json.dumps(server)
    # the client script by its package path (found in the site's custom/ folder), not this machine's path
    client = (job / "app_DU" / "config" / "config_fed_client.json").read_text()
    assert '"bt_monai/apps/federated/client.py"' in client and str(REPO) not in client


def _pixel_chunks(datalist: Path) -> list[bytes]:
    """256 bytes from the middle of every image a site holds (its pixel data)."""
    chunks = []
    for entry in json.loads(datalist.read_text())["training"]:
        data = Path(entry["image"]).read_bytes()
        chunks.append(data[len(data) // 2 : len(data) // 2 + 256])
    return chunks


def test_no_image_path_patient_or_pixel_of_a_site_reaches_the_server(federated_run, small_sites):
    output, _ = federated_run
    server = output / "workspace" / "server"
    files = [p for p in server.rglob("*") if p.is_file()]
    assert any(p.name == "log.txt" for p in files)  # the server's logged messages are among them
    secrets: list[bytes] = []
    for datalist in small_sites.values():
        entries = [e for split in json.loads(datalist.read_text()).values() for e in split]
        secrets += [Path(e["image"]).name.encode() for e in entries] + [e["patient_id"].encode() for e in entries]
        secrets += [str(Path(e["image"]).parent).encode() for e in entries]
        secrets += _pixel_chunks(datalist)
    for path in files:
        content = path.read_bytes()
        leaked = [s[:60] for s in secrets if s in content]
        assert not leaked, f"{path} holds site data: {leaked[:3]}"
    record = json.loads((output / "summary.json").read_text())["record"]
    from bt_monai.apps.federated.client import SENT_METRICS

    sent = {k for r in record["rounds"] for m in r["sites"].values() for k in m}
    assert sent <= set(SENT_METRICS) | {"bytes_sent", "params_type"}


def test_a_second_run_into_the_same_output_is_refused_and_changes_nothing(federated_run, small_sites):
    output, _ = federated_run
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in output.rglob("*") if p.is_file()}
    done = bt_monai("federated", "simulate", "--sites", *map(str, small_sites.values()), "--output", str(output))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {output} already exists and is not empty")
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in output.rglob("*") if p.is_file()}


# -- faults -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_a_missing_or_empty_site_datalist_is_refused_before_anything_runs(problem, small_sites, tmp_path):
    bad = tmp_path / "FG.json"
    if problem == "empty":
        bad.write_text(json.dumps({"training": [], "validation": []}))
    done = bt_monai(
        "federated", "simulate", "--sites", str(small_sites["DU"]), str(bad), "--output", str(tmp_path / "run")
    )
    assert done.returncode == 2
    expected = "datalist file not found" if problem == "missing" else "needs a non-empty 'training' list"
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]
    assert done.stderr.startswith("error: site FG: ") and expected in done.stderr and str(bad) in done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.incomplete").exists()


def record_keys(output: Path) -> set[str]:
    return set(torch.load(output / "rounds" / "round_1.pt", weights_only=True))


def simulate_with_ht_failing(small_sites: dict[str, Path], output: Path, *options: str):
    """2 rounds in which HT fails: batch_size 0 fails when HT builds its trainer, after it received round 0's model."""
    sites = [str(p) for p in small_sites.values()]
    cmd = ["federated", "simulate", "--sites", *sites, "--rounds", "2", "--site-override", "HT:batch_size=0"]
    return bt_monai(*cmd, *options, "--output", str(output))


def test_a_site_failing_mid_round_stops_the_run_and_names_the_site(small_sites, tmp_path):
    done = simulate_with_ht_failing(small_sites, tmp_path / "run")
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: site HT failed in round 0: site HT: ValueError: batch_size should be a positive")
    assert "on_site_failure is 'stop'" in last and str(tmp_path / ".run.incomplete") in last
    assert not (tmp_path / "run").exists()  # nothing half written where the run would have gone


def test_a_site_failing_mid_round_is_dropped_when_told_to_continue(small_sites, tmp_path):
    # also the weight-difference path: --privacy percentile sends filtered differences
    output = tmp_path / "run"
    options = ("--on-site-failure", "continue", "--privacy", "percentile", "--no-cross-site")
    done = simulate_with_ht_failing(small_sites, output, *options)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "warning: site HT failed in round 0: site HT: ValueError: batch_size" in done.stderr
    record = json.loads((output / "summary.json").read_text())["record"]
    assert [sorted(r["sites"]) for r in record["rounds"]] == [["DU"], ["DU"]]
    assert {m["params_type"] for r in record["rounds"] for m in r["sites"].values()} == {"ParamsType.DIFF"}
    assert torch.load(output / "model.pt", weights_only=True).keys() == record_keys(output)
    # PercentilePrivacy(percentile=10) zeroes the smallest tenth of DU's changes before they leave the site
    before, after = (torch.load(output / "rounds" / f"round_{r}.pt", weights_only=True) for r in (0, 1))
    changes = torch.cat([(after[k] - before[k]).flatten() for k in after if after[k].is_floating_point()])
    assert (changes == 0).float().mean() > 0.09
    assert "PercentilePrivacy - INFO - [identity=DU" in (output / "simulator.log").read_text()
