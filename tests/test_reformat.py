"""Series in any plane (``infer`` on DICOM): a sagittal, coronal, oblique or thin-slice series gives the masks of
the same voxels sent as an axial series, in its own geometry; edge cases say what happened.

One real patient's FLAIR (TCGA_CS_4942_19970222, 0.9375 mm pixels, 5 mm slices, as our exports) is written as one
study of several series (:mod:`bt_monai.writers.dicom_series`) and run once through ``bt-monai infer`` with the
shipped models. Masks are compared on the axial grid: each series' ``mask.nii.gz`` mapped there (trilinear,
>= 0.5). The figures on the test patients are in the README (``benchmarks/series_planes.py``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from conftest import BrightDetector, BrightSegmenter
from pydicom.uid import generate_uid

from bt_monai.__main__ import main
from bt_monai.apps.dicom import infer_dicom
from bt_monai.apps.dicom.resume import reuse_key_for
from bt_monai.data.dicom import scan_dicom_folder
from bt_monai.inferers import TumorPredictor
from bt_monai.transforms.reformat import plan_axial, resample_volume, slice_plane
from bt_monai.writers.dicom_series import axial_affine, reslice, write_volume_series

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.filterwarnings("ignore:builtin type (Swig|swig):DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),
    pytest.mark.filterwarnings("ignore:Divide by zero"),
]

PATIENT = "TCGA_CS_4942_19970222"
VOXEL_MM3 = 0.9375 * 0.9375 * 5.0


def patient_volume(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(FLAIR x16 uint16, expert mask bool), both ``(W, H, D)`` on the axial grid of :func:`axial_affine`."""
    folder = root / PATIENT
    n = len([p for p in folder.glob("*.tif") if not p.name.endswith("_mask.tif")])
    flair = np.stack([tifffile.imread(folder / f"{PATIENT}_{k}.tif")[..., 1].T for k in range(1, n + 1)], -1)
    truth = np.stack([tifffile.imread(folder / f"{PATIENT}_{k}_mask.tif").T > 0 for k in range(1, n + 1)], -1)
    return flair.astype(np.uint16) * 16, truth


def shifted(affine: np.ndarray, first: int) -> np.ndarray:
    """The affine of the sub-volume that starts at index ``first`` along D."""
    out = affine.copy()
    out[:3, 3] = (affine @ np.array([0, 0, first, 1.0]))[:3]
    return out


