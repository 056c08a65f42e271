"""Messy DICOM headers never cost the SEG or the SR, and a full disk says what to do.

Each series is two real LGG slices (FLAIR as 16-bit MR, with geometry) whose header has one attribute changed
the way real exports (and anonymizers) change it. The SEG and SR must still be written, pass dciodvfy, keep the
masks of the clean series, and ``summary.json`` must say what was repaired, dropped or derived. A series whose
SEG still cannot be made is a failure of the run (exit status 1), never a silent exit 0. The models are the
tiny deterministic "bright FLAIR" ones of tests/test_dicom.py (their masks are not the point here).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dicom import BrightDetector, BrightSegmenter, flair, seg_masks, write_series

from bt_monai.__main__ import main
from bt_monai.apps.cli import commands
from bt_monai.apps.dicom import infer_dicom
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import derived_uid, files

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.filterwarnings("ignore:builtin type (Swig|swig):DeprecationWarning"),  # python-gdcm's bindings
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),
    pytest.mark.filterwarnings("ignore:Invalid value for VR"),  # the values made non-conformant on purpose
    pytest.mark.filterwarnings("ignore:The value length"),
    pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name"),
]

SLICES = (9, 11)  # real slices of tests/test_dicom.py's patient, both with tumor (so a SEG is due)
ABSENT = object()  # the attribute is left out of the header


def bright() -> TumorPredictor:
    return TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False)


def messy_series(folder: Path, images: list[np.ndarray], change: dict) -> dict:
    """A clean series (tests/test_dicom.py's ``write_series``), then each header changed as ``change`` says:
    a value written as given (text, or raw bytes), or ABSENT (left out)."""
    series = write_series(folder, images)
    with warnings.catch_warnings():  # pydicom warns about every value we make non-conformant on purpose
        warnings.simplefilter("ignore")
        for path in series["paths"]:
            ds = pydicom.dcmread(path)
            for keyword, value in change.items():
                if value is ABSENT:
                    del ds[keyword]
                else:
                    setattr(ds, keyword, value)
            ds.save_as(path)
    return series


def as_read(value) -> str:
    """A value of ``messy_series`` as pydicom reads it back (bytes under the default character set: as Latin-1)."""
    if value is ABSENT:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines dciodvfy reports for the file ``path``."""
    result = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, timeout=60)
    text = (result.stdout + result.stderr).decode("utf-8", "backslashreplace")  # it quotes values as bytes
    return [line for line in text.splitlines() if line.startswith("Error")]


def entry_of(out: Path, uid: str) -> dict:
    (entry,) = [s for s in json.loads((out / "summary.json").read_text())["series"] if s["series_instance_uid"] == uid]
    return entry


# --- one attribute changed per series: what real exports carry --------------------------------------------------

