"""Preprocessing (the original design's) and training augmentations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tifffile
import torch
from conftest import SUBSET, tumor_slice
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    Invertd,
    Resized,
    ScaleIntensityRangePercentilesd,
)
from monai.utils import set_determinism
from PIL import Image

from bt_monai.transforms import (
    AUGMENTATION,
    AugmentationRanges,
    BinarizeMask,
    GrayscaleToRGB,
    ProbabilityToMaskd,
    RandBatchAugment,
    RandSequenceDropout,
    RemoveSmallComponentsd,
    SelectInputChannels,
    slice_preprocessing,
    train_augmentations,
)
from bt_monai.transforms.dictionary import BinarizeMaskd, GrayscaleToRGBd, LoadSliced, SelectInputChannelsd


@pytest.fixture(scope="module")
def real_pair(lgg_root):
    image, mask = tumor_slice(lgg_root)
    return {"image": str(image), "label": str(mask)}


@pytest.fixture(scope="module")
def pairs(lgg_root, tmp_path_factory):
    """Real image/mask pairs (tumor and tumor-free) and synthetic ones of other sizes, depths and layouts."""
    real = sorted(p for p in (lgg_root / SUBSET[1]).glob("*.tif") if not p.name.endswith("_mask.tif"))[8:12]
    found = [{"image": str(p), "label": str(p.with_name(p.stem + "_mask.tif"))} for p in real]
    folder, rng = tmp_path_factory.mktemp("pairs"), np.random.default_rng(3)
    layouts = {
        "rgb16.tif": rng.integers(0, 4000, (100, 130, 3), np.uint16),  # non-square, 16-bit: upsampled
        "gray.tif": rng.normal(100, 30, (300, 260)).astype(np.float32),  # larger than 224: downsampled
        "square.tif": rng.integers(0, 255, (224, 224, 3), np.uint8),  # already the network's size
        "constant.tif": np.full((40, 50), 7, np.uint8),  # an empty intensity range
    }
    for name, pixels in layouts.items():
        tifffile.imwrite(folder / name, pixels)
        tifffile.imwrite(folder / f"mask_{name}", (rng.random(pixels.shape[:2]) > 0.8).astype(np.uint8) * 255)
        found.append({"image": str(folder / name), "label": str(folder / f"mask_{name}")})
    return found


def monai_reference(image_key="image", mask_key="label", input_mode="all"):
    """The preprocessing as MONAI's own ``Resized`` and ``ScaleIntensityRangePercentilesd`` computed it."""
    keys = [image_key, mask_key]
    return Compose(
        [
            LoadSliced(keys),
            SelectInputChannelsd(image_key, input_mode),
            BinarizeMaskd(mask_key),
            Resized(keys, (224, 224), mode=["bilinear", "nearest"]),
            ScaleIntensityRangePercentilesd(
                image_key, lower=0, upper=99.9, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
            ),
            GrayscaleToRGBd(image_key),
            EnsureTyped(keys, dtype=torch.float32, track_meta=True),
        ]
    )


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore:Divide by zero")  # MONAI's reference, on the constant slice
@pytest.mark.parametrize("input_mode", ["all", "flair"])
def test_preprocessing_gives_monais_resize_and_percentile_scaling_bit_for_bit(pairs, input_mode):
    ours, monai = (
        Compose(slice_preprocessing("image", "label", input_mode=input_mode)),
        monai_reference(input_mode=input_mode),
    )
    for pair in pairs:
        a, b = ours(dict(pair)), monai(dict(pair))
        for key in ("image", "label"):
            assert isinstance(a[key], MetaTensor) and a[key].dtype == torch.float32
            torch.testing.assert_close(a[key].as_tensor(), b[key].as_tensor(), rtol=0, atol=0, msg=pair[key])
            torch.testing.assert_close(a[key].affine, b[key].affine, rtol=0, atol=0, msg=pair[key])
            assert a[key].meta.keys() == b[key].meta.keys()


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore:Divide by zero")  # MONAI's reference, on the constant slice
@pytest.mark.parametrize("nearest_interp", [False, True])
def test_invertd_undoes_the_resize_as_it_undoes_monais(pairs, nearest_interp):
    ours, monai = Compose(slice_preprocessing("image")), monai_reference()
    torch.manual_seed(0)
    for pair in pairs:
        probabilities, restored = torch.rand(1, 224, 224), []
        for preprocessing, d in ((ours, ours({"image": pair["image"]})), (monai, monai(dict(pair)))):
            pred = MetaTensor(probabilities.clone()).copy_meta_from(d["image"])
            invert = Invertd("pred", preprocessing, orig_keys="image", nearest_interp=nearest_interp)
            restored.append(invert({"image": d["image"], "pred": pred})["pred"])
        assert restored[0].shape == (1, *restored[0].meta["spatial_shape"])
        torch.testing.assert_close(restored[0].as_tensor(), restored[1].as_tensor(), rtol=0, atol=0, msg=pair["image"])
        torch.testing.assert_close(restored[0].affine, restored[1].affine, rtol=0, atol=0)


