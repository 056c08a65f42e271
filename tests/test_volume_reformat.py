"""The segmentation bundle's DICOM volume path in any plane: ``ReformatToAxiald`` resamples a sagittal series to
axial slices (the rule of :mod:`bt_monai.transforms.reformat`), ``SlicewiseToMaskd`` maps the masks back onto the
series' own grid; an axial series takes the path it always took.

The volumes are real LGG slices (the FLAIR channel of TCGA_CS_4942_19970222) taken as an axial volume of
0.9375 mm pixels and 5 mm slices; the same voxels are written as an axial and as a sagittal DICOM series. The
bundle runs are the shipped ``inference_dicom.json`` with the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from bt_monai.transforms import ReformatToAxiald, axial_plan_from_meta
from bt_monai.transforms.reformat import plan_axial

pytestmark = [
    pytest.mark.filterwarnings("ignore:builtin type (Swig|swig):DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),
    pytest.mark.filterwarnings("ignore:Divide by zero"),
]

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle" / "brain_tumor_segmentation"
PATIENT = "TCGA_CS_4942_19970222"
NUMBERS = range(6, 18)  # 12 real slices around the tumor (9 to 13 show it)
PIXEL, SLICE = 0.9375, 5.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --- the volume and its two series ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def axial_stack(lgg_root) -> np.ndarray:
    """uint16 ``(N, rows, cols)``: axial image k at z = 5k mm (LPS), the FLAIR channel x16 (exact in float)."""
    images = [tifffile.imread(lgg_root / PATIENT / f"{PATIENT}_{n}.tif")[..., 1] for n in NUMBERS]
    return np.stack(images).astype(np.uint16) * 16


def axial_ras_affine() -> np.ndarray:
    """RAS affine of the axial volume ``(W = cols, H = rows, D = slices)``: IOP 1\\0\\0\\0\\1\\0, IPP -120\\-120\\5k."""
    lps = np.eye(4)
    lps[:3, :3] = np.diag([PIXEL, PIXEL, SLICE])
    lps[:3, 3] = [-120.0, -120.0, 0.0]
    return LPS_TO_RAS @ lps


def sagittal_ras_affine(n_slices: int, n_cols: int = 256) -> np.ndarray:
    """RAS affine of the sagittal series ``(W = image columns: A-P, H = image rows: S-I, D = images)``, the images
    ordered along their normal (row x column cosines = (-1, 0, 0) LPS), as ITK orders them."""
    lps = np.eye(4)
    lps[:3, 0] = [0.0, PIXEL, 0.0]  # along a row: posterior
    lps[:3, 1] = [0.0, 0.0, -SLICE]  # down a column: inferior
    lps[:3, 2] = [-PIXEL, 0.0, 0.0]  # the normal: towards the patient's right
    lps[:3, 3] = [-120.0 + PIXEL * (n_cols - 1), -120.0, SLICE * (n_slices - 1)]
    return LPS_TO_RAS @ lps


def write_slice(path: Path, pixels: np.ndarray, **attributes) -> Path:
    """A single-frame MR image; ``pixels`` (rows, cols) uint16; ``attributes`` (geometry, UIDs) set as given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "MR", "LGG-4942", "Test^Patient"
    ds.StudyDate, ds.Manufacturer, ds.SeriesNumber, ds.SeriesDescription = "19970222", "test", 1, "FLAIR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_series(folder: Path, images: list[np.ndarray], positions: list[list[float]], **attributes) -> Path:
    """One series: image k at ImagePositionPatient ``positions[k]``; ``attributes`` shared (orientation, spacing)."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {k: generate_uid() for k in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")}
    for k, (pixels, position) in enumerate(zip(images, positions, strict=True)):
        write_slice(
            folder / f"IM{k:04d}", pixels, InstanceNumber=k + 1, ImagePositionPatient=position, **uids, **attributes
        )
    return folder


def write_axial(folder: Path, stack: np.ndarray) -> Path:
    return write_series(
        folder,
        list(stack),
        [[-120.0, -120.0, SLICE * k] for k in range(len(stack))],
        ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        PixelSpacing=[PIXEL, PIXEL],
        SliceThickness=SLICE,
    )


def write_sagittal(folder: Path, stack: np.ndarray) -> Path:
    """The same voxels as sagittal images, one per axial image column c (x = -120 + 0.9375 c, LPS): rows run
    head to foot (column cosines 0\\0\\-1, 5 mm apart), columns anterior to posterior (row cosines 0\\1\\0)."""
    n = len(stack)
    return write_series(
        folder,
        [stack[::-1, :, c] for c in range(stack.shape[2])],  # (N, rows): image row i = axial slice N-1-i
        [[-120.0 + PIXEL * c, -120.0, SLICE * (n - 1)] for c in range(stack.shape[2])],
        ImageOrientationPatient=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
        PixelSpacing=[SLICE, PIXEL],  # [between rows, between columns]
        SliceThickness=PIXEL,
    )


def run_bundle(series: Path, out: Path, **override) -> tuple[nib.Nifti1Image, dict]:
    """The shipped bundle's inference_dicom.json on one series folder: (written mask, the image's metadata)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "inference_dicom.json")],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type=None,
        bundle_root=str(BUNDLE),
        dataset_dir=str(series),
        output_dir=str(out),
        device="cpu",
        **override,
    )
    wf.initialize()
    wf.run()
    (item,) = wf.parser.get_parsed_content("evaluator").state.output  # batch_size 1: one decollated item
    wf.finalize()
    (written,) = out.glob("*_seg.nii.gz")
    return nib.load(written), dict(item["pred"].meta)