def views(flair: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every series of the study: (volume, RAS affine)."""
    axial = axial_affine()
    out = {"axial": (flair, axial)}
    for plane in ("sagittal", "coronal", "oblique", "thin"):
        out[plane] = reslice(flair, axial, plane)
    out["thin_sagittal"] = reslice(*out["thin"], "sagittal")
    out["near_axial"] = reslice(flair, axial, "oblique", degrees=5.0)
    sagittal, affine = out["sagittal"]
    out["few"] = (sagittal[..., 120:125], shifted(affine, 120))  # 5 sagittal images
    out["no_geometry"] = (sagittal[..., 110:130], shifted(affine, 110))
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory, lgg_root) -> dict:
    """The study written and run once through ``bt-monai infer``: its folders, summary, rows, stderr, masks."""
    root = tmp_path_factory.mktemp("planes")
    flair, truth = patient_volume(lgg_root)
    series = views(flair)
    study_uid, frame_uid = generate_uid(), generate_uid()
    written = {}
    for number, (name, (volume, affine)) in enumerate(series.items(), 1):
        written[name] = write_volume_series(
            root / "in" / name, volume, affine, StudyInstanceUID=study_uid, FrameOfReferenceUID=frame_uid,
            SeriesNumber=number, SeriesDescription=f"FLAIR {name}",
        )  # fmt: skip
    for path in written["no_geometry"]["paths"]:  # an export that dropped the geometry
        ds = pydicom.dcmread(path)
        del ds.ImageOrientationPatient, ds.ImagePositionPatient
        ds.save_as(path)
    localizer = np.full((128, 128, 2), 800, np.uint16)  # two coronal localizer images inside the sagittal series
    coronal = np.array([[-2.0, 0, 0, 128], [0, 0, -5, 0], [0, -2, 0, 100], [0, 0, 0, 1]])  # RAS, 2 mm pixels
    loc = write_volume_series(
        root / "in" / "sagittal" / "localizer", localizer, coronal,
        StudyInstanceUID=study_uid, FrameOfReferenceUID=frame_uid, SeriesNumber=2, SeriesDescription="FLAIR sagittal",
        SeriesInstanceUID=written["sagittal"]["SeriesInstanceUID"],
    )  # fmt: skip
    out = root / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(["infer", str(root / "in"), "-o", str(out), "--series", "FLAIR"])
    summary = json.loads((out / "summary.json").read_text())
    entries = {e["series_description"].split(" ", 1)[1]: e for e in summary["series"]}
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "root": root, "out": out, "series": series, "written": written, "localizer": loc, "truth": truth,
        "summary": summary, "entries": entries, "rows": rows, "stderr": stderr.getvalue(), "status": status,
    }  # fmt: skip


def on_axial(study: dict, name: str) -> np.ndarray:
    """The series' mask.nii.gz mapped onto the axial grid (trilinear, >= 0.5)."""
    image = nib.load(study["out"] / study["entries"][name]["outputs"]["nifti"])
    values = np.asarray(image.dataobj).astype(np.float32)[None]
    flair, affine = study["series"]["axial"]
    return resample_volume(values, image.affine, affine, flair.shape)[0].numpy() >= 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# --- the masks and volumes agree across planes ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["sagittal", "coronal"])
def test_a_sagittal_or_coronal_series_gives_the_masks_of_the_axial_series(study, name):
    axial = on_axial(study, "axial")
    assert axial.sum() > 1000  # the patient's tumor, found by the axial run
    assert dice(on_axial(study, name), axial) >= 0.95
    assert study["entries"][name]["geometry"]["reformatted"] is True


@pytest.mark.parametrize("name", ["oblique", "thin", "thin_sagittal"])
def test_an_oblique_or_thin_slice_series_agrees_with_the_axial_run(study, name):
    assert dice(on_axial(study, name), on_axial(study, "axial")) >= 0.90


def test_the_same_voxels_give_the_same_tumor_volume_in_every_plane(study):
    """Sagittal and coronal hold the axial voxels exactly: no resampling error, the same mm³ (to rounding)."""
    axial = study["entries"]["axial"]["tumor_volume_mm3"]
    for name in ("sagittal", "coronal"):
        assert study["entries"][name]["tumor_volume_mm3"] == pytest.approx(axial, rel=0.005), name


@pytest.mark.parametrize("name", ["oblique", "thin", "thin_sagittal"])
def test_a_resampled_series_gives_the_tumor_volume_within_the_resampling_error(study, name):
    """Mean changes on the 9 test patients: oblique 6.8%, thin 4.7%, thin_sagittal 0.8%, against a geometric
    resampling error of at most 0.2% (README, series in any plane); the bounds leave room for one patient's spread."""
    axial = study["entries"]["axial"]["tumor_volume_mm3"]
    bound = {"oblique": 0.25, "thin": 0.05, "thin_sagittal": 0.05}[name]
    assert abs(study["entries"][name]["tumor_volume_mm3"] - axial) <= bound * axial


def test_masks_stay_in_the_source_geometry(study):
    """The NIfTI mask of a reformatted series lies on its own grid: its shape and affine are the series'."""
    entry = study["entries"]["sagittal"]
    image = nib.load(study["out"] / entry["outputs"]["nifti"])
    (series,) = [s for s in scan_dicom_folder(study["root"] / "in" / "sagittal").series]
    assert image.shape == (256, 20, 256) == (series.frames[0].columns, series.frames[0].rows, len(series.frames))
    np.testing.assert_allclose(image.affine, series.affine()[0], atol=1e-4)


# --- the DICOM outputs ----------------------------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> list[str]:
    import subprocess

    result = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, timeout=60)
    text = (result.stdout + result.stderr).decode("utf-8", "backslashreplace")
    return [line for line in text.splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("name", ["sagittal", "coronal", "oblique", "thin_sagittal"])
def test_each_seg_passes_dciodvfy_and_references_its_own_source_images(study, name, pacs_tools):
    entry = study["entries"][name]
    seg_path = study["out"] / entry["outputs"]["seg"]
    assert dciodvfy_errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    written = study["written"][name]
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == written["SeriesInstanceUID"]
    sources = {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence}
    assert sources <= set(written["sop_uids"])
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame derives from one image of this series
        (derivation,) = frame.DerivationImageSequence
        assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID in set(written["sop_uids"])
    assert dciodvfy_errors(study["out"] / entry["outputs"]["sr"]) == []


def test_a_reformatted_image_is_called_tumor_exactly_where_its_mask_has_pixels(study):
    uid = study["written"]["sagittal"]["SeriesInstanceUID"]
    rows = [r for r in study["rows"] if r["SeriesInstanceUID"] == uid]
    assert len(rows) == 256
    for r in rows:
        assert int(r["tumor"]) == (int(r["tumor_area_px"]) > 0)
        assert (float(r["tumor_probability"]) >= 0.5) == bool(int(r["tumor"]))
    called = sum(int(r["tumor"]) for r in rows)
    truth = int(study["truth"].any(axis=(1, 2)).sum())  # sagittal images (axial columns) the expert marked
    assert 0.7 * truth <= called <= 1.3 * truth, (called, truth)


# --- what each series took, in summary.json and one line each --------------------------------------------------


def test_summary_records_the_plane_the_angle_and_whether_a_series_was_reformatted(study):
    geometry = {name: e["geometry"] for name, e in study["entries"].items()}
    assert geometry["axial"] | {"reason": ""} == geometry["axial"] | {
        "plane": "axial", "angle_from_axial_deg": 0.0, "reformatted": False, "reason": "",
    }  # fmt: skip
    assert geometry["axial"]["axial_slices"] is None
    assert geometry["sagittal"]["plane"] == "sagittal" and geometry["sagittal"]["angle_from_axial_deg"] == 90.0
    assert geometry["sagittal"]["axial_spacing_mm"] == [0.9375, 0.9375, 5.0]
    assert geometry["coronal"]["plane"] == "coronal" and geometry["coronal"]["reformatted"]
    assert geometry["oblique"]["plane"] == "oblique axial" and geometry["oblique"]["angle_from_axial_deg"] == 20.0
    assert geometry["oblique"]["reformatted"]


def test_a_near_axial_oblique_series_is_predicted_as_acquired(study):
    geometry = study["entries"]["near_axial"]["geometry"]
    assert geometry["plane"] == "oblique axial" and geometry["angle_from_axial_deg"] == 5.0
    assert geometry["reformatted"] is False and "predicted as acquired" in geometry["reason"]


def test_a_series_too_small_to_reformat_is_predicted_as_acquired_and_says_so(study):
    entry = study["entries"]["few"]
    assert entry["geometry"]["reformatted"] is False and entry["slices"] == 5
    assert "too few to reformat" in entry["geometry"]["reason"]
    (line,) = [line for line in study["stderr"].splitlines() if entry["folder"] in line]
    assert line.startswith("warning:") and "5 images along its axis, fewer than 8" in line


def test_every_series_is_processed_and_only_the_one_without_geometry_lacks_its_seg(study):
    """A multi-frame SEG needs plane positions (highdicom): without them the series is 'failed', exit status 1."""
    status = {name: e["status"] for name, e in study["entries"].items()}
    assert status.pop("no_geometry") == "failed" and set(status.values()) == {"processed"}
    assert study["status"] == 1


def test_a_series_without_geometry_is_predicted_as_acquired_with_a_warning(study):
    entry = study["entries"]["no_geometry"]
    assert entry["geometry"]["plane"] is None and entry["geometry"]["reformatted"] is False and entry["slices"] == 20
    assert any(n.startswith("warning: no ImageOrientationPatient") for n in entry["notes"])
    lines = [line for line in study["stderr"].splitlines() if entry["folder"] in line and "plane is unknown" in line]
    assert len(lines) == 1 and lines[0].startswith("warning:")


def test_each_reformatted_series_gets_one_line(study):
    for name in ("sagittal", "coronal", "oblique", "thin_sagittal"):
        (line,) = [line for line in study["stderr"].splitlines() if study["entries"][name]["folder"] in line]
        assert line.startswith("note:") and "reformatted to" in line and "masks mapped back" in line
    assert not [line for line in study["stderr"].splitlines() if study["entries"]["axial"]["folder"] in line]


def test_localizer_frames_are_skipped_and_the_main_stack_is_reformatted(study):
    with open(study["out"] / "skipped.csv", newline="") as f:
        skipped = {r["path"]: r["reason"] for r in csv.DictReader(f)}
    for path in study["localizer"]["paths"]:
        reason = skipped[path.relative_to(study["root"] / "in").as_posix()]
        assert "differs from the main stack" in reason
    assert study["entries"]["sagittal"]["slices"] == 256 and study["entries"]["sagittal"]["geometry"]["reformatted"]


# --- resuming: outputs made in the acquisition plane are not reused ---------------------------------------------


def test_a_series_predicted_in_its_acquisition_plane_is_redone_when_it_is_now_reformatted(study, tmp_path):
    volume, affine = study["series"]["sagittal"]
    write_volume_series(tmp_path / "in", volume[..., 100:112], shifted(affine, 100))
    predictor = TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False)
    as_acquired = TumorPredictor(
        predictor.segmenter, predictor.detector, predictor.settings.replace(axial_tolerance_deg=90)
    )
    first = infer_dicom(as_acquired, tmp_path / "in", tmp_path / "out")
    assert (
        first.processed
        and json.loads((tmp_path / "out" / "summary.json").read_text())["series"][0]["geometry"]["reformatted"] is False
    )
    second = infer_dicom(predictor, tmp_path / "in", tmp_path / "out")
    assert second.processed and not second.reused
    entry = json.loads((tmp_path / "out" / "summary.json").read_text())["series"][0]
    assert entry["geometry"]["reformatted"] is True
    third = infer_dicom(predictor, tmp_path / "in", tmp_path / "out")
    assert third.reused and not third.processed