# (case, the change, the entry summary.json must list: (attribute, action, value), or None: nothing to repair)
CASES = [
    # the table
    ("birth date of an anonymizer", {"PatientBirthDate": "00000000"}, ("PatientBirthDate", "emptied", "")),
    ("study time with colons", {"StudyTime": "10:30:00"}, ("StudyTime", "repaired", "103000")),
    ("study date with dashes", {"StudyDate": "2001-01-01"}, ("StudyDate", "repaired", "20010101")),
    ("study date a path", {"StudyDate": "../../"}, ("StudyDate", "emptied", "")),
    ("no frame of reference", {"FrameOfReferenceUID": ABSENT}, ("FrameOfReferenceUID", "derived", None)),
    ("latin-1 names", {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jürgen"}, None),
    ("90-character series description", {"SeriesDescription": "FLAIR " + "x" * 84}, None),  # not copied
    ("20-character accession number", {"AccessionNumber": "A" * 20}, ("AccessionNumber", "emptied", "")),
    ("age without its unit", {"PatientAge": "45"}, ("PatientAge", "removed", None)),
    # others of the same kinds
    ("age not zero-padded", {"PatientAge": "45Y"}, ("PatientAge", "repaired", "045Y")),
    ("study time hours and minutes", {"StudyTime": "9:05"}, ("StudyTime", "repaired", "0905")),
    ("name ending in a line break", {"PatientName": "Doe^Jane\r\n"}, ("PatientName", "repaired", "Doe^Jane")),
    (
        "name with a bell character",
        {"ReferringPhysicianName": "Smith\x07^J"},
        ("ReferringPhysicianName", "emptied", ""),
    ),
    ("name of seven components", {"PatientName": "Doe^Jane^A^B^C^D^E"}, ("PatientName", "emptied", "")),
    ("two patient IDs in one", {"PatientID": "LGG\\4942"}, ("PatientID", "emptied", "")),
    (
        "date and time with a timezone",
        {"AcquisitionDateTime": "2001-01-01T10:30:00+01:00"},
        ("AcquisitionDateTime", "repaired", "20010101103000+0100"),
    ),
    ("empty frame of reference", {"FrameOfReferenceUID": ""}, ("FrameOfReferenceUID", "derived", None)),
    (
        "latin-1 bytes under the default character set",
        {"PatientName": "Müller^Jürgen".encode("latin-1")},
        ("PatientName", "emptied", ""),
    ),
    (
        "character set named as in Python",
        {"SpecificCharacterSet": "UTF-8", "PatientName": "Müller^Jürgen"},
        ("SpecificCharacterSet", "repaired", "ISO_IR 192"),
    ),
    ("sex as a word", {"PatientSex": "female"}, ("PatientSex", "repaired", "F")),
    ("sex unknown", {"PatientSex": "U"}, ("PatientSex", "emptied", "")),
    ("70-character institution", {"InstitutionName": "I" * 70}, ("InstitutionName", "removed", None)),
]


@pytest.fixture(scope="module")
def messy(tmp_path_factory, lgg_root) -> dict:
    """A clean series and one series per case, in one export (each its own study); run once."""
    root = tmp_path_factory.mktemp("messy")
    images = [flair(lgg_root, n).astype(np.uint16) for n in SLICES]
    series = {"clean": messy_series(root / "in" / "clean", images, {})}
    for k, (case, change, _) in enumerate(CASES):
        series[case] = messy_series(root / "in" / f"case{k:02d}", images, change)
    run = infer_dicom(bright(), root / "in", root / "out")
    return {"root": root, "out": root / "out", "series": series, "run": run}


def test_every_messy_series_is_processed_and_none_fails(messy):
    run = messy["run"]
    assert len(run.processed) == len(CASES) + 1 and run.failed_series == [] and run.skipped == []


@pytest.mark.parametrize(("case", "change", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_messy_header_still_gives_a_valid_seg_and_sr_with_the_clean_masks(messy, case, change, expected):
    out, series, clean = messy["out"], messy["series"][case], messy["series"]["clean"]
    entry, clean_entry = entry_of(out, series["SeriesInstanceUID"]), entry_of(out, clean["SeriesInstanceUID"])
    assert entry["status"] == "processed" and entry["outputs"]["seg"] and entry["outputs"]["sr"]
    for name in ("seg", "sr"):
        assert dciodvfy_errors(out / entry["outputs"][name]) == [], name
    seg, clean_seg = out / entry["outputs"]["seg"], out / clean_entry["outputs"]["seg"]
    np.testing.assert_array_equal(seg_masks(seg, series["sop_uids"]), seg_masks(clean_seg, clean["sop_uids"]))
    mask, clean_mask = (np.asarray(nib.load(out / e["outputs"]["nifti"]).dataobj) for e in (entry, clean_entry))
    np.testing.assert_array_equal(mask, clean_mask)
    repairs = {r["attribute"]: r for r in entry["header_repairs"]}
    if expected is None:
        assert repairs == {}  # nothing of it is copied non-conformant: nothing changed
        return
    attribute, action, value = expected
    assert repairs[attribute]["action"] == action and repairs[attribute]["reason"]
    assert repairs[attribute]["original"] == as_read(change[attribute])
    if action == "derived":
        assert repairs[attribute]["value"] == pydicom.dcmread(seg).FrameOfReferenceUID
    else:
        assert repairs[attribute]["value"] == value


def test_a_derived_frame_of_reference_is_the_same_on_a_rerun_and_the_seg_says_so(messy):
    (case,) = [k for k, (c, _, _) in enumerate(CASES) if c == "no frame of reference"]
    series = messy["series"]["no frame of reference"]
    first = pydicom.dcmread(messy["out"] / entry_of(messy["out"], series["SeriesInstanceUID"])["outputs"]["seg"])
    again_out = messy["root"] / "again"
    (folder,) = infer_dicom(bright(), messy["root"] / "in" / f"case{case:02d}", again_out).processed
    again = pydicom.dcmread(again_out / folder / "seg.dcm")
    assert again.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert first.FrameOfReferenceUID == derived_uid("bt_monai", "FrameOfReferenceUID", series["SeriesInstanceUID"])
    (ours,) = [e for e in first.ContributingEquipmentSequence if e.Manufacturer == "bt_monai"]
    assert "derived FrameOfReferenceUID" in ours.ContributionDescription


def test_a_clean_series_gets_no_repair_and_no_note_in_its_seg(messy):
    entry = entry_of(messy["out"], messy["series"]["clean"]["SeriesInstanceUID"])
    seg = pydicom.dcmread(messy["out"] / entry["outputs"]["seg"])
    assert entry["header_repairs"] == []
    assert [e.Manufacturer for e in seg.ContributingEquipmentSequence] == ["test", "Highdicom open-source contributors"]


# --- the command line: one line per series, and exit status 1 for a series without its SEG --------------------


@pytest.fixture(scope="module")
def bright_cli():
    """``bt-monai infer`` with the bright models in place of the bundles' (fast, masks known to have tumor)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(commands, "predictor_of", lambda args: bright())
        yield


def test_the_run_prints_one_line_per_repaired_series(bright_cli, tmp_path, lgg_root, capsys):
    images = [flair(lgg_root, n).astype(np.uint16) for n in SLICES]
    messy_series(tmp_path / "in" / "a", images, {"StudyDate": "2001-01-01", "PatientBirthDate": "00000000"})
    messy_series(tmp_path / "in" / "b", images, {"FrameOfReferenceUID": ABSENT})
    assert main(["infer", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "source header values" in line]
    assert len(lines) == 2
    (dates,) = [line for line in lines if "StudyDate" in line]
    assert dates.startswith("note: ") and "StudyDate '2001-01-01' repaired -> '20010101'" in dates
    assert "PatientBirthDate '00000000' emptied" in dates
    (derived,) = [line for line in lines if "FrameOfReferenceUID" in line]
    assert derived.startswith("warning: ") and "FrameOfReferenceUID derived: 2.25." in derived


def test_a_series_whose_seg_cannot_be_made_is_a_failure_with_exit_status_1(bright_cli, tmp_path, lgg_root, capsys):
    """No slice positions: highdicom cannot place two frames, so no SEG (the pixels decode, the masks are kept)."""
    images = [flair(lgg_root, n).astype(np.uint16) for n in SLICES]
    series = messy_series(tmp_path / "in" / "nopos", images, {"ImagePositionPatient": ABSENT})
    out = tmp_path / "out"
    for _ in range(2):  # a re-run tries again (the folder is not reused) and fails the same way
        assert main(["infer", str(tmp_path / "in"), "-o", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"error: series {series['SeriesInstanceUID']}" in err and "no DICOM SEG" in err
        summary = json.loads((out / "summary.json").read_text())
        (entry,) = summary["series"]
        assert entry["status"] == "failed" and entry["reason"].startswith("no DICOM SEG: ")
        assert summary["totals"]["series_failed"] == 1 and entry["outputs"]["nifti"] and entry["outputs"]["sr"]
        with open(out / "skipped.csv", newline="") as f:
            (row,) = csv.DictReader(f)
        assert row["path"] == "nopos" and series["SeriesInstanceUID"] in row["reason"]


# --- any text in the copied attributes: a SEG and an SR, or a named failure ------------------------------------

COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "InstitutionName",
    "AcquisitionDateTime",
    "FrameOfReferenceUID",
)


LATIN_1 = st.characters(max_codepoint=0xFF)  # any byte an export may hold (control characters too)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    change=st.dictionaries(st.sampled_from(COPIED), st.text(LATIN_1, max_size=70), min_size=1, max_size=4),
    charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192"]),
)
def test_any_text_in_the_copied_attributes_gives_a_seg_and_an_sr_or_exit_status_1(
    bright_cli, lgg_root, capsys, change, charset
):
    images = [flair(lgg_root, n).astype(np.uint16) for n in SLICES]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extra = {} if charset is None else {"SpecificCharacterSet": charset}
        series = messy_series(tmp / "in", images, {**extra, **change})
        status = main(["infer", str(tmp / "in"), "-o", str(tmp / "out")])
        capsys.readouterr()
        entry = entry_of(tmp / "out", series["SeriesInstanceUID"])
        written = all(entry["outputs"].get(k) and (tmp / "out" / entry["outputs"][k]).is_file() for k in ("seg", "sr"))
        if status == 0:
            assert written and entry["status"] == "processed"
        else:
            assert status == 1 and entry["status"] == "failed" and not written
            skipped = (tmp / "out" / "skipped.csv").read_text()
            assert series["SeriesInstanceUID"] in skipped


# --- a full disk: the file, what to do, and a re-run that finishes as a clean run ------------------------------


def test_a_full_disk_names_the_file_and_a_rerun_with_space_finishes_like_a_clean_run(
    bright_cli, tmp_path, lgg_root, monkeypatch, capsys
):
    images = [flair(lgg_root, n).astype(np.uint16) for n in SLICES]
    for name in ("a", "b"):
        write_series(tmp_path / "in" / name, images)
    out, clean = tmp_path / "out", tmp_path / "clean"
    assert main(["infer", str(tmp_path / "in"), "-o", str(clean)]) == 0
    capsys.readouterr()

    real_atomic_write, segs = files.atomic_write, []

    @contextlib.contextmanager
    def disk_full_at_the_second_seg(path, mode="wb", fsync=False):
        with real_atomic_write(path, mode, fsync) as f:
            if Path(path).name == "seg.dcm":
                segs.append(path)
                if len(segs) == 2:  # the disk fills up while the second series' SEG is written
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield f

    monkeypatch.setattr(files, "atomic_write", disk_full_at_the_second_seg)
    assert main(["infer", str(tmp_path / "in"), "-o", str(out)]) == 2
    (folder,) = [p.name for p in out.iterdir() if p.is_dir()]  # the first series is finished and kept
    second = next(p.name for p in clean.iterdir() if p.is_dir() and p.name != folder)
    expected = (
        f"error: writing {out / second / 'seg.dcm'}: no space left on device; free space and run the same command "
        "again (finished slices are kept)"
    )
    assert expected in capsys.readouterr().err.splitlines()
    assert not any(files.is_temporary(p) for p in out.rglob("*"))  # no half-written file or folder is left
    monkeypatch.undo()
    assert main(["infer", str(tmp_path / "in"), "-o", str(out)]) == 0
    assert (out / "predictions.csv").read_bytes() == (clean / "predictions.csv").read_bytes()
    for name in (folder, second):
        for kept in ("mask.nii.gz", "overlays/0001.png", "overlays/0002.png"):
            assert (out / name / kept).read_bytes() == (clean / name / kept).read_bytes()
        for kind in ("seg.dcm", "sr.dcm"):
            ours, theirs = pydicom.dcmread(out / name / kind), pydicom.dcmread(clean / name / kind)
            assert ours.SOPInstanceUID == theirs.SOPInstanceUID
            assert ours.get("PixelData") == theirs.get("PixelData")
