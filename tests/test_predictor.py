"""The predictor shared by every face: sizes, thresholds, cleaning, and safe weight loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from bt_monai.bundle import WeightsError, load_weights
from bt_monai.inferers import ModelBundles, PredictorSettings, TumorPredictor
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
    before = predictor.settings
    predictor.settings = before.replace(min_component_px=5, gate_masks=False)
    mask = predictor.to_mask(probability, (20, 10), tumor_probability=0.9)
    assert mask.shape == (10, 20) and mask.sum() == 36
    predictor.settings = before.replace(min_component_px=5, gate_masks=True)
    assert predictor.to_mask(probability, (20, 10), tumor_probability=0.1).sum() == 0
    predictor.settings = before


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


def _constant_networks() -> tuple[torch.nn.Module, torch.nn.Module]:
    segmenter = torch.nn.Conv2d(3, 1, 1)
    detector = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1))
    with torch.no_grad():
        for i, p in enumerate([*segmenter.parameters(), *detector.parameters()]):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1))
    return segmenter, detector


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "a6342fe984f66e4c3ec56267962e04d0435e43412f310c1a2bbbda9581e285ff"),
        (
            {
                "input_mode": "flair",
                "threshold": 0.4,
                "detection_threshold": 0.6,
                "gate_masks": True,
                "min_component_px": 20,
                "segment_gate": 0.002,
                "fold_batch_norm": True,
                "spatial_size": (64, 64),
                "channels_last": False,
            },
            "1a8be3426173c7d0223dffc3e058efb990e21d4348eea7ac4087e0fe1ef7de5a",
        ),
    ],
)
def test_the_fingerprint_of_given_weights_and_settings_never_changes(settings, expected):
    # The SEG and SR UIDs derive from it: a new value would store duplicates in a PACS after an upgrade.
    # The values were computed by bt_monai 0.3.0, before the settings had a type of their own.
    predictor = TumorPredictor(*_constant_networks(), amp=False, device="cpu", **settings)
    assert predictor.fingerprint() == expected


def test_every_setting_changes_the_fingerprint_or_is_declared_not_to():
    base = TumorPredictor(*_constant_networks(), amp=False, device="cpu").fingerprint()
    changed = {
        "input_mode": "flair",
        "spatial_size": (64, 64),
        "threshold": 0.4,
        "detection_threshold": 0.4,
        "gate_masks": True,
        "min_component_px": 3,
        "segment_gate": 0.1,
        "fold_batch_norm": True,
        "channels_last": False,
        "slice_score": "combined",
        "score_half_area_px": 25.0,
    }
    combined = TumorPredictor(*_constant_networks(), amp=False, device="cpu", slice_score="combined").fingerprint()
    for name, spec in PredictorSettings.specs():
        if spec.fingerprint:
            # the area of the combined score decides outputs only with the combined score
            reference, extra = (combined, {"slice_score": "combined"}) if name == "score_half_area_px" else (base, {})
            other = TumorPredictor(*_constant_networks(), amp=False, device="cpu", **{**extra, name: changed[name]})
            assert other.fingerprint() != reference, name
    assert set(changed) == {name for name, spec in PredictorSettings.specs() if spec.fingerprint}


def test_each_bundle_gives_its_own_settings(tmp_path):
    # the detection threshold is the detection bundle's own, not the segmentation bundle's
    from bt_monai.bundle import copy_bundle

    detection = copy_bundle("detection", tmp_path / "det")
    config = detection / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"threshold": 0.5', '"threshold": 0.7'))
    bundles = ModelBundles.locate(detection_bundle=detection)
    predictor = TumorPredictor.from_bundles(bundles)
    assert predictor.detection_threshold == 0.7 and predictor.threshold == 0.5
    assert predictor.provenance()["detection_model"]["bundle"] == str(detection)


def test_bundles_that_disagree_on_the_preprocessing_are_refused_naming_both_files(tmp_path):
    from bt_monai.bundle import copy_bundle

    detection = copy_bundle("detection", tmp_path / "det")
    config = detection / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"input_mode": "all"', '"input_mode": "flair"'))
    with pytest.raises(ValueError, match=r"disagree on input_mode .*det/configs/inference.json"):
        TumorPredictor.from_bundles(detection_bundle=detection)
    assert TumorPredictor.from_bundles(detection_bundle=detection, input_mode="flair").input_mode == "flair"


def test_an_out_of_range_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="segment_gate"):
        PredictorSettings(segment_gate=1.5)
    with pytest.raises(TypeError, match="no_such_setting"):
        PredictorSettings().replace(no_such_setting=1)


def test_a_setting_is_changed_through_the_settings_never_beside_them():
    predictor = TumorPredictor(*_constant_networks(), amp=False, device="cpu")
    with pytest.raises(AttributeError, match=r"predictor.settings.replace\(threshold=...\)"):
        predictor.threshold = 0.3
    before = predictor.fingerprint()
    predictor.settings = predictor.settings.replace(threshold=0.3)
    assert predictor.threshold == 0.3 and predictor.fingerprint() != before