@pytest.mark.real_data
@pytest.mark.parametrize("input_mode", ["flair", "all"])
def test_preprocessing_gives_224_rgb_in_unit_range_and_a_binary_mask(real_pair, input_mode):
    d = Compose(slice_preprocessing("image", "label", input_mode=input_mode))(dict(real_pair))
    image, mask = d["image"], d["label"]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert mask.shape == (1, 224, 224) and set(mask.unique().tolist()) == {0.0, 1.0}
    channels_equal = torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert channels_equal == (input_mode == "flair")


@pytest.mark.real_data
def test_flair_mode_feeds_the_flair_channel(real_pair):
    flair_only = Compose(slice_preprocessing("image", input_mode="flair"))(dict(real_pair))["image"]
    three = Compose(slice_preprocessing("image", input_mode="all"))(dict(real_pair))["image"]
    assert torch.equal(flair_only[0], three[1])


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    Image.fromarray((np.arange(64 * 48).reshape(64, 48) % 251).astype(np.uint8)).save(tmp_path / "g.png")
    image = Compose(slice_preprocessing("image", input_mode="all"))({"image": str(tmp_path / "g.png")})["image"]
    assert image.shape == (3, 224, 224)
    assert torch.equal(image[0], image[2])


def test_mask_with_any_nonzero_value_is_foreground(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8], mask[20:24, 20:24] = 1, 128
    tifffile.imwrite(tmp_path / "m.tif", mask)
    out = BinarizeMask()(torch.from_numpy(np.stack([mask.T, np.zeros_like(mask.T)]).astype(np.float32)))
    assert out.shape == (1, 32, 32) and int(out.sum()) == 32


def test_channel_selection_and_rgb_rules():
    rgb = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)
    assert torch.equal(SelectInputChannels("flair")(rgb), rgb[1:2])
    assert torch.equal(SelectInputChannels("flair")(torch.cat([rgb, rgb[:1]])), rgb[1:2])  # RGBA: alpha ignored
    assert torch.equal(SelectInputChannels("all")(rgb[:1]), rgb[:1])  # grayscale is taken as FLAIR
    assert GrayscaleToRGB()(rgb[:1]).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="unknown input mode"):
        SelectInputChannels("t1")
    with pytest.raises(ValueError, match="shape"):
        GrayscaleToRGB()(torch.zeros(2, 4, 4))


def test_sequence_dropout_replaces_every_sequence_by_flair():
    rgb = torch.rand(3, 8, 8)
    out = RandSequenceDropout(prob=1.0)(rgb)
    assert all(torch.equal(out[c], rgb[1]) for c in range(3))
    assert torch.equal(RandSequenceDropout(prob=0.0)(rgb), rgb)