def on_grid(mask: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``mask``'s values at the voxel centres of another grid (``affine``, ``shape``) that lie on its own voxels."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = affine[:3, :3] @ index.T + affine[:3, 3:]
    theirs = np.linalg.inv(mask.affine)[:3] @ np.vstack([world, np.ones(len(index))])
    rounded = np.rint(theirs).astype(int)
    np.testing.assert_allclose(theirs, rounded, atol=1e-3)  # the grids share their voxels
    assert (rounded >= 0).all() and (rounded.T < mask.shape).all()
    return np.asarray(mask.dataobj)[tuple(rounded)].reshape(shape)


@pytest.fixture(scope="module")
def axial_series(tmp_path_factory, axial_stack) -> Path:
    return write_axial(tmp_path_factory.mktemp("axial") / "series", axial_stack)


@pytest.fixture(scope="module")
def axial_run(axial_series) -> tuple[nib.Nifti1Image, dict]:
    return run_bundle(axial_series, axial_series.parent / "out")


# --- the transform -------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_reformat_to_axial_puts_a_sagittal_volume_on_the_axial_grid_and_leaves_an_axial_one(axial_stack):
    n = len(axial_stack)
    axial = torch.as_tensor(axial_stack.transpose(2, 1, 0)[None].astype(np.float32))  # (1, W = cols, H = rows, D)
    # the sagittal volume (1, W = rows of the axial images, H = N - 1 - k, D = 255 - column), as ITK reads it
    sagittal = axial.flip(3).permute(0, 2, 3, 1).flip(3).contiguous()
    assert sagittal.shape == (1, 256, n, 256)
    transform = ReformatToAxiald("image", tolerance_deg=10, pixel_mm=PIXEL, slice_mm=SLICE, min_slices=8)

    out = transform({"image": MetaTensor(sagittal, affine=torch.as_tensor(sagittal_ras_affine(n)))})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 256, 256, n) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), axial, rtol=1e-4, atol=1e-3)  # lattice points: float rounding
    np.testing.assert_allclose(out.affine.numpy(), axial_ras_affine(), atol=1e-6)
    assert [int(s) for s in out.meta["spatial_shape"]] == [256, 256, n]
    plan = axial_plan_from_meta(out.meta)
    assert plan.reformat and plan.plane == "sagittal" and plan.source_shape == (256, n, 256)
    np.testing.assert_allclose(plan.source_affine, sagittal_ras_affine(n))

    image = MetaTensor(axial.clone(), affine=torch.as_tensor(axial_ras_affine()))
    passed = transform({"image": image})["image"]
    assert passed is image and torch.equal(passed.as_tensor(), axial)
    assert not axial_plan_from_meta(passed.meta).reformat and passed.meta["axial_plan"]["plane"] == "axial"


def test_the_recorded_plan_survives_collation_and_decollation():
    affine = sagittal_ras_affine(12)
    plan = plan_axial(affine, (256, 12, 256))
    image = MetaTensor(torch.zeros(1, 256, 12, 256), affine=torch.as_tensor(affine))
    out = ReformatToAxiald("image")({"image": image})
    (item,) = decollate_batch(list_data_collate([out]))
    for meta in (list_data_collate([out])["image"].meta, item["image"].meta):
        back = axial_plan_from_meta(meta)
        assert back.reformat and back.reason == plan.reason and back.plane == plan.plane
        assert back.source_shape == plan.source_shape and back.axial_shape == plan.axial_shape
        np.testing.assert_allclose(back.source_affine, plan.source_affine)
        np.testing.assert_allclose(back.axial_affine, plan.axial_affine)
    assert axial_plan_from_meta({}) is None


# --- the bundle ----------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_bundle_masks_a_sagittal_series_on_its_own_grid_as_the_axial_series(tmp_path, axial_stack, axial_run):
    n = len(axial_stack)
    sagittal, meta = run_bundle(write_sagittal(tmp_path / "series", axial_stack), tmp_path / "out")
    plan = axial_plan_from_meta(meta)
    assert plan.reformat and plan.plane == "sagittal" and plan.axial_shape == (256, 256, n)

    assert sagittal.shape == (256, n, 256)  # the series' own grid: (columns, rows, images)
    np.testing.assert_allclose(sagittal.affine, sagittal_ras_affine(n), atol=1e-4)
    mask = np.asarray(sagittal.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}

    axial_mask, _ = axial_run
    expected = on_grid(axial_mask, sagittal.affine, sagittal.shape)
    assert expected.any() and not expected.all()
    # The axial grid of the plan lies on the sagittal voxels, so the network sees the axial series' slices (within
    # float rounding: ~1e-5 relative, from the trilinear weights, both ways). Pixel for pixel equal on CPU here; a
    # probability that close to the threshold could flip a voxel elsewhere (another BLAS, a GPU), hence Dice.
    dice = 2 * (mask & expected).sum() / (mask.sum() + expected.sum())
    assert dice >= 0.99 and (mask != expected).mean() < 1e-4


@pytest.mark.real_data
def test_bundle_predicts_an_axial_series_as_before(tmp_path, axial_stack, axial_series, axial_run):
    new, meta = axial_run
    plan = axial_plan_from_meta(meta)
    assert not plan.reformat and plan.plane == "axial" and "within 10" in plan.reason
    # the pipeline as it was: nothing between LoadImaged and SlicewisePreprocessd, no plan in the metadata
    old, old_meta = run_bundle(
        axial_series,
        tmp_path / "old",
        **{"preprocessing#transforms#1": {"_target_": "Identityd", "keys": "image"}},
    )
    assert "axial_plan" not in old_meta
    assert new.shape == old.shape == (256, 256, len(axial_stack))
    np.testing.assert_array_equal(np.asarray(new.dataobj), np.asarray(old.dataobj))
    np.testing.assert_array_equal(new.affine, old.affine)
    np.testing.assert_allclose(new.affine, axial_ras_affine(), atol=1e-4)
