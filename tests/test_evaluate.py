"""``python -m bt_monai evaluate``: metrics.json checked against values computed here by hand; CSVs, figures,
and a report.html that a real headless browser loads without errors."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
import torch

from bt_monai.__main__ import main
from bt_monai.apps.evaluate import evaluate_dataset
from bt_monai.inferers import PredictorSettings, SlicePrediction
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet
from bt_monai.writers.report import FIGURES

SIZE = 8


def square(r0: int, c0: int, n: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[r0 : r0 + n, c0 : c0 + n] = 1
    return mask


EMPTY = np.zeros((SIZE, SIZE), np.uint8)
# patient -> slices of (truth mask, predicted mask, tumor probability)
CASE = {
    "P1": [(square(0, 0, 4), square(0, 0, 4), 0.9), (square(2, 2, 2), square(2, 2, 4), 0.8), (EMPTY, EMPTY, 0.2)],
    "P2": [(square(4, 4, 2), EMPTY, 0.3), (EMPTY, square(0, 0, 1), 0.6), (EMPTY, EMPTY, 0.1)],
}


class ScriptedPredictor:
    """Stands in for the models: returns this test's predictions, so the expected metrics are known exactly."""

    threshold = detection_threshold = 0.5
    input_mode = "all"
    settings = PredictorSettings(input_mode="all")  # what evaluate records in metrics.json

    def __init__(self, answers: dict[str, tuple[np.ndarray, float]]):
        self.answers = answers

    def predict_paths(self, paths, batch_size=16, on_error=None):
        for path in paths:
            mask, probability = self.answers[str(path)]
            yield SlicePrediction(str(path), probability, mask, self.threshold)


def build(root) -> ScriptedPredictor:
    answers = {}
    for pid, slices in CASE.items():
        (root / pid).mkdir(parents=True)
        for i, (truth, pred, probability) in enumerate(slices, start=1):
            image = root / pid / f"{pid}_{i}.tif"
            tifffile.imwrite(image, np.full((SIZE, SIZE, 3), 50 + 20 * i, np.uint8))
            tifffile.imwrite(root / pid / f"{pid}_{i}_mask.tif", truth * 255)
            answers[str(image)] = (pred, probability)
    return ScriptedPredictor(answers)


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    inter, total = (truth & pred).sum(), truth.sum() + pred.sum()
    return 1.0 if total == 0 else 2 * inter / total


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    predictor = build(root / "data")
    metrics = evaluate_dataset(predictor, root / "data", root / "out", n_bootstrap=200)
    return root / "out", metrics


def test_metrics_json_matches_values_computed_by_hand(evaluated):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    truths = [t for slices in CASE.values() for t, _, _ in slices]
    preds = [p for slices in CASE.values() for _, p, _ in slices]
    probs = [q for slices in CASE.values() for _, _, q in slices]
    labels = [int(t.any()) for t in truths]
    calls = [int(q >= 0.5) for q in probs]
    tp = sum(a and b for a, b in zip(labels, calls, strict=True))
    tn = sum(not a and not b for a, b in zip(labels, calls, strict=True))
    fp = sum(not a and b for a, b in zip(labels, calls, strict=True))
    fn = sum(a and not b for a, b in zip(labels, calls, strict=True))
    det = metrics["detection"]
    assert det["confusion_matrix"] == [[tn, fp], [fn, tp]] == [[2, 1], [1, 2]]
    assert det["accuracy"] == pytest.approx(4 / 6)
    assert det["sensitivity"] == pytest.approx(2 / 3) and det["specificity"] == pytest.approx(2 / 3)
    assert det["precision"] == pytest.approx(2 / 3) and det["f1"] == pytest.approx(2 / 3)
    # ROC-AUC by counting ranked pairs: positives 0.9, 0.8, 0.3 vs negatives 0.2, 0.6, 0.1
    assert det["roc_auc"] == pytest.approx(8 / 9)
    assert det["n_slices"] == 6 and det["threshold"] == 0.5

    seg = metrics["segmentation"]
    volume = {
        pid: dice(np.stack([t for t, _, _ in s]).astype(bool), np.stack([p for _, p, _ in s]).astype(bool))
        for pid, s in CASE.items()
    }
    assert volume["P1"] == pytest.approx(2 * 20 / (20 + 32)) and volume["P2"] == 0.0
    assert seg["dice_per_patient_mean"] == pytest.approx(np.mean(list(volume.values())))
    assert seg["dice_per_patient_median"] == pytest.approx(np.median(list(volume.values())))
    tumor_dice = [dice(t.astype(bool), p.astype(bool)) for t, p in zip(truths, preds, strict=True) if t.any()]
    assert tumor_dice == pytest.approx([1.0, 0.4, 0.0])
    assert seg["dice_tumor_slices_mean"] == pytest.approx(np.mean(tumor_dice))
    correct = sum(int((t.astype(bool) == p.astype(bool)).sum()) for t, p in zip(truths, preds, strict=True))
    assert seg["pixel_accuracy"] == pytest.approx(correct / (6 * SIZE * SIZE))
    assert seg["n_patients"] == 2 and seg["n_slices"] == 6

    ci = metrics["confidence_intervals"]
    for key in ("detection.accuracy", "segmentation.dice_per_patient_mean"):
        low, high = ci[key]
        assert low <= high
    evaluated_ = metrics["evaluated"]
    assert evaluated_["dataset_counts"] == {
        "patients": 2, "slices": 6, "tumor_slices": 3, "evaluated_slices": 6, "skipped_files": 0,
    }  # fmt: skip


