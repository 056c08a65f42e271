"""The predictor shared by every face: sizes, thresholds, cleaning, and safe weight loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from bt_monai.bundle import WeightsError, load_weights
from bt_monai.inferers import TumorPredictor
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(MobileNetV2UNet().state_dict(), folder / "seg.pt")
    torch.save({k: v.half() for k, v in MobileNetV2Classifier().state_dict().items()}, folder / "cls.pt")
    return folder


@pytest.fixture(scope="module")
def predictor(weights):
    return TumorPredictor.from_bundles(
        segmentation_weights=weights / "seg.pt", detection_weights=weights / "cls.pt", amp=False
    )


def test_masks_come_back_at_each_slice_own_size(predictor, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.random.default_rng(0).integers(0, 255, (256, 240, 3), np.uint8))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 130), np.uint8)).save(tmp_path / "b.png")
    out = list(predictor.predict_paths([tmp_path / "a.tif", tmp_path / "b.png"], batch_size=1))
    assert [p.mask.shape for p in out] == [(256, 240), (100, 130)]
    for p in out:
        assert p.mask.dtype == np.uint8 and set(np.unique(p.mask)) <= {0, 1}
        assert 0.0 <= p.tumor_probability <= 1.0 and p.tumor == int(p.tumor_probability >= 0.5)
        assert p.tumor_area_px == int(p.mask.sum())


def test_batching_does_not_change_the_answers(predictor, tmp_path):
    paths = []
    for i in range(5):
        tifffile.imwrite(tmp_path / f"s_{i}.tif", np.random.default_rng(i).integers(0, 255, (64, 64), np.uint8))
        paths.append(tmp_path / f"s_{i}.tif")
    one = list(predictor.predict_paths(paths, batch_size=1))
    many = list(predictor.predict_paths(paths, batch_size=4))
    for a, b in zip(one, many, strict=True):
        assert a.tumor_probability == pytest.approx(b.tumor_probability, abs=1e-5)
        assert (a.mask != b.mask).mean() < 0.001


def test_gating_and_small_component_removal(predictor):
    probability = torch.zeros(1, 20, 10)
    probability[0, 2:8, 2:8] = 0.9  # a 36-pixel blob
    probability[0, 15, 5] = 0.9  # a 1-pixel speck
    predictor.min_component_px, predictor.gate_masks = 5, False
    mask = predictor.to_mask(probability, (20, 10), tumor_probability=0.9)
    assert mask.shape == (10, 20) and mask.sum() == 36
    predictor.gate_masks = True
    assert predictor.to_mask(probability, (20, 10), tumor_probability=0.1).sum() == 0
    predictor.min_component_px, predictor.gate_masks = 0, False


def test_fp16_weights_load_as_float32(weights):
    net = load_weights(MobileNetV2Classifier(), weights / "cls.pt")
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_weights_of_the_wrong_architecture_name_the_mismatched_keys(weights):
    with pytest.raises(WeightsError, match=r"cls\.pt does not fit MobileNetV2UNet: missing \d+ \(e\.g\. decoder"):
        load_weights(MobileNetV2UNet(), weights / "cls.pt")


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(WeightsError, match="refused"):
        load_weights(MobileNetV2Classifier(), path)
    assert not marker.exists()


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match=str(tmp_path / "none.pt")):
        load_weights(MobileNetV2Classifier(), tmp_path / "none.pt")
