"""Metric definitions (bt_monai.metrics): values checked against hand counts and scikit-learn, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_auc_score

from bt_monai.metrics import (
    DetectionMetric,
    PatientVolumeMetric,
    SliceSegmentationMetric,
    detection_summary,
    dice_from_counts,
    iou_from_counts,
    pixel_accuracy_from_counts,
    roc_auc,
    segmentation_counts,
)


def masks(*rows: str) -> torch.Tensor:
    """A (1, 1, H, W) mask from strings of '0'/'1'."""
    return torch.tensor([[list(map(int, r)) for r in rows]], dtype=torch.float32)[None]


def test_counts_dice_iou_and_pixel_accuracy_of_a_hand_built_case():
    pred = masks("1100", "1100", "0000")
    truth = masks("1000", "1100", "0010")
    counts = segmentation_counts(pred, truth)
    assert counts.tolist() == [[3, 1, 1, 7]]  # tp, fp, fn, tn
    assert dice_from_counts(counts).item() == pytest.approx(6 / 8)
    assert iou_from_counts(counts).item() == pytest.approx(3 / 5)
    assert pixel_accuracy_from_counts(counts).item() == pytest.approx(10 / 12)


def test_both_empty_scores_one_and_a_missed_or_invented_tumor_scores_zero():
    empty, tumor = masks("00", "00"), masks("01", "00")
    assert dice_from_counts(segmentation_counts(empty, empty)).item() == 1.0
    assert iou_from_counts(segmentation_counts(empty, empty)).item() == 1.0
    assert dice_from_counts(segmentation_counts(empty, tumor)).item() == 0.0  # missed
    assert dice_from_counts(segmentation_counts(tumor, empty)).item() == 0.0  # invented


def test_slice_metric_can_leave_out_slices_without_tumor_in_the_truth():
    pred = torch.cat([masks("10"), masks("10"), masks("00")])
    truth = torch.cat([masks("10"), masks("00"), masks("00")])
    assert SliceSegmentationMetric("dice")(pred, truth).flatten().tolist() == [1.0, 0.0, 1.0]
    metric = SliceSegmentationMetric("dice", ignore_empty=True)
    metric(pred, truth)
    assert metric.aggregate().item() == 1.0  # only the first slice has tumor in the truth


def test_patient_volume_dice_pools_the_slices_of_each_patient():
    pred = torch.cat([masks("11"), masks("00"), masks("10")])
    truth = torch.cat([masks("10"), masks("10"), masks("00")])
    metric = PatientVolumeMetric("dice")
    metric(pred[:2], truth[:2], ["A", "A"])
    metric(pred[2:], truth[2:], ["B"])
    # A: tp 1, fp 1, fn 1 -> 2/4; B: tp 0, fp 1, fn 0 -> 0
    assert sorted(metric.per_patient().tolist()) == [0.0, 0.5]
    assert metric.aggregate().item() == pytest.approx(0.25)


def test_classification_summary_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    s = detection_summary(probs, labels, threshold=0.5)
    tn, fp, fn, tp = sk_confusion_matrix(labels, probs >= 0.5).ravel()
    assert s["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert s["accuracy"] == pytest.approx((tp + tn) / 200)
    assert s["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert s["specificity"] == pytest.approx(tn / (tn + fp))
    assert s["precision"] == pytest.approx(tp / (tp + fp))
    assert s["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))


def test_roc_auc_with_one_class_is_undefined_with_a_reason_not_an_error():
    value, reason = roc_auc([0.2, 0.9], [1, 1])
    assert math.isnan(value) and "one class" in reason
    s = detection_summary([0.2, 0.9], [1, 1])
    assert math.isnan(s["roc_auc"]) and math.isnan(s["specificity"]) and s["sensitivity"] == 0.5


def test_detection_metric_buffers_across_batches():
    metric = DetectionMetric("accuracy", threshold=0.5)
    metric(torch.tensor([[0.9], [0.2]]), torch.tensor([[1.0], [1.0]]))
    metric(torch.tensor([[0.1]]), torch.tensor([[0.0]]))
    assert metric.aggregate().item() == pytest.approx(2 / 3)
