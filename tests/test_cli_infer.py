"""``python -m bt_monai infer``: one row and one mask per readable slice, at the slice's size, never over an input."""

from __future__ import annotations

import argparse
import csv
import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import SUBSET, subprocess_env
from PIL import Image

from bt_monai.__main__ import main


def rows(out) -> list[dict]:
    return list(csv.DictReader((out / "predictions.csv").open()))


@pytest.mark.real_data
def test_kaggle_dataset_gives_a_row_and_a_mask_per_slice_and_ignores_mask_files(lgg_subset, tmp_path, weight_args):
    out = tmp_path / "out"
    assert main(["infer", str(lgg_subset), "--output", str(out), *weight_args]) == 0
    images = sorted(p for p in lgg_subset.glob("*/*.tif") if not p.name.endswith("_mask.tif"))
    table = rows(out)
    assert sorted(r["path"] for r in table) == sorted(p.relative_to(lgg_subset).as_posix() for p in images)
    assert set(table[0]) == {"path", "tumor_probability", "tumor_score", "tumor", "tumor_area_px"}
    for r in table[:5]:
        mask = np.asarray(Image.open(out / "masks" / r["path"].replace(".tif", ".png")))
        assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
        assert int(r["tumor_area_px"]) == int((mask > 0).sum())
        assert int(r["tumor"]) == int(float(r["tumor_probability"]) >= 0.5)


def test_single_image_and_odd_sizes(tmp_path, weight_args):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70), np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "x.png"), "-o", str(out), *weight_args]) == 0
    assert [r["path"] for r in rows(out)] == ["x.png"]
    assert np.asarray(Image.open(out / "masks" / "x.png")).shape == (90, 70)


def test_unreadable_files_are_listed_and_the_rest_is_processed(tmp_path, weight_args, capsys):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "good_1.tif", np.zeros((32, 32), np.uint8))
    (src / "bad_2.tif").write_bytes(b"not a tiff")
    (src / "empty_3.png").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["infer", str(src), "-o", str(out), *weight_args]) == 0
    assert [r["path"] for r in rows(out)] == ["good_1.tif"]
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert sorted(s["path"] for s in skipped) == ["bad_2.tif", "empty_3.png"] and all(s["reason"] for s in skipped)
    assert "2 file(s) skipped" in capsys.readouterr().err


