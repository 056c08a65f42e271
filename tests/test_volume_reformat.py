"""The segmentation bundle's DICOM volume path in any plane: ``ReformatToAxiald`` resamples a sagittal series to
axial slices (the rule of :mod:`bt_monai.transforms.reformat`), ``SlicewiseToMaskd`` maps the masks back onto the
series' own grid; an axial series takes the path it always took; the DICOM app's ``mask.nii.gz`` of a sagittal
series is the bundle's mask.

The volumes are real LGG slices (the FLAIR channel of TCGA_CS_4942_19970222) taken as an axial volume of
0.9375 mm pixels and 5 mm slices; the same voxels are written as an axial and as a sagittal DICOM series
(:mod:`bt_monai.writers.dicom_series`). The bundle runs are the shipped ``inference_dicom.json`` with the shipped
weights.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate

from bt_monai.transforms import ReformatToAxiald, axial_plan_from_meta
from bt_monai.transforms.reformat import plan_axial
from bt_monai.writers.dicom_series import axial_affine, reslice, write_volume_series

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


# --- the volume and its two series ---------------------------------------------------------------------------

AXIAL = axial_affine(PIXEL, SLICE)  # the axial volume's RAS affine: IOP 1\\0\\0\\0\\1\\0, image k at IPP -120\\-120\\5k


@pytest.fixture(scope="module")
def axial_volume(lgg_root) -> np.ndarray:
    """uint16 ``(W = cols, H = rows, D = N)`` on :data:`AXIAL`: the FLAIR channel x16 (exact in float)."""
    images = [tifffile.imread(lgg_root / PATIENT / f"{PATIENT}_{n}.tif")[..., 1] for n in NUMBERS]
    return np.stack(images, axis=-1).transpose(1, 0, 2).astype(np.uint16) * 16


def images_reversed(affine: np.ndarray, n_images: int) -> np.ndarray:
    """``affine`` of a ``(W, H, D)`` volume with its D axis (the images) in reverse order. ``reslice``'s sagittal
    has its images from the patient's right to left; ITK (and DicomSeries) order them along their normal (row x
    column cosines = (-1, 0, 0) LPS: left to right), so they read that series back this way."""
    return affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, n_images - 1], [0, 0, 0, 1.0]])


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
def axial_series(tmp_path_factory, axial_volume) -> Path:
    folder = tmp_path_factory.mktemp("axial") / "series"
    write_volume_series(folder, axial_volume, AXIAL)
    return folder


@pytest.fixture(scope="module")
def axial_run(axial_series) -> tuple[nib.Nifti1Image, dict]:
    return run_bundle(axial_series, axial_series.parent / "out")


@pytest.fixture(scope="module")
def sagittal_series(tmp_path_factory, axial_volume) -> tuple[Path, np.ndarray]:
    """The axial voxels as 256 sagittal images (rows head to foot, columns anterior to posterior): the series'
    folder and the affine it was written with."""
    folder = tmp_path_factory.mktemp("sagittal") / "series"
    volume, affine = reslice(axial_volume, AXIAL, "sagittal")
    write_volume_series(folder, volume, affine)
    return folder, affine


@pytest.fixture(scope="module")
def sagittal_run(sagittal_series) -> tuple[nib.Nifti1Image, dict]:
    folder, _ = sagittal_series
    return run_bundle(folder, folder.parent / "out")


# --- the transform -------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_reformat_to_axial_puts_a_sagittal_volume_on_the_axial_grid_and_leaves_an_axial_one(axial_volume):
    n = axial_volume.shape[2]
    axial = torch.as_tensor(axial_volume[None].astype(np.float32))  # (1, W = cols, H = rows, D)
    # the sagittal volume (1, W = rows of the axial images, H = N - 1 - k, D = column)
    volume, affine = reslice(axial_volume, AXIAL, "sagittal")
    sagittal = torch.as_tensor(volume[None].astype(np.float32))
    assert sagittal.shape == (1, 256, n, 256)
    transform = ReformatToAxiald("image", tolerance_deg=10, pixel_mm=PIXEL, slice_mm=SLICE, min_slices=8)

    out = transform({"image": MetaTensor(sagittal, affine=torch.as_tensor(affine))})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 256, 256, n) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), axial, rtol=1e-4, atol=1e-3)  # lattice points: float rounding
    np.testing.assert_allclose(out.affine.numpy(), AXIAL, atol=1e-6)
    assert [int(s) for s in out.meta["spatial_shape"]] == [256, 256, n]
    plan = axial_plan_from_meta(out.meta)
    assert plan.reformat and plan.plane == "sagittal" and plan.source_shape == (256, n, 256)
    np.testing.assert_allclose(plan.source_affine, affine)

    image = MetaTensor(axial.clone(), affine=torch.as_tensor(AXIAL))
    passed = transform({"image": image})["image"]
    assert passed is image and torch.equal(passed.as_tensor(), axial)
    assert not axial_plan_from_meta(passed.meta).reformat and passed.meta["axial_plan"]["plane"] == "axial"


def test_the_recorded_plan_survives_collation_and_decollation():
    _, affine = reslice(np.zeros((256, 256, 12), np.uint16), AXIAL, "sagittal")
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
def test_bundle_masks_a_sagittal_series_on_its_own_grid_as_the_axial_series(
    axial_volume, sagittal_series, sagittal_run, axial_run
):
    n = axial_volume.shape[2]
    _, written = sagittal_series
    sagittal, meta = sagittal_run
    plan = axial_plan_from_meta(meta)
    assert plan.reformat and plan.plane == "sagittal" and plan.axial_shape == (256, 256, n)

    assert sagittal.shape == (256, n, 256)  # the series' own grid: (columns, rows, images)
    np.testing.assert_allclose(sagittal.affine, images_reversed(written, 256), atol=1e-4)
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
def test_bundle_predicts_an_axial_series_as_before(tmp_path, axial_volume, axial_series, axial_run):
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
    assert new.shape == old.shape == (256, 256, axial_volume.shape[2])
    np.testing.assert_array_equal(np.asarray(new.dataobj), np.asarray(old.dataobj))
    np.testing.assert_array_equal(new.affine, old.affine)
    np.testing.assert_allclose(new.affine, AXIAL, atol=1e-4)


# --- the DICOM app -------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_the_dicom_app_writes_the_bundles_mask_of_a_sagittal_series(tmp_path, sagittal_series, sagittal_run):
    from bt_monai.apps.dicom import infer_dicom
    from bt_monai.inferers import TumorPredictor

    # The bundle run's settings: float32 (inference_dicom.json's SliceInferer has no autocast, the evaluator's amp
    # is CUDA only), model.pt as is (no batch norm folded), a channels-last network, the CPU, and every slice
    # segmented (the bundle has no detector). The same plan, resampling and cleaning (bt_monai.transforms.reformat,
    # probabilities_to_cleaned_maps) and the same float32 operations on the same CPU: the same voxels.
    predictor = TumorPredictor.from_bundles(
        segment_gate=0.0, amp=False, fold_batch_norm=False, channels_last=True, device="cpu"
    )
    folder, _ = sagittal_series
    summary = infer_dicom(predictor, folder, tmp_path / "out")
    (name,) = summary.processed
    app = nib.load(tmp_path / "out" / name / "mask.nii.gz")
    bundle, _ = sagittal_run

    assert app.shape == bundle.shape == (256, len(NUMBERS), 256)
    np.testing.assert_allclose(app.affine, bundle.affine, atol=1e-4)  # both on the series' grid, ITK's image order
    app_mask, bundle_mask = np.asarray(app.dataobj), np.asarray(bundle.dataobj)
    assert bundle_mask.sum() > 1000  # the tumor, on the sagittal images
    np.testing.assert_array_equal(app_mask, bundle_mask)