@pytest.mark.real_data
def test_augmentations_move_image_and_mask_together(real_pair):
    """Feed the mask as a one-channel image: after the same random geometry, both must still coincide."""
    set_determinism(seed=0)
    pre = Compose(slice_preprocessing("image", "label"))(dict(real_pair))
    aug = Compose(train_augmentations("image", "label"))
    for seed in range(8):
        aug.set_random_state(seed)
        d = aug({"image": pre["label"].repeat(3, 1, 1).clone(), "label": pre["label"].clone()})
        assert set(d["label"].unique().tolist()) <= {0.0, 1.0}
        assert 0.0 <= float(d["image"].min()) and float(d["image"].max()) <= 1.0
        warped_image = d["image"][0] > 0.5 * float(d["image"][0].max())
        agreement = (warped_image == (d["label"][0] > 0)).float().mean()
        assert agreement > 0.995, seed
    set_determinism(seed=None)


@pytest.mark.real_data
@pytest.mark.parametrize("min_component_px", [0, 40])
def test_probability_to_mask_gives_what_invertd_asdiscreted_and_cleaning_gave(pairs, min_component_px):
    """The bundle's former mask post-processing, MONAI's way, is the reference of the one definition."""
    preprocessing = Compose(slice_preprocessing("image"))
    former = Compose(
        [
            Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", threshold=0.5),
            RemoveSmallComponentsd("pred", min_size=min_component_px),
        ]
    )
    to_mask = ProbabilityToMaskd("pred", ref_key="image", threshold=0.5, min_component_px=min_component_px)
    torch.manual_seed(0)
    for pair in pairs:
        image = preprocessing({"image": pair["image"]})["image"]
        # smooth blobs of all sizes around the threshold, so that cleaning has components to remove
        noise = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 224, 224), 9, stride=1, padding=4)[0]
        probabilities = (noise - noise.mean()) * 8 + 0.5
        expected = former({"image": image, "pred": MetaTensor(probabilities).copy_meta_from(image)})["pred"]
        mask = to_mask({"image": image, "pred": MetaTensor(probabilities.clone())})["pred"]
        assert mask.shape == (1, *image.meta["spatial_shape"]) and mask.dtype == torch.float32
        assert 0 < int(mask.sum()) < mask.numel()
        torch.testing.assert_close(mask.as_tensor(), expected.as_tensor(), rtol=0, atol=0, msg=pair["image"])
        torch.testing.assert_close(mask.affine, expected.affine, rtol=0, atol=0)
        assert mask.meta["filename_or_obj"] == pair["image"]  # SaveImaged names the mask after the slice


def test_probability_to_mask_needs_the_slice_size_and_says_where_it_comes_from():
    with pytest.raises(ValueError, match="spatial_shape.*slice_preprocessing"):
        ProbabilityToMaskd("pred")({"image": torch.zeros(3, 224, 224), "pred": torch.zeros(1, 224, 224)})


def test_remove_small_components_keeps_large_ones_and_the_input_type():
    from bt_monai.transforms import RemoveSmallComponents, RemoveSmallComponentsd

    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 2:8, 2:8] = 1  # 36 px, kept
    mask[0, 15:17, 15:17] = 1  # 4 px, removed
    out = RemoveSmallComponents(10)(mask)
    assert out.dtype == np.uint8 and out.sum() == 36 and out[0, 15:17, 15:17].sum() == 0
    tensor = RemoveSmallComponentsd("pred", min_size=10)({"pred": torch.as_tensor(mask, dtype=torch.float32)})["pred"]
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and int(tensor.sum()) == 36
    assert RemoveSmallComponents(0)(mask).sum() == 40


# --- batch augmentation (the bundles' training path) ---------------------------------------------------------


