"""What the reports of every command share: how an input file is named (relative to INPUT), how an error is named
(one line), and ``skipped.csv``, which every run writes, header only when nothing was skipped, so that a list
left by an earlier run into the same OUT never survives."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_dicom import PATIENT, BrightDetector, BrightSegmenter, flair, write_series
from test_evaluate import build

from bt_monai.apps.dicom import infer_dicom
from bt_monai.apps.evaluate import evaluate_dataset
from bt_monai.apps.infer import infer_folder
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import error_summary, relative_path
from bt_monai.writers.skipped import write_skipped

STALE = "path,reason\r\nold.tif,left by an earlier run\r\n"


@pytest.fixture(scope="module")
def predictor() -> TumorPredictor:
    return TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False)


def read_skipped(out: Path) -> list[dict]:
    with open(out / "skipped.csv", newline="") as f:
        return list(csv.DictReader(f))


def stale_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "skipped.csv").write_text(STALE)
    return out


# --- names ----------------------------------------------------------------------------------------------------


def test_a_file_below_the_input_folder_is_named_relative_to_it_with_slashes():
    assert relative_path(Path("/data/in/PAT1/IM0001"), Path("/data/in")) == "PAT1/IM0001"


def test_a_single_file_given_as_input_is_named_by_its_file_name():
    assert relative_path("/data/in/slice_3.tif", "/data/in/slice_3.tif") == "slice_3.tif"


def test_a_file_outside_the_input_is_named_whole_instead_of_failing():
    assert relative_path("/elsewhere/IM0001", "/data/in") == "/elsewhere/IM0001"


def test_an_error_is_named_by_its_type_and_the_first_line_of_its_message():
    assert error_summary(ValueError("pixel data truncated\n  at offset 1024\n")) == "ValueError: pixel data truncated"
    assert error_summary(OSError()) == "OSError: "


# --- skipped.csv: always written ------------------------------------------------------------------------------


def test_skipped_csv_has_its_header_even_when_nothing_was_skipped(tmp_path):
    write_skipped(tmp_path, [])
    assert (tmp_path / "skipped.csv").read_bytes() == b"path,reason\r\n"
    write_skipped(tmp_path, [("a/b.tif", "ValueError: not a TIFF")])
    assert read_skipped(tmp_path) == [{"path": "a/b.tif", "reason": "ValueError: not a TIFF"}]


@pytest.mark.real_data
def test_infer_over_slices_replaces_an_earlier_runs_skipped_csv(tmp_path, lgg_root, predictor):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(lgg_root / PATIENT / f"{PATIENT}_11.tif", src)
    out = stale_output(tmp_path)
    assert infer_folder(predictor, src, out).slices == 1
    assert read_skipped(out) == []
    (src / "broken.tif").write_bytes(b"not a TIFF")
    infer_folder(predictor, src, out)
    assert [row["path"] for row in read_skipped(out)] == ["broken.tif"]


def test_evaluate_replaces_an_earlier_runs_skipped_csv(tmp_path):
    predictor = build(tmp_path / "data")
    out = stale_output(tmp_path)
    evaluate_dataset(predictor, tmp_path / "data", out, n_bootstrap=0)
    assert read_skipped(out) == []


@pytest.mark.real_data
def test_dicom_infer_replaces_an_earlier_runs_skipped_csv(tmp_path, lgg_root, predictor):
    write_series(tmp_path / "in", [flair(lgg_root, 11).astype(np.uint16)])
    out = stale_output(tmp_path)
    assert infer_dicom(predictor, tmp_path / "in", out).skipped == []
    assert read_skipped(out) == []


def test_the_seg_and_sr_are_numbered_beside_their_source_series_whatever_its_number():
    from bt_monai.writers.derived import derived_series_number

    assert derived_series_number({"SeriesNumber": "7"}, "seg") == 1007
    assert derived_series_number({"SeriesNumber": 7}, "sr") == 2007
    assert derived_series_number({"SeriesNumber": "x7"}, "seg") == 1000  # unreadable: 0
    assert derived_series_number({}, "sr") == 2000
    assert derived_series_number({"SeriesNumber": str(2**31)}, "seg") == 2**31 - 1  # IS's largest value