def test_no_readable_slice_is_an_error(tmp_path, weight_args, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.tif").write_bytes(b"junk")
    assert main(["infer", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *weight_args]) == 1
    assert "no readable slice" in capsys.readouterr().err


def test_output_inside_the_input_is_neither_read_back_nor_over_an_input(tmp_path, weight_args):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(src / "a.png")
    before = (src / "a.png").read_bytes()
    for _ in range(2):  # the second run must not take the first run's masks as inputs
        assert main(["infer", str(src), "-o", str(src), *weight_args]) == 0
        assert [r["path"] for r in rows(src)] == ["a.png"]
    assert (src / "a.png").read_bytes() == before and (src / "masks" / "a.png").is_file()


def test_missing_weights_say_which_file_and_what_to_do(tmp_path, capsys):
    args = ["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--segmentation-weights", str(tmp_path / "no.pt")]
    assert main(args) == 2
    assert str(tmp_path / "no.pt") in capsys.readouterr().err


@pytest.mark.real_data
def test_shipped_weights_find_the_tumors_of_a_patient_with_no_training(lgg_subset, tmp_path):
    """The committed bundle weights work as installed: no weights option, no training."""
    from bt_monai.data import discover_kaggle3m

    patient = lgg_subset / "TCGA_CS_4942_19970222"
    out = tmp_path / "out"
    assert main(["infer", str(patient), "--output", str(out)]) == 0
    truth = {
        Path(r.image).name: r.tumor for r in discover_kaggle3m(lgg_subset) if Path(r.image).parent.name == patient.name
    }
    predicted = {r["path"]: int(r["tumor"]) for r in rows(out)}
    assert set(predicted) == set(truth)
    accuracy = np.mean([predicted[name] == truth[name] for name in truth])
    assert accuracy >= 0.8, accuracy  # a patient the models learned from: a sanity floor, not a test metric


@pytest.mark.parametrize(
    ("option", "value"), [("--segment-gate", "1.5"), ("--threads", "0"), ("--decode-workers", "-1")]
)
def test_out_of_range_speed_settings_are_refused_with_the_option_named(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["infer", str(tmp_path), "-o", str(tmp_path / "out"), option, value])
    assert exit_.value.code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_thread_and_gate_options_reach_torch_and_the_predictor(lgg_subset, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    masks = sorted((lgg_subset / SUBSET[0]).glob("*_mask.tif"))
    slices = [m.with_name(m.name.replace("_mask", "")) for m in masks if tifffile.imread(m).any()][:6]  # tumors
    for path in slices:
        (src / path.name).symlink_to(path)
    code = (
        "import sys, torch\nfrom bt_monai.__main__ import main\n"
        f"status = main(['infer', {str(src)!r}, '-o', {str(tmp_path / 'out')!r}, '--threads', '1',"
        " '--decode-workers', '1', '--segment-gate', '1'])\n"
        "print(status, torch.get_num_threads())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(2))
    assert result.stdout.split()[-2:] == ["0", "1"], result.stderr
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 6
    assert {row["tumor_area_px"] for row in rows(tmp_path / "out")} == {"0"}  # gate 1: no U-Net, though all have tumor


def test_the_readme_exit_status_table_is_the_code_table():
    from bt_monai.apps.cli.exits import EXIT_STATUSES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Exit statuses", 1)[1].split("\n#", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert table == [f"| {int(status)} | {meaning} |" for status, meaning in EXIT_STATUSES.items()]


def test_every_predictor_setting_with_a_flag_is_an_option_of_infer_and_evaluate():
    """Of the commands it names: the reformat settings are infer's alone (DICOM series)."""
    from bt_monai.__main__ import build_parser
    from bt_monai.apps.cli.options import settings_changes
    from bt_monai.inferers import PredictorSettings

    examples = {"on": True, "0.3": 0.3, "7": 7, "flair": "flair", "cpu": "cpu", "combined": "combined"}
    for command in ("infer", "evaluate"):
        flagged = {
            name: spec
            for name, spec in PredictorSettings.specs()
            if spec.flag and (spec.commands is None or command in spec.commands)
        }
        assert ("axial_tolerance_deg" in flagged) == (command == "infer")
        argv = [command, "IN", "-o", "OUT"]
        expected = {}
        for name, spec in flagged.items():
            named = {"input_mode": "flair", "device": "cpu", "slice_score": "combined"}
            text = "on" if spec.choice else named.get(name, "0.3")
            text = "7" if name in ("min_component_px", "decode_workers") else text
            argv += [spec.flag, text]
            expected[name] = examples[text]
        assert settings_changes(build_parser().parse_args(argv)) == expected
    # evaluate keeps --input as the older name of --input-mode; --no-amp is --amp off
    args = build_parser().parse_args(["evaluate", "D", "-o", "O", "--input", "flair", "--no-amp"])
    assert settings_changes(args) == {"input_mode": "flair", "amp": False}


def test_an_interrupted_command_exits_130_saying_how_to_continue(capsys):
    from bt_monai.apps.cli.exits import run_command

    def interrupted(args):
        raise KeyboardInterrupt

    assert run_command(interrupted, None) == 130
    assert "run the same command again" in capsys.readouterr().err


# --- operating-system errors: one message that names the file and what to do, exit status 2 ----------------

OUT = "/data/out"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", f"{OUT}/masks/x.png"),
            f"writing {OUT}/masks/x.png: no space left on device; free space and run the same command again "
            "(finished slices are kept)",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", f"{OUT}/masks/x.png"),
            f"writing {OUT}/masks/x.png: permission denied; make the output folder writable for you (or choose "
            "another) and run the same command again (finished slices are kept)",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/in/P1/P1_3.tif"),
            "reading /data/in/P1/P1_3.tif: permission denied; make it readable for you (or move it out of the "
            "input) and run the same command again",
        ),
        (
            PermissionError(errno.EPERM, "Operation not permitted", f"{OUT}/summary.json"),
            f"writing {OUT}/summary.json: permission denied; make the output folder writable for you (or choose "
            "another) and run the same command again (finished slices are kept)",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", f"{OUT}/predictions.csv"),
            f"writing {OUT}/predictions.csv: read-only file system; choose an output folder on a writable disk and "
            "run the same command again (finished slices are kept)",
        ),
        (  # a temporary is named as the file it was going to be
            OSError(errno.ENOSPC, "No space left on device", f"{OUT}/.S1_MR_FLAIR.4711.a1b2.tmp/seg.dcm"),
            f"writing {OUT}/S1_MR_FLAIR/seg.dcm: no space left on device; free space and run the same command "
            "again (finished slices are kept)",
        ),
        (  # anything else: the system's words and the file
            OSError(errno.EIO, "Input/output error", "/data/in/P1/P1_3.tif"),
            "reading /data/in/P1/P1_3.tif: input/output error; fix that and run the same command again",
        ),
        (FileNotFoundError("input not found: /data/in"), "input not found: /data/in"),  # bt_monai's own words
    ],
    ids=[
        "disk full",
        "OUT not writable",
        "input not readable",
        "not permitted",
        "read-only OUT",
        "temporary",
        "other",
        "own message",
    ],  # fmt: skip
)
def test_an_os_error_names_the_file_and_what_to_do_with_exit_status_2(error, message, capsys):
    from bt_monai.apps.cli.exits import run_command

    def failing(args):
        raise error

    args = argparse.Namespace(command="infer", output=OUT)
    assert run_command(failing, args) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_an_os_error_of_a_command_that_does_not_resume_promises_nothing(capsys):
    from bt_monai.apps.cli.exits import run_command

    def failing(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/report/report.html")

    assert run_command(failing, argparse.Namespace(command="evaluate", output="/data/report")) == 2
    err = capsys.readouterr().err
    assert (
        err == "error: writing /data/report/report.html: no space left on device; free space and run the same "
        "command again\n"
    )