def test_csvs_hold_one_row_per_slice_and_per_patient(evaluated):
    out, _ = evaluated
    slices = list(csv.DictReader((out / "per_slice.csv").open()))
    patients = {p["patient_id"]: p for p in csv.DictReader((out / "per_patient.csv").open())}
    assert len(slices) == 6 and set(patients) == {"P1", "P2"}
    assert {"dice", "iou", "true_volume_px", "pred_volume_px", "true_volume_mm3"} <= set(patients["P1"])
    assert int(patients["P1"]["true_volume_px"]) == 16 + 4 and int(patients["P1"]["pred_volume_px"]) == 16 + 16
    assert patients["P1"]["true_volume_mm3"] == ""  # TIFFs carry no spacing


def test_both_empty_is_perfect_and_a_missed_tumor_is_zero_in_per_slice_rows(evaluated):
    out, _ = evaluated
    rows = {(r["patient_id"], r["slice_index"]): r for r in csv.DictReader((out / "per_slice.csv").open())}
    assert float(rows[("P1", "3")]["dice"]) == 1.0  # no tumor, none predicted
    assert float(rows[("P2", "1")]["dice"]) == 0.0  # tumor missed
    assert float(rows[("P2", "2")]["dice"]) == 0.0  # tumor invented


def test_one_class_only_makes_roc_auc_undefined_with_a_reason(tmp_path):
    predictor = build(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "P2")
    for i in (3,):
        (tmp_path / "data" / "P1" / f"P1_{i}.tif").unlink()
        (tmp_path / "data" / "P1" / f"P1_{i}_mask.tif").unlink()
    metrics = evaluate_dataset(predictor, tmp_path / "data", tmp_path / "out", n_bootstrap=0)
    assert metrics["detection"]["roc_auc"] is None
    assert "one class" in metrics["detection"]["roc_auc_undefined_reason"]
    assert (tmp_path / "out" / "roc_curve.png").stat().st_size > 0


def test_figures_and_a_self_contained_report(evaluated):
    out, _ = evaluated
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES) == 5
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_the_worst_three_patients_are_named_with_their_largest_tumor_slice(evaluated):
    out, metrics = evaluated
    worst = metrics["segmentation"]["worst_patients"]
    per_patient = {r["patient_id"]: float(r["dice"]) for r in csv.DictReader((out / "per_patient.csv").open())}
    assert [w["patient_id"] for w in worst] == sorted(per_patient, key=lambda p: (per_patient[p], p))[:3]
    for w in worst:
        assert w["dice"] == pytest.approx(per_patient[w["patient_id"]])
        assert w["largest_tumor_slice"] is None or w["patient_id"] in w["largest_tumor_slice"]