@pytest.mark.real_data
def test_batch_augmentation_moves_image_and_mask_together(real_pair):
    """The per-batch twin of the test above: a mask fed as the image must still coincide with the label."""
    pre = Compose(slice_preprocessing("image", "label"))(dict(real_pair))
    label = pre["label"].as_tensor()[None].repeat(8, 1, 1, 1)
    torch.manual_seed(0)
    augment = RandBatchAugment(flip_prob=0.5, rotate_prob=1.0, zoom_prob=1.0, scale_prob=0, shift_prob=0, gamma_prob=0)
    image, warped = augment(label.repeat(1, 3, 1, 1), label)
    assert set(warped.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(warped, label)  # every sample was rotated and zoomed
    for i in range(8):
        agreement = ((image[i, 0] > 0.5) == (warped[i, 0] > 0)).float().mean()
        assert agreement > 0.995, i


def test_batch_augmentation_keeps_images_in_range_and_detection_targets_as_they_are():
    torch.manual_seed(1)
    images, targets = torch.rand(16, 3, 32, 32), torch.randint(0, 2, (16, 1)).float()
    out, same = RandBatchAugment(sequence_dropout=0.5)(images, targets)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(same, targets)


def test_batch_sequence_dropout_gives_flair_in_every_channel():
    images = torch.rand(4, 3, 16, 16)
    plain = {"flip_prob": 0, "rotate_prob": 0, "zoom_prob": 0, "scale_prob": 0, "shift_prob": 0, "gamma_prob": 0}
    out, _ = RandBatchAugment(sequence_dropout=1.0, **plain)(images, None)
    assert all(torch.equal(out[:, c], images[:, 1]) for c in range(3))
    untouched, _ = RandBatchAugment(sequence_dropout=0.0, **plain)(images, None)
    assert torch.equal(untouched, images)


def test_batch_augmentation_is_repeatable_from_the_seed():
    images, masks = torch.rand(4, 3, 16, 16), (torch.rand(4, 1, 16, 16) > 0.7).float()
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(RandBatchAugment(sequence_dropout=0.3)(images, masks))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))


def test_batch_augmentation_refuses_a_probability_outside_0_1():
    with pytest.raises(ValueError, match="sequence_dropout must be a probability"):
        RandBatchAugment(sequence_dropout=1.5)


# --- one definition of the augmentation ranges ----------------------------------------------------------------


def per_sample_ranges(transforms) -> dict:
    """The probabilities and ranges the MONAI transforms of :func:`train_augmentations` draw from."""
    t = {type(x).__name__: x for x in transforms}
    rotate, zoom = t["RandRotated"], t["RandZoomd"]
    scale, shift, gamma = t["RandScaleIntensityd"], t["RandShiftIntensityd"], t["RandAdjustContrastd"]
    return {
        "flip_prob": t["RandFlipd"].prob,
        "rotate_prob": rotate.prob,
        "rotate_degrees": math.degrees(rotate.rand_rotate.range_x[1]),
        "zoom_prob": zoom.prob,
        "zoom_range": (zoom.rand_zoom.min_zoom[0], zoom.rand_zoom.max_zoom[0]),
        "scale_prob": scale.prob,
        "scale": scale.scaler.factors[1],
        "shift_prob": shift.prob,
        "shift": shift.shifter.offsets[1],
        "gamma_prob": gamma.prob,
        "gamma_range": tuple(gamma.adjuster.gamma),
    }


def per_batch_ranges(augment: RandBatchAugment) -> dict:
    """The same of :class:`RandBatchAugment`."""
    names = [f.name for f in dataclasses.fields(AugmentationRanges) if f.name != "rotate_degrees"]
    return {**{n: getattr(augment, n) for n in names}, "rotate_degrees": math.degrees(augment.rotate_radians)}


def rounded(ranges: dict | AugmentationRanges) -> dict:
    """Values to 9 digits (degrees come back from radians), ranges as tuples."""
    d = dataclasses.asdict(ranges) if isinstance(ranges, AugmentationRanges) else ranges
    return {k: tuple(round(x, 9) for x in v) if isinstance(v, tuple) else round(v, 9) for k, v in d.items()}


def test_the_per_sample_and_per_batch_augmentations_draw_from_one_definition():
    assert rounded(per_sample_ranges(train_augmentations("image", "label"))) == rounded(AUGMENTATION)
    assert rounded(per_batch_ranges(RandBatchAugment())) == rounded(AUGMENTATION)
    # the batch transform takes the ranges' fields by name: any other ranges reach both alike
    other = AugmentationRanges(flip_prob=0.1, rotate_degrees=5.0, zoom_range=(0.8, 1.2), gamma_range=(0.5, 2.0))
    assert rounded(per_sample_ranges(train_augmentations("image", ranges=other))) == rounded(other)
    assert rounded(per_batch_ranges(RandBatchAugment(**dataclasses.asdict(other)))) == rounded(other)
