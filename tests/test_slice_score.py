"""The slice score the tumor call thresholds: one definition in the predictor, the same in every output."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import SUBSET

from bt_monai.inferers import TumorPredictor, slice_tumor_score
from bt_monai.metrics import SliceResult, summarize


@pytest.fixture(scope="module")
def real_slices(lgg_root):
    """Twelve real slices of one patient, tumor and tumor-free."""
    return sorted(p for p in (lgg_root / SUBSET[2]).glob("*.tif") if not p.name.endswith("_mask.tif"))[4:16]


def test_the_detector_score_is_the_detector_probability():
    assert slice_tumor_score(0.3, 500.0, "detector") == 0.3


def test_the_combined_score_is_the_mean_of_the_probability_and_the_area_term():
    assert slice_tumor_score(0.4, 0.0, "combined", 50.0) == pytest.approx(0.2)
    assert slice_tumor_score(0.4, 50.0, "combined", 50.0) == pytest.approx(0.45)  # area term 0.5 at half_area_px
    assert slice_tumor_score(1.0, 1e9, "combined", 50.0) == pytest.approx(1.0, abs=1e-6)


def test_an_unknown_slice_score_is_refused_by_name():
    with pytest.raises(ValueError, match="detector, combined"):
        slice_tumor_score(0.5, 10.0, "mask")
    with pytest.raises(ValueError, match="slice_score"):
        TumorPredictor.from_bundles(slice_score="mask")


def test_by_default_the_call_thresholds_the_detector_probability(real_slices):
    predictor = TumorPredictor.from_bundles(slice_score="detector")
    for p in predictor.predict_paths(real_slices):
        assert p.tumor_score == p.tumor_probability and p.tumor == int(p.tumor_probability >= p.threshold)


def test_the_combined_call_uses_the_mask_the_predictor_returns(real_slices):
    ungated = TumorPredictor.from_bundles(slice_score="combined", gate_masks=False, segment_gate=0.0)
    predictions = list(ungated.predict_paths(real_slices))
    assert any(p.tumor_area_px for p in predictions) and any(not p.tumor_area_px for p in predictions)
    for p in predictions:
        input_area = p.tumor_area_px * 224 * 224 / p.mask.size  # the area in pixels of the network input
        expected = slice_tumor_score(p.tumor_probability, input_area, "combined", ungated.score_half_area_px)
        assert p.tumor_score == pytest.approx(expected, abs=1e-9)
        assert p.tumor == int(p.tumor_score >= ungated.detection_threshold)


def test_gated_masks_follow_the_combined_call(real_slices):
    settings = {"slice_score": "combined", "segment_gate": 0.0}
    gated = TumorPredictor.from_bundles(gate_masks=True, **settings)
    ungated = TumorPredictor.from_bundles(gate_masks=False, **settings)
    for a, b in zip(gated.predict_paths(real_slices), ungated.predict_paths(real_slices), strict=True):
        assert a.tumor_score == b.tumor_score  # the score is made before the gate clears anything
        assert a.tumor_area_px == (b.tumor_area_px if b.tumor else 0)


def test_infer_writes_the_score_its_call_thresholds(real_slices, tmp_path):
    from bt_monai.apps.infer import infer_folder

    folder = tmp_path / "in"
    folder.mkdir()
    for path in real_slices:
        (folder / path.name).symlink_to(path)
    predictor = TumorPredictor.from_bundles(slice_score="combined")
    infer_folder(predictor, folder, tmp_path / "out")
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = {p.path.split("/")[-1]: p for p in predictor.predict_paths(sorted(folder.iterdir()))}
    assert len(rows) == len(real_slices)
    for row in rows:
        p = expected[row["path"]]
        assert float(row["tumor_score"]) == pytest.approx(p.tumor_score, abs=1e-6)
        assert float(row["tumor_probability"]) == pytest.approx(p.tumor_probability, abs=1e-6)
        assert int(row["tumor"]) == p.tumor


def test_detection_metrics_rank_and_threshold_the_slice_score():
    def result(i: int, truth: int, probability: float, score: float) -> SliceResult:
        return SliceResult(f"p{i % 3}", i, f"s{i}", truth, probability, int(score >= 0.5), 0, 0, 0, 1, None, score)

    truths = np.array([0, 0, 0, 1, 1, 1])
    probabilities = [0.9, 0.1, 0.2, 0.3, 0.8, 0.7]  # the detector ranks one tumor-free slice first
    scores = [0.2, 0.1, 0.3, 0.6, 0.8, 0.7]  # the score ranks every tumor slice first
    slices = [result(i, t, p, s) for i, (t, p, s) in enumerate(zip(truths, probabilities, scores, strict=True))]
    metrics, _ = summarize(slices, 0.5, n_bootstrap=0)
    assert metrics["detection"]["roc_auc"] == 1.0 and metrics["detection"]["accuracy"] == 1.0