def test_report_loads_in_a_headless_browser_without_errors(evaluated):
    """Debian's chromium, driven by Playwright; no network features. CI installs chromium (never skipped there)."""
    out, _ = evaluated
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "chromium is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("BT_MONAI_REQUIRE_BROWSER"):
            pytest.fail(message + "; BT_MONAI_REQUIRE_BROWSER is set, so this is an error, not a skip")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "report.html").as_uri())
        sizes = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
        title = page.title()
        table = page.evaluate(PATIENT_TABLE)
        browser.close()
    assert errors == []
    assert len(sizes) == len(FIGURES) and all(w > 0 and h > 0 for w, h in sizes)
    assert title == "bt_monai evaluation report"
    # TIFFs carry no spacing: no mm³ column at all, and no cell reads "undefined"
    assert "true_volume_px" in table["head"] and not any("mm3" in name for name in table["head"])
    assert len(table["rows"]) == 2 and all(len(row) == len(table["head"]) for row in table["rows"])
    assert not any("undefined" in cell for row in table["rows"] for cell in row)


# The per-patient table of report.html as the browser shows it: its column names and its rows of cell texts.
PATIENT_TABLE = """() => {
    const table = [...document.querySelectorAll("h2")].find(h => h.textContent === "Per patient").nextElementSibling;
    return {
        head: [...table.querySelectorAll("th")].map(c => c.textContent),
        rows: [...table.querySelectorAll("tbody tr")].map(r => [...r.querySelectorAll("td")].map(c => c.textContent)),
    };
}"""


def test_a_patient_without_spacing_shows_a_dash_in_the_mm3_columns(tmp_path):
    from bt_monai.writers.report import write_html

    volumes = {"P1": (20, 32, 0.5), "P2": (4, 0, None)}  # P2's slices carry no spacing (a TIFF beside DICOM)
    per_patient = {
        pid: {"patient_id": pid, "true_volume_px": t, "true_volume_mm3": None if mm3 is None else t * mm3}
        for pid, (t, _, mm3) in volumes.items()
    }
    write_html(tmp_path, {"evaluated": {"threshold": 0.5}}, per_patient)
    page = (tmp_path / "report.html").read_text()
    table = page[page.index("<h2>Per patient</h2>") :]
    assert "<th>true_volume_mm3</th>" in table and "undefined" not in table
    assert "<td>P1</td><td>20</td><td>10.0000</td>" in table and "<td>P2</td><td>4</td><td>&ndash;</td>" in table


def test_cli_evaluates_with_given_weights_and_prints_a_summary(tmp_path, capsys):
    build(tmp_path / "data")
    torch.manual_seed(0)
    torch.save(MobileNetV2UNet().state_dict(), tmp_path / "seg.pt")
    torch.save(MobileNetV2Classifier().state_dict(), tmp_path / "cls.pt")
    args = ["evaluate", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--bootstrap", "50"]
    args += ["--segmentation-weights", str(tmp_path / "seg.pt"), "--detection-weights", str(tmp_path / "cls.pt")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dice_per_patient_mean" in printed and "report.html" in printed
    evaluated_ = json.loads((tmp_path / "out" / "metrics.json").read_text())["evaluated"]
    assert len(evaluated_["segmentation_model"]["sha256"]) == 64 and evaluated_["detection_model"]["version"]


def test_split_option_evaluates_only_that_splits_patients(tmp_path, capsys):
    build(tmp_path / "data")
    patients = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"patients": {"training": patients[1:], "test": patients[:1]}}))
    torch.manual_seed(0)
    torch.save(MobileNetV2UNet().state_dict(), tmp_path / "seg.pt")
    torch.save(MobileNetV2Classifier().state_dict(), tmp_path / "cls.pt")
    args = ["evaluate", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--bootstrap", "10"]
    args += ["--segmentation-weights", str(tmp_path / "seg.pt"), "--detection-weights", str(tmp_path / "cls.pt")]
    assert main([*args, "--split", "test", "--split-file", str(split)]) == 0
    per_patient = list(csv.DictReader((tmp_path / "out" / "per_patient.csv").open()))
    assert [row["patient_id"] for row in per_patient] == patients[:1]


def test_split_naming_a_patient_missing_from_the_dataset_is_a_clear_error(tmp_path, capsys):
    build(tmp_path / "data")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"patients": {"test": ["NOT_THERE_1"]}}))
    args = ["evaluate", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--split", "test", "--split-file"]
    torch.save(MobileNetV2UNet().state_dict(), tmp_path / "seg.pt")
    torch.save(MobileNetV2Classifier().state_dict(), tmp_path / "cls.pt")
    weights = ["--segmentation-weights", str(tmp_path / "seg.pt"), "--detection-weights", str(tmp_path / "cls.pt")]
    assert main([*args, str(split), *weights]) == 2
    assert "NOT_THERE_1" in capsys.readouterr().err and not (tmp_path / "out").exists()
