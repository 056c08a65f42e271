"""Preprocessing (the original design's) and training augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import tumor_slice
from monai.transforms import Compose
from monai.utils import set_determinism
from PIL import Image

from bt_monai.transforms import (
    BinarizeMask,
    GrayscaleToRGB,
    RandBatchAugment,
    RandSequenceDropout,
    SelectInputChannels,
    slice_preprocessing,
    train_augmentations,
)


@pytest.fixture(scope="module")
def real_pair(lgg_root):
    image, mask = tumor_slice(lgg_root)
    return {"image": str(image), "label": str(mask)}


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