def test_an_axial_series_keeps_the_reuse_key_of_earlier_versions(study):
    """No reformat: the key (and so the SEG and SR UIDs) of a series predicted as acquired is unchanged."""
    (series,) = scan_dicom_folder(study["root"] / "in" / "axial").series
    assert set(reuse_key_for(series, "f")) == {"slices", "models", "outputs"}
    assert reuse_key_for(series, "f", {"axial_tolerance_deg": 10.0})["reformat"] == {"axial_tolerance_deg": 10.0}


# --- the plan itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plane", "expected"), [("sagittal", "sagittal"), ("coronal", "coronal"), ("oblique", "oblique axial")]
)
def test_slice_plane_names_the_nearest_plane_and_the_tilt(plane, expected):
    volume = np.zeros((8, 8, 8), np.uint16)
    _, affine = reslice(volume, axial_affine(size=8), plane)
    name, angle = slice_plane(affine)
    assert name == expected and angle == pytest.approx({"oblique": 20.0}.get(plane, 90.0))


def test_a_series_wider_than_the_training_field_is_predicted_at_the_training_scale():
    """A 3D sagittal FOV of 256 mm: the axial slices are 256 pixels of 0.9375 mm on the head, not wider."""
    head = np.zeros((1, 512, 512, 160), np.float32)
    head[:, 80:430, 60:460, 10:150] = 1000.0  # 175 x 200 x 140 mm of head in a 256 x 256 x 160 mm volume
    affine = np.array([[0, 0, -1.0, 80], [-0.5, 0, 0, 128], [0, -0.5, 0, 128], [0, 0, 0, 1]])
    plan = plan_axial(affine, head.shape[1:], volume=head)
    assert plan.reformat and plan.axial_shape[:2] == (256, 256)
    assert plan_axial(affine, head.shape[1:]).axial_shape[:2] == (273, 273)  # without the pixels: all of it
