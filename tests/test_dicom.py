"""DICOM folder inference: series found and ordered, pixels decoded, SEG / NIfTI / PNG / CSV / JSON outputs,
robust to junk, safe names, re-runs, the bundle's DICOM variant, and the command line.

The series are built from real LGG slices (FLAIR channel as 16-bit MR, with geometry); pydicom's bundled files
supply real-world quirks. Most tests use a tiny deterministic "bright FLAIR" model (fast, non-trivial masks);
the command-line and bundle tests use the real architectures with random weights.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from conftest import BrightDetector, BrightSegmenter
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from bt_monai.__main__ import main
from bt_monai.apps.dicom import infer_dicom, looks_like_dicom_input, object_uids, read_predictions
from bt_monai.apps.dicom import series as series_step
from bt_monai.apps.dicom.resume import reuse_key_for, slices_digest
from bt_monai.apps.infer import infer_folder
from bt_monai.data.dicom import decode_frame, dicom_voxel_volume_mm3, scan_dicom_folder, to_channel_first
from bt_monai.inferers import AutocastInferer, TumorPredictor
from bt_monai.networks import MobileNetV2UNet
from bt_monai.utils import safe_name

pytestmark = [
    pytest.mark.filterwarnings("ignore:builtin type (Swig|swig):DeprecationWarning"),  # python-gdcm's bindings
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),  # MONAI's optional GPU decoder, absent here
    pytest.mark.filterwarnings("ignore:Divide by zero"),  # the blank slice scales to zeros
]

PATIENT = "TCGA_CS_4942_19970222"
SLICES = (1, 9, 11, 13, 17)  # real slice numbers: 1 is blank (the top of the volume), 9 to 13 show the tumor
SPACING, THICKNESS = (0.9375, 0.9375), 5.0


# --- a tiny deterministic model: "tumor" = bright FLAIR (real-looking, cheap, not trivial) --------------------


@pytest.fixture(scope="module")
def predictor() -> TumorPredictor:
    return TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False)


# --- writing DICOM ------------------------------------------------------------------------------------------


def write_slice(path: Path, pixels: np.ndarray, **attributes) -> Path:
    """A single-frame MR image; ``pixels`` (rows, cols) uint8, uint16 or int16; ``attributes`` override."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = attributes.pop("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "MR", "LGG-4942", "Test^Patient"
    ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "19970222", "120000"
    ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "", "", "1"
    ds.Manufacturer, ds.SeriesNumber, ds.SeriesDescription = "test", 1, "FLAIR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelSpacing, ds.SliceThickness = list(SPACING), THICKNESS
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def compress(path: Path, syntax: str) -> Path:
    """Re-encode ``path`` in place: RLE, JPEG 2000 and JPEG-LS with pydicom, JPEG lossless / baseline with GDCM."""
    if syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
        return path
    import gdcm

    # GDCM encodes; pydicom writes, so the object stays what it was (GDCM's writer would make it Enhanced MR).
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    target = {JPEGLosslessSV1: "JPEGLosslessProcess14_1", JPEGBaseline8Bit: "JPEGBaselineProcess1"}[syntax]
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, target)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path) + ".gdcm")
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    encoded = pydicom.dcmread(str(path) + ".gdcm")
    Path(str(path) + ".gdcm").unlink()
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(path)
    assert pydicom.dcmread(path).SOPClassUID == MRImageStorage
    return path


def flair(root: Path, number: int) -> np.ndarray:
    """The FLAIR channel (uint8, (256, 256)) of a real slice."""
    return tifffile.imread(root / PATIENT / f"{PATIENT}_{number}.tif")[..., 1]


