"""Readers: every supported format loads as float32 (C, W, H) in MONAI's axis order, values intact."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from conftest import tumor_slice, write_mr_dicom
from monai.transforms import Compose
from PIL import Image

from bt_monai.data import slice_format
from bt_monai.transforms import LoadSlice, slice_preprocessing

# An asymmetric test pattern: value = 10 * row + col, so a transposition or flip is visible.
ROWS, COLS = 6, 4
PATTERN = (10 * np.arange(ROWS)[:, None] + np.arange(COLS)[None, :]).astype(np.uint16)


def as_monai(pixels_hw: np.ndarray) -> np.ndarray:
    """What LoadSlice returns for PIL-ordered pixels: channel first, then columns, then rows."""
    if pixels_hw.ndim == 2:
        pixels_hw = pixels_hw[..., None]
    return np.transpose(pixels_hw, (2, 1, 0)).astype(np.float32)


@pytest.mark.parametrize(
    "pixels",
    [
        PATTERN.astype(np.uint8),
        PATTERN * 1000,
        np.stack([PATTERN, PATTERN + 1, PATTERN + 2], -1).astype(np.uint8),
        np.stack([PATTERN, PATTERN + 1, PATTERN + 2], -1) * 1000,
    ],
    ids=["8bit-gray", "16bit-gray", "8bit-rgb", "16bit-rgb"],
)
def test_tiff_keeps_values_and_monai_axis_order(tmp_path, pixels):
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, pixels, compression="zlib")
    img = LoadSlice()(path)
    assert img.dtype.is_floating_point
    np.testing.assert_array_equal(img.numpy(), as_monai(pixels))


def test_tiff_with_planar_samples_is_read_as_interleaved(tmp_path):
    rgb = np.stack([PATTERN, PATTERN + 1, PATTERN + 2], -1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(LoadSlice()(tmp_path / "planar.tif").numpy(), as_monai(rgb))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_keeps_values_and_monai_axis_order(tmp_path, mode):
    pixels = PATTERN.astype(np.uint8) if mode == "L" else np.stack([PATTERN] * 3, -1).astype(np.uint8)
    Image.fromarray(pixels, mode=mode).save(tmp_path / "slice.png")
    np.testing.assert_array_equal(LoadSlice()(tmp_path / "slice.png").numpy(), as_monai(pixels))


def test_jpeg_loads_close_to_its_source(tmp_path):
    pixels = np.kron(PATTERN.astype(np.uint8) * 4, np.ones((8, 8), np.uint8))  # smooth blocks survive JPEG
    Image.fromarray(pixels).save(tmp_path / "slice.jpg", quality=95)
    img = LoadSlice()(tmp_path / "slice.jpg").numpy()
    assert img.shape == (1, pixels.shape[1], pixels.shape[0])
    assert np.abs(img - as_monai(pixels)).mean() < 2


def test_dicom_applies_rescale_slope_and_intercept(tmp_path):
    path = write_mr_dicom(tmp_path / "slice.dcm", PATTERN, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_array_equal(LoadSlice()(path).numpy(), as_monai(PATTERN) * 2 - 100)


def test_dicom_12_bit_signed_pixels(tmp_path):
    pixels = PATTERN.astype(np.int16) * 40 - 1000
    path = write_mr_dicom(tmp_path / "slice.dcm", pixels, BitsStored=12, HighBit=11)
    np.testing.assert_array_equal(LoadSlice()(path).numpy(), as_monai(pixels))


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = write_mr_dicom(tmp_path / "slice.dcm", PATTERN, PhotometricInterpretation="MONOCHROME1")
    img = LoadSlice()(path).numpy()
    np.testing.assert_array_equal(img, as_monai(PATTERN.max() + PATTERN.min() - PATTERN))


def test_dicom_without_extension_is_recognised(tmp_path):
    path = write_mr_dicom(tmp_path / "IM0001", PATTERN)
    assert slice_format(path) == "dicom"
    np.testing.assert_array_equal(LoadSlice()(path).numpy(), as_monai(PATTERN))


def test_nifti_2d_slice(tmp_path):
    data_wh = PATTERN.T.astype(np.float32)  # NIfTI stores x (columns) first, like MONAI
    for name, data in (("a.nii.gz", data_wh), ("b.nii", data_wh[..., None])):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / name)
        np.testing.assert_array_equal(LoadSlice()(tmp_path / name).numpy(), as_monai(PATTERN))


def test_unsupported_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        LoadSlice()(path)


@pytest.mark.real_data
def test_real_image_and_mask_stay_aligned(lgg_root):
    image_path, mask_path = tumor_slice(lgg_root)
    raw_mask = tifffile.imread(mask_path) > 0
    raw_flair = tifffile.imread(image_path)[..., 1].astype(float)
    rows, cols = np.nonzero(raw_mask)
    img, mask = LoadSlice()(image_path).numpy(), LoadSlice()(mask_path).numpy()
    xs, ys = np.nonzero(mask[0])
    # MONAI order: first axis = column. The off-centre tumor lands where the raw file has it.
    assert (xs.mean(), ys.mean()) == pytest.approx((cols.mean(), rows.mean()))
    # The FLAIR-bright tumor is where the mask says (a misaligned mask would cover normal tissue).
    assert img[1][mask[0] > 0].mean() > 1.5 * raw_flair[~raw_mask & (raw_flair > 0)].mean()

    d = Compose(slice_preprocessing("image", "label"))({"image": str(image_path), "label": str(mask_path)})
    xs, ys = np.nonzero(d["label"][0].numpy())
    scale = 224 / 256
    assert xs.mean() == pytest.approx((cols.mean() + 0.5) * scale - 0.5, abs=1.0)
    assert ys.mean() == pytest.approx((rows.mean() + 0.5) * scale - 0.5, abs=1.0)


@pytest.mark.real_data
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_8bit_tiff_and_16bit_dicom_of_one_slice_give_the_same_input(lgg_root, tmp_path, photometric):
    image_path, _ = tumor_slice(lgg_root)
    flair = tifffile.imread(image_path)[..., 1]
    tifffile.imwrite(tmp_path / "flair.tif", flair)
    stored = flair.astype(np.uint16) * 257  # the full 16-bit range
    if photometric == "MONOCHROME1":
        stored = 65535 - stored
    write_mr_dicom(
        tmp_path / "flair.dcm", stored, PhotometricInterpretation=photometric, RescaleSlope=0.5, RescaleIntercept=-7
    )
    pre = Compose(slice_preprocessing("image"))
    from_tiff = pre({"image": str(tmp_path / "flair.tif")})["image"]
    from_dicom = pre({"image": str(tmp_path / "flair.dcm")})["image"]
    assert from_tiff.shape == from_dicom.shape == (3, 224, 224)
    assert float((from_tiff - from_dicom).abs().max()) <= 2 / 255