def write_series(folder: Path, images: list[np.ndarray], names: list[str] | None = None, **attributes) -> dict:
    """One series, slice k at z = 5k mm. InstanceNumbers run against the positions and the files are named out of
    order, so only ImagePositionPatient gives the right order. Returns the UIDs in position order."""
    folder.mkdir(parents=True, exist_ok=True)
    series = {
        "SeriesInstanceUID": generate_uid(),
        "StudyInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
    }
    series.update({k: attributes.pop(k) for k in list(attributes) if k in series})
    names = names or [f"IM{(7 * k + 3) % 11:04d}" for k in range(len(images))]
    uids = []
    for k, (pixels, name) in enumerate(zip(images, names, strict=True)):
        uid = generate_uid()
        write_slice(
            folder / name,
            pixels,
            SOPInstanceUID=uid,
            InstanceNumber=len(images) - k,
            ImagePositionPatient=[-120.0, -120.0, THICKNESS * k],
            **series,
            **attributes,
        )
        uids.append(uid)
    return {**series, "sop_uids": uids, "paths": [folder / n for n in names]}


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def seg_masks(seg_path: Path, sop_uids: list[str]) -> np.ndarray:
    """The SEG's tumor masks ``(N, rows, cols)`` for the given source instances, read back with highdicom."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, segment_numbers=[1])[..., 0]


# --- the mixed folder of the issue: nested, several series, one compressed, one non-MR, junk -----------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, lgg_root, predictor) -> dict:
    """A nested export: plain FLAIR series (A), the same slices JPEG-lossless, MONOCHROME1 and rescaled (B),
    a CT, an SR, a DICOMDIR, a truncated instance, a duplicate, an empty file and a text file. Run once."""
    root = tmp_path_factory.mktemp("mixed")
    src = root / "export"
    images = [flair(lgg_root, n).astype(np.uint16) * 16 for n in SLICES]  # x16: exact in floating point
    a = write_series(src / "PAT1" / "STUDY" / "FLAIR", images, SeriesNumber=3)
    inverted = [(4095 - im / 8).astype(np.uint16) for im in images]  # MONOCHROME1: bright = low
    b = write_series(
        src / "PAT1" / "STUDY" / "FLAIR_JPEG",
        inverted,
        names=[f"{k}.dcm" for k in range(len(images))],
        SeriesNumber=4,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2.0,
        RescaleIntercept=-1000.0,
        StudyInstanceUID=a["StudyInstanceUID"],
    )
    for path in b["paths"]:
        compress(path, JPEGLosslessSV1)
    junk = src / "misc"
    junk.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), junk / "ct_slice")
    shutil.copy(get_testdata_file("test-SR.dcm"), junk / "report")
    shutil.copy(get_testdata_file("DICOMDIR"), src / "DICOMDIR")
    shutil.copy(a["paths"][0], junk / "copy_of_first")  # the same SOPInstanceUID again
    same_series = {k: a[k] for k in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")}
    truncated = write_series(junk / "trunc", [images[0]], **same_series)["paths"][0]  # a 6th slice of A, cut short
    truncated.write_bytes(truncated.read_bytes()[:-5000])
    (junk / "empty.dcm").write_bytes(b"")
    (junk / "notes.txt").write_text("exported by PACS")
    before = digest(src)
    out = root / "out"
    run = infer_dicom(predictor, src, out)
    return {"src": src, "out": out, "run": run, "A": a, "B": b, "before": before, "images": images, "root": root}


def series_rows(mixed: dict, key: str) -> list[dict]:
    uid = mixed[key]["SeriesInstanceUID"]
    return [r for r in read_predictions(mixed["out"]) if r["SeriesInstanceUID"] == uid]


def summary_of(out: Path, uid: str) -> dict:
    (entry,) = [s for s in json.loads((out / "summary.json").read_text())["series"] if s["series_instance_uid"] == uid]
    return entry


@pytest.mark.real_data
def test_every_mr_slice_gets_a_row_in_slice_order_along_the_normal(mixed):
    for key in ("A", "B"):
        rows = series_rows(mixed, key)
        # position order, although InstanceNumbers and file names run otherwise
        assert [r["SOPInstanceUID"] for r in rows] == mixed[key]["sop_uids"]
        assert [int(r["slice_index"]) for r in rows] == [1, 2, 3, 4, 5]
        assert [int(r["InstanceNumber"]) for r in rows] == [5, 4, 3, 2, 1]
    row = series_rows(mixed, "A")[0]
    assert row["path"] == "PAT1/STUDY/FLAIR/" + mixed["A"]["paths"][0].name and row["PatientID"] == "LGG-4942"
    assert {"tumor_probability", "tumor", "tumor_area_px", "SeriesInstanceUID", "SOPInstanceUID"} <= set(row)
    assert mixed["run"].series_done == 2 and mixed["run"].slices == 10


@pytest.mark.real_data
def test_every_skipped_file_is_listed_with_its_reason(mixed):
    with open(mixed["out"] / "skipped.csv", newline="") as f:
        reasons = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    assert "not a DICOM file" in reasons["misc/notes.txt"]
    assert "not a DICOM file" in reasons["misc/empty.dcm"]
    assert "no pixel data" in reasons["misc/report"] and "SR" in reasons["misc/report"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert "duplicate instance" in reasons["misc/copy_of_first"]
    assert "could not be decoded" in reasons["misc/trunc/IM0003"]
    assert "not MR" in reasons["misc/ct_slice"]


@pytest.mark.real_data
def test_a_non_mr_series_is_skipped_with_the_reason_in_the_summary(mixed):
    summary = json.loads((mixed["out"] / "summary.json").read_text())
    (ct,) = [s for s in summary["series"] if s["modality"] == "CT"]
    assert ct["status"] == "skipped" and "--all-modalities" in ct["reason"]
    assert summary["totals"]["series_processed"] == 2 and summary["totals"]["series_skipped"] == 1


@pytest.mark.real_data
def test_the_seg_reads_back_and_agrees_with_infer_on_the_same_slices_as_tiff(mixed, predictor, tmp_path):
    entry = summary_of(mixed["out"], mixed["A"]["SeriesInstanceUID"])
    seg_path = mixed["out"] / entry["outputs"]["seg"]
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "Tumor"
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == mixed["A"]["SeriesInstanceUID"]
    assert referenced == set(mixed["A"]["sop_uids"])

    tiffs = tmp_path / "tiff"
    tiffs.mkdir()
    for k, image in enumerate(mixed["images"]):
        tifffile.imwrite(tiffs / f"s_{k}.tif", (image // 16).astype(np.uint8))  # the slices as 8-bit grayscale TIFF
    infer_folder(predictor, tiffs, tmp_path / "out")
    from_tiff = np.stack([np.asarray(Image.open(tmp_path / "out" / "masks" / f"s_{k}.png")) > 0 for k in range(5)])
    from_seg = seg_masks(seg_path, mixed["A"]["sop_uids"])
    assert from_tiff.any() and not from_tiff.all()  # a real test: masks with and without tumor pixels
    np.testing.assert_array_equal(from_seg, from_tiff)


@pytest.mark.real_data
def test_compressed_monochrome1_rescaled_series_gives_the_plain_series_masks(mixed):
    out = mixed["out"]
    plain = seg_masks(out / summary_of(out, mixed["A"]["SeriesInstanceUID"])["outputs"]["seg"], mixed["A"]["sop_uids"])
    other = seg_masks(out / summary_of(out, mixed["B"]["SeriesInstanceUID"])["outputs"]["seg"], mixed["B"]["sop_uids"])
    assert (plain == other).mean() > 0.999  # the 12-bit inverted copy differs only by rounding


@pytest.mark.real_data
def test_the_nifti_mask_has_the_series_geometry(mixed, tmp_path):
    from monai.transforms import LoadImage

    entry = summary_of(mixed["out"], mixed["A"]["SeriesInstanceUID"])
    image = nib.load(mixed["out"] / entry["outputs"]["nifti"])
    clean = tmp_path / "series"
    shutil.copytree(mixed["A"]["paths"][0].parent, clean)
    source = LoadImage(reader="ITKReader", image_only=True)(str(clean))  # MONAI reads the folder as a series
    assert image.shape == tuple(source.shape) == (256, 256, 5)
    np.testing.assert_allclose(image.affine, source.affine.numpy(), atol=1e-4)
    assert int(image.header["sform_code"]) == 1
    volume = np.asarray(image.dataobj)
    masks = seg_masks(mixed["out"] / entry["outputs"]["seg"], mixed["A"]["sop_uids"])
    np.testing.assert_array_equal(volume, masks.transpose(2, 1, 0))  # (W, H, D) against (D, H, W)


@pytest.mark.real_data
def test_summary_gives_slices_tumor_slices_max_probability_and_volume_in_mm3(mixed):
    rows = series_rows(mixed, "A")
    entry = summary_of(mixed["out"], mixed["A"]["SeriesInstanceUID"])
    assert entry["slices"] == 5 and entry["tumor_slices"] == sum(int(r["tumor"]) for r in rows)
    assert entry["max_tumor_probability"] == pytest.approx(max(float(r["tumor_probability"]) for r in rows))
    area = sum(int(r["tumor_area_px"]) for r in rows)
    assert entry["slice_spacing_mm"] == THICKNESS
    assert entry["tumor_volume_mm3"] == pytest.approx(area * SPACING[0] * SPACING[1] * THICKNESS, rel=1e-6)


@pytest.mark.real_data
def test_overlays_are_written_for_tumor_slices_only(mixed):
    rows = series_rows(mixed, "A")
    for row in rows:
        has_tumor = int(row["tumor"]) or int(row["tumor_area_px"])
        assert bool(row["overlay"]) == bool(has_tumor)
        if row["overlay"]:
            assert np.asarray(Image.open(mixed["out"] / row["overlay"])).shape == (256, 256, 3)
    assert any(r["overlay"] for r in rows) and not all(r["overlay"] for r in rows)


@pytest.mark.real_data
def test_inputs_are_never_modified(mixed):
    assert digest(mixed["src"]) == mixed["before"]


# --- re-runs, interruption, OUT inside INPUT ----------------------------------------------------------------


@pytest.fixture
def small_series(tmp_path, lgg_root) -> dict:
    return write_series(tmp_path / "in" / "flair", [flair(lgg_root, n).astype(np.uint16) for n in (9, 11)])


@pytest.mark.real_data
def test_a_rerun_skips_finished_series_unless_overwrite(small_series, predictor, tmp_path):
    out = tmp_path / "out"
    first = infer_dicom(predictor, tmp_path / "in", out)
    (folder,) = first.processed
    seg_uid = pydicom.dcmread(out / folder / "seg.dcm").SOPInstanceUID
    again = infer_dicom(predictor, tmp_path / "in", out)
    assert again.reused == [folder] and again.processed == [] and again.slices == 2
    assert pydicom.dcmread(out / folder / "seg.dcm").SOPInstanceUID == seg_uid
    assert len(read_predictions(out)) == 2  # the reports still cover the reused series
    redone = infer_dicom(predictor, tmp_path / "in", out, overwrite=True)
    assert redone.processed == [folder]
    # redone, into the same object: its UIDs come from the source series, its slices and the predictor
    assert pydicom.dcmread(out / folder / "seg.dcm").SOPInstanceUID == seg_uid


@pytest.mark.real_data
def test_a_rerun_with_other_models_or_threshold_redoes_the_series(small_series, predictor, tmp_path):
    out = tmp_path / "out"
    infer_dicom(predictor, tmp_path / "in", out)
    stricter = TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False, threshold=0.9)
    assert infer_dicom(stricter, tmp_path / "in", out).processed  # not the earlier run's masks


@pytest.mark.real_data
def test_a_rerun_with_no_amp_redoes_the_series_made_under_autocast(small_series, tmp_path, weight_args):
    if AutocastInferer().autocast_dtype("cuda" if torch.cuda.is_available() else "cpu") is None:
        pytest.skip("no autocast on this machine: --no-amp changes nothing here")
    out = tmp_path / "out"

    def status(*options: str) -> str:
        assert main(["infer", str(tmp_path / "in"), "-o", str(out), *weight_args, *options]) == 0
        (entry,) = json.loads((out / "summary.json").read_text())["series"]
        return entry["status"]

    assert status() == "processed"
    assert status() == "done earlier"  # same slices, same predictor: reused
    assert status("--no-amp") == "processed"  # float32 masks are not the autocast ones


@pytest.mark.real_data
def test_an_interrupted_run_leaves_no_half_written_output(small_series, predictor, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(series_step, "seg_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        infer_dicom(predictor, tmp_path / "in", out)
    assert list(out.iterdir()) == []  # no series folder, no temporary folder, no report
    monkeypatch.undo()
    assert infer_dicom(predictor, tmp_path / "in", out).processed


@pytest.mark.real_data
def test_output_inside_the_input_is_never_read_back(small_series, predictor, tmp_path):
    src = tmp_path / "in"
    before = digest(src)
    for _ in range(2):
        run = infer_dicom(predictor, src, src, overwrite=True)
        assert run.skipped == [] and run.slices == 2
    assert all(digest(src)[p] == h for p, h in before.items())


# --- safety: names from DICOM attributes, anonymization -----------------------------------------------------


@pytest.mark.parametrize(
    "value", ["../../evil", "/etc/passwd", "..", "a\x00b\nc\td", "C:\\Windows\\x", "~root", ".hidden", "-rf"]
)
def test_safe_name_keeps_no_separator_dot_dot_or_control_character(value):
    name = safe_name(value)
    assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith((".", "-", "~"))
    assert all(c.isalnum() or c in "._-" for c in name) and name.isascii()


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_hostile_attributes_cannot_escape_the_output_folder(tmp_path, lgg_root, predictor):
    hostile = {
        "PatientID": "../../../../escaped",
        "SeriesDescription": "/tmp/abs\x00/../../x",
        "StudyDate": "..\\..\\win",
    }
    write_series(tmp_path / "in", [flair(lgg_root, 11).astype(np.uint16)], **hostile)
    outside_before = {p for p in tmp_path.rglob("*") if "out" not in p.relative_to(tmp_path).parts}
    run = infer_dicom(predictor, tmp_path / "in", tmp_path / "out")
    (folder,) = run.processed
    assert (tmp_path / "out" / folder).is_dir() and folder == safe_name(folder, 200)
    assert {p for p in tmp_path.rglob("*") if "out" not in p.relative_to(tmp_path).parts} == outside_before
    assert all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in (tmp_path / "out").rglob("*"))


@pytest.mark.real_data
def test_anonymize_keeps_patient_name_and_id_out_of_the_reports(tmp_path, lgg_root, predictor):
    write_series(tmp_path / "in", [flair(lgg_root, 11).astype(np.uint16)], PatientID="PAT-QZXJ", PatientName="Doe^Jane")
    out = tmp_path / "out"
    run = infer_dicom(predictor, tmp_path / "in", out, anonymize=True)
    reports = (out / "predictions.csv").read_text() + (out / "summary.json").read_text() + "/".join(run.processed)
    assert "QZXJ" not in reports and "Doe" not in reports and "Jane" not in reports  # no digits: UIDs hold any
    assert "PatientID" not in read_predictions(out)[0]


# --- scanning: duplicates, volumes ---------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["IM0001", "IM0003"])  # the truncated copy sorts before / after the good file
def test_a_truncated_copy_of_a_slice_does_not_lose_the_slice(tmp_path, broken):
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    good = write_slice(tmp_path / "IM0002", pixels, SeriesInstanceUID=generate_uid())
    (tmp_path / broken).write_bytes(good.read_bytes()[:-1000])  # same SOPInstanceUID, pixel data cut short
    scan = scan_dicom_folder(tmp_path)
    ((frame,),) = [s.frames for s in scan.series]
    assert frame.path == good
    np.testing.assert_array_equal(decode_frame(frame), pixels)
    assert scan.skipped == [(str(tmp_path / broken), "duplicate instance (same SOPInstanceUID as IM0002)")]


@pytest.mark.parametrize(
    "attributes, slice_mm",
    [({"SpacingBetweenSlices": 6.0}, 6.0), ({}, THICKNESS), ({"SliceThickness": None}, None)],
    ids=["spacing-between-slices", "slice-thickness", "unknown"],
)
def test_a_one_slice_series_and_its_file_give_the_same_voxel_volume(tmp_path, attributes, slice_mm):
    path = write_slice(tmp_path / "x.dcm", np.zeros((8, 8), np.uint16), SeriesInstanceUID=generate_uid(), **attributes)
    (series,) = scan_dicom_folder(path).series
    assert dicom_voxel_volume_mm3(path) == series.volume_mm3(1)
    if slice_mm is None:
        assert series.volume_mm3(10) is None
    else:
        assert series.volume_mm3(10) == pytest.approx(10 * SPACING[0] * SPACING[1] * slice_mm)


# --- pixels -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"]
)
def test_compressed_and_big_endian_pixels_decode_like_the_uncompressed_file(name):
    reference = scan_dicom_folder(get_testdata_file("MR_small.dcm")).series[0].frames[0]
    frame = scan_dicom_folder(get_testdata_file(name)).series[0].frames[0]
    np.testing.assert_array_equal(decode_frame(frame), decode_frame(reference))


@pytest.mark.parametrize(
    "name, tolerance", [("SC_rgb_jpeg_gdcm.dcm", 0), ("SC_rgb_jpeg_dcmtk.dcm", 8), ("SC_rgb_gdcm_KY.dcm", 0)]
)
def test_jpeg_lossless_baseline_and_jpeg2000_decode(name, tolerance):
    """Real files of other encoders: JPEG lossless (process 14), JPEG baseline (lossy) and JPEG 2000."""
    reference = decode_frame(scan_dicom_folder(get_testdata_file("SC_rgb_rle.dcm")).series[0].frames[0])
    decoded = decode_frame(scan_dicom_folder(get_testdata_file(name)).series[0].frames[0])
    assert decoded.shape == reference.shape == (100, 100, 3)
    assert np.abs(decoded - reference).mean() <= tolerance


@pytest.mark.real_data
@pytest.mark.parametrize(
    "dtype, syntax, photometric, slope, intercept",
    [
        ("uint16", None, "MONOCHROME2", 1.0, 0.0),
        ("int16", RLELossless, "MONOCHROME2", 1.0, 1024.0),  # signed: stored values below zero
        ("uint16", JPEG2000Lossless, "MONOCHROME1", 0.5, -10.0),
        ("uint16", JPEGLosslessSV1, "MONOCHROME2", 3.0, 0.0),
        ("uint8", JPEGBaseline8Bit, "MONOCHROME2", 1.0, 0.0),  # 8-bit, lossy
    ],
)
def test_bit_depths_sign_rescale_monochrome1_and_compression_give_the_same_network_input(
    tmp_path, lgg_root, predictor, dtype, syntax, photometric, slope, intercept
):
    real = flair(lgg_root, 11).astype(np.float64)
    stored = (real - intercept) / slope if dtype != "uint8" else real
    stored = stored * (4 if dtype != "uint8" else 1)
    if photometric == "MONOCHROME1":
        stored = stored.max() + stored.min() - stored
    path = write_slice(
        tmp_path / "x.dcm",
        np.round(stored).astype(dtype),
        PhotometricInterpretation=photometric,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        SeriesInstanceUID=generate_uid(),
    )
    if syntax:
        compress(path, syntax)
    (series,) = scan_dicom_folder(path).series
    got = predictor.preprocess_array(to_channel_first(decode_frame(series.frames[0])))
    want = predictor.preprocess_array(real.T[None])
    assert float((got - want).abs().max()) <= (6 if syntax == JPEGBaseline8Bit else 1) / 255


def test_rescale_slope_and_intercept_are_applied_also_per_frame_of_an_enhanced_object(tmp_path):
    import highdicom as hd

    pixels = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    series = write_series(tmp_path / "single", [pixels, pixels + 7], RescaleSlope=2.0, RescaleIntercept=-100.0)
    expected = [pixels * 2.0 - 100, (pixels + 7) * 2.0 - 100]
    (single,) = scan_dicom_folder(tmp_path / "single").series
    for frame, want in zip(single.frames, expected, strict=True):
        np.testing.assert_array_equal(decode_frame(frame), want)
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(p) for p in series["paths"]], hd.UID(), 9, hd.UID(), 1
    )  # rescale now sits in the functional groups
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "enhanced.dcm")
    (multi,) = scan_dicom_folder(tmp_path / "multi").series
    assert [f.frame is not None for f in multi.frames] == [True, True]
    for frame, want in zip(multi.frames, expected, strict=True):
        np.testing.assert_array_equal(decode_frame(frame), want)


@pytest.mark.real_data
def test_predict_arrays_equals_predict_paths_on_the_same_pixels(lgg_root, predictor):
    path = lgg_root / PATIENT / f"{PATIENT}_11.tif"
    (from_file,) = predictor.predict_paths([path])
    (from_array,) = predictor.predict_arrays([("x", tifffile.imread(path).transpose(2, 1, 0))])
    assert from_file.tumor_probability == from_array.tumor_probability
    np.testing.assert_array_equal(from_file.mask, from_array.mask)


@pytest.mark.real_data
def test_a_multiframe_object_gives_the_masks_of_its_single_frame_series(small_series, predictor, tmp_path):
    import highdicom as hd

    frames = [pydicom.dcmread(p) for p in small_series["paths"]]
    multiframe = hd.legacy.LegacyConvertedEnhancedMRImage(frames, hd.UID(), 9, hd.UID(), 1)
    (tmp_path / "mf").mkdir()
    multiframe.save_as(tmp_path / "mf" / "enhanced.dcm")
    single = infer_dicom(predictor, tmp_path / "in", tmp_path / "out1")
    multi = infer_dicom(predictor, tmp_path / "mf", tmp_path / "out2")
    rows = read_predictions(tmp_path / "out2")
    assert sorted(r["frame"] for r in rows) == ["1", "2"] and rows[0]["path"] == "enhanced.dcm"
    a = nib.load(tmp_path / "out1" / single.processed[0] / "mask.nii.gz")
    b = nib.load(tmp_path / "out2" / multi.processed[0] / "mask.nii.gz")
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    seg = pydicom.dcmread(tmp_path / "out2" / multi.processed[0] / "seg.dcm")
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == multiframe.SOPInstanceUID
    )


@pytest.mark.real_data
def test_no_seg_without_a_tumor_pixel_unless_always_seg(tmp_path, predictor):
    write_series(tmp_path / "in", [np.full((64, 64), 300, np.uint16)] * 2)  # uniform: nothing bright
    out = tmp_path / "out"
    (folder,) = infer_dicom(predictor, tmp_path / "in", out).processed
    assert not (out / folder / "seg.dcm").exists() and (out / folder / "mask.nii.gz").exists()
    infer_dicom(predictor, tmp_path / "in", out, overwrite=True, always_seg=True)
    seg = pydicom.dcmread(out / folder / "seg.dcm")
    sources = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert seg.Modality == "SEG" and len(sources) == 2 and not seg_masks(out / folder / "seg.dcm", sources).any()


# --- the command line and the bundle ------------------------------------------------------------------------


@pytest.mark.real_data
def test_cli_reads_a_dicom_folder_as_series(small_series, tmp_path, weight_args, capsys):
    assert looks_like_dicom_input(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "in"), "-o", str(out), *weight_args]) == 0
    assert "1 DICOM series" in capsys.readouterr().out
    assert len(read_predictions(out)) == 2 and (out / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["segmentation_model"]["sha256"]  # which weights made these masks


def test_cli_without_an_mr_series_fails_with_a_clear_message(tmp_path, weight_args, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "ct")
    (src / "readme.txt").write_text("junk")
    assert main(["infer", str(src), "-o", str(tmp_path / "out"), *weight_args]) == 1
    err = capsys.readouterr().err
    assert "no MR image series" in err and "--all-modalities" in err and "Traceback" not in err
    assert main(["infer", str(src), "-o", str(tmp_path / "out"), "--all-modalities", *weight_args]) == 0


@pytest.mark.real_data
def test_bundle_dicom_variant_gives_the_cli_masks(small_series, tmp_path):
    """MONAI's way: ITKReader reads the folder as one series, SliceInferer runs the 2D U-Net on each slice."""
    from monai.bundle import ConfigWorkflow
    from test_bundles import copy_bundle

    root = copy_bundle("brain_tumor_segmentation", tmp_path)
    torch.manual_seed(0)
    unet = MobileNetV2UNet().eval()
    predictor = TumorPredictor(unet, BrightDetector(), input_mode="all", spatial_size=(64, 64), amp=False)
    pixels = [pydicom.dcmread(path).pixel_array for path in small_series["paths"]]
    images = torch.stack([predictor.preprocess_array(to_channel_first(p)) for p in pixels])
    with torch.no_grad():  # centre the random logits on the threshold: masks with and without tumor pixels
        unet.segmentation_head[0].bias.sub_(unet(images).median())
    torch.save(unet.state_dict(), root / "models" / "model.pt")

    run = infer_dicom(predictor, tmp_path / "in", tmp_path / "cli")
    cli = np.asarray(nib.load(tmp_path / "cli" / run.processed[0] / "mask.nii.gz").dataobj)
    wf = ConfigWorkflow(
        config_file=[str(root / "configs" / "inference.json"), str(root / "configs" / "inference_dicom.json")],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=None,
        bundle_root=str(root),
        dataset_dir=str(tmp_path / "in" / "flair"),
        output_dir=str(tmp_path / "bundle"),
        spatial_size=[64, 64],
        amp=False,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    (written,) = (tmp_path / "bundle").glob("*_seg.nii.gz")
    bundle = nib.load(written)
    assert cli.any() and not cli.all()
    assert bundle.shape == cli.shape and (np.asarray(bundle.dataobj) == cli).mean() > 0.999
    np.testing.assert_allclose(bundle.affine, nib.load(tmp_path / "cli" / run.processed[0] / "mask.nii.gz").affine)


# --- which series, the measurement report, the objects' UIDs -------------------------------------------------


@pytest.mark.real_data
def test_the_flair_series_of_a_study_is_chosen_by_default_and_series_regex_chooses_otherwise(
    tmp_path, lgg_root, predictor
):
    images = [flair(lgg_root, 11).astype(np.uint16)]
    study = generate_uid()
    t2_flair = write_series(
        tmp_path / "in" / "a", images, SeriesDescription="AX T2", ProtocolName="t2_flair_tra", StudyInstanceUID=study
    )
    t1 = write_series(
        tmp_path / "in" / "b", images, SeriesDescription="T1 SE", ProtocolName="t1_se", StudyInstanceUID=study
    )
    lone = write_series(tmp_path / "in" / "c", images, SeriesDescription="DWI")  # its study names no FLAIR
    out = tmp_path / "out"
    run = infer_dicom(predictor, tmp_path / "in", out)
    selection = json.loads((out / "summary.json").read_text())["series_selection"]
    assert sorted(selection["chosen"]) == sorted([t2_flair["SeriesInstanceUID"], lone["SeriesInstanceUID"]])
    assert [s["series_instance_uid"] for s in selection["not_chosen"]] == [t1["SeriesInstanceUID"]]
    assert len(run.processed) == 2 and "names FLAIR" in run.skipped_series[0]["reason"]
    with open(out / "skipped.csv", newline="") as f:
        assert any(row["path"].startswith("b/") for row in csv.DictReader(f))
    run = infer_dicom(predictor, tmp_path / "in", tmp_path / "out2", series="^t1")
    assert len(run.processed) == 1 and json.loads((tmp_path / "out2" / "summary.json").read_text())["series_selection"][
        "chosen"
    ] == [t1["SeriesInstanceUID"]]


def test_a_malformed_series_regex_is_a_clear_error(tmp_path, weight_args, capsys):
    write_series(tmp_path / "in", [np.zeros((16, 16), np.uint16)])
    assert main(["infer", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--series", "(", *weight_args]) == 2
    assert "--series '(' is not a valid regular expression" in capsys.readouterr().err


@pytest.mark.real_data
def test_the_sr_reports_the_summary_numbers_and_references_the_seg(small_series, predictor, tmp_path):
    import highdicom as hd

    out = tmp_path / "out"
    (folder,) = infer_dicom(predictor, tmp_path / "in", out).processed
    (entry,) = json.loads((out / "summary.json").read_text())["series"]
    sr = hd.sr.srread(out / folder / "sr.dcm")
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert entry["tumor_volume_mm3"] > 0 and values["Volume"] == pytest.approx(entry["tumor_volume_mm3"], abs=5e-4)
    assert values["Number of slices with tumor"] == entry["segmented_slices"]
    assert values["Area"] == pytest.approx(entry["largest_tumor_area_mm2"], abs=5e-4)
    seg = pydicom.dcmread(out / folder / "seg.dcm")
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert sr.PatientID == seg.PatientID == "LGG-4942" and sr.StudyInstanceUID == small_series["StudyInstanceUID"]


@pytest.mark.real_data
def test_without_a_tumor_the_sr_reports_zero_and_references_the_source_images(tmp_path, predictor):
    import highdicom as hd

    series = write_series(tmp_path / "in", [np.full((64, 64), 300, np.uint16)] * 2)  # uniform: nothing bright
    out = tmp_path / "out"
    (folder,) = infer_dicom(predictor, tmp_path / "in", out).processed
    assert not (out / folder / "seg.dcm").exists()
    sr = hd.sr.srread(out / folder / "sr.dcm")
    (group,) = sr.content.get_image_measurement_groups()
    assert {m.name.meaning: m.value for m in group.get_measurements()} == {
        "Volume": 0,
        "Number of slices with tumor": 0,
        "Area": 0,
    }
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {i.ReferencedSOPInstanceUID for i in evidence} == set(series["sop_uids"])


@pytest.mark.real_data
def test_seg_and_sr_uids_are_the_same_for_the_same_inputs_and_predictor_only(small_series, predictor, tmp_path):
    def uids(out: Path, model: TumorPredictor) -> list[str]:
        (folder,) = infer_dicom(model, tmp_path / "in", out).processed
        return [pydicom.dcmread(out / folder / name).SOPInstanceUID for name in ("seg.dcm", "sr.dcm")]

    first = uids(tmp_path / "a", predictor)
    assert uids(tmp_path / "b", predictor) == first  # another OUT, the same objects
    stricter = TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False, threshold=0.9)
    other = uids(tmp_path / "c", stricter)
    assert not set(other) & set(first) and all(uid.startswith("2.25.") for uid in first + other)


def test_seg_and_sr_uids_keep_the_values_of_earlier_versions():
    """The UIDs are derived from the source series and the reuse key alone: the same inputs and predictor give the
    objects an earlier version stored (a PACS holding them gets no duplicate): these values are bt_monai 0.3.0's."""
    key = {"slices": "a" * 64, "models": "b" * 64, "outputs": 2}
    assert object_uids("1.2.840.99.1", key, "SEG") == (
        "2.25.77580721508874107978486175566923944560",
        "2.25.207634393346474810392600389158296992783",
    )
    assert object_uids("1.2.840.99.1", key, "SR") == (
        "2.25.66660313073144594074013738895671893536",
        "2.25.135639996661818146576027409030735534292",
    )


@pytest.mark.real_data
def test_the_marker_records_the_reuse_key_under_the_key_earlier_versions_read(small_series, predictor, tmp_path):
    """series.json keeps the reuse key (slices digest, predictor fingerprint, outputs version) under "fingerprint",
    where every earlier version wrote and reads it: their finished folders are reused, and they reuse ours."""
    out = tmp_path / "out"
    (folder,) = infer_dicom(predictor, tmp_path / "in", out).processed
    marker = json.loads((out / folder / "series.json").read_text())
    (series,) = scan_dicom_folder(tmp_path / "in").series
    assert marker["fingerprint"] == reuse_key_for(series, predictor.fingerprint())
    assert marker["fingerprint"] == {"slices": slices_digest(series), "models": predictor.fingerprint(), "outputs": 2}


@pytest.mark.real_data
def test_the_summary_records_the_options_and_every_predictor_setting(small_series, tmp_path):
    predictor = TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False, min_component_px=7)
    infer_dicom(predictor, tmp_path / "in", tmp_path / "out", always_seg=True)
    options = json.loads((tmp_path / "out" / "summary.json").read_text())["options"]
    settings = predictor.settings.as_dict()
    assert {name: options[name] for name in settings} == settings and options["min_component_px"] == 7
    assert options["always_seg"] is True and options["series"] is None and "batch_size" not in options
