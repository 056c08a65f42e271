"""An evaluation's report: ``metrics.json``, ``per_slice.csv``, ``per_patient.csv``, PNG figures and a
self-contained ``report.html``, written by ``python -m bt_monai evaluate`` and the bundles' evaluation alike.

Numbers come from :func:`bt_monai.metrics.summarize`; this module only lays them out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import bt_monai
from bt_monai.metrics import SEGMENTATION_METRICS, SliceResult, dice_from_counts, segmentation_scores, summarize
from bt_monai.utils import atomic_write_bytes, printable, write_csv
from bt_monai.writers.overlays import overlay_rgb
from bt_monai.writers.skipped import write_skipped

__all__ = ["FIGURES", "write_figures", "write_html", "write_report"]

FIGURES = {
    "confusion_matrix.png": "Detection: confusion matrix",
    "roc_curve.png": "Detection: ROC curve",
    "dice_per_patient.png": "Segmentation: Dice per patient (volume)",
    "overlay_gallery.png": "Segmentation: best, median and worst tumor slices",
    "worst_patients.png": "Segmentation: the three patients with the lowest Dice, each at its largest tumor slice",
}


def _figure(**kwargs):
    """A matplotlib figure, imported only when one is drawn (no pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _confusion(output: Path, detection: dict) -> None:
    matrix = np.array(detection["confusion_matrix"])
    fig = _figure(figsize=(3.6, 3.2))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="black", fontsize=13)
    ax.set_xticks([0, 1], ["no tumor", "tumor"])
    ax.set_yticks([0, 1], ["no tumor", "tumor"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"slices, threshold {detection['threshold']}")
    _save(fig, output / "confusion_matrix.png")


def _roc(output: Path, slices, detection: dict) -> None:
    from sklearn.metrics import roc_curve

    fig = _figure(figsize=(3.8, 3.6))
    ax = fig.subplots()
    labels = [s.tumor_true for s in slices]
    if detection.get("roc_auc") is None:
        ax.text(0.5, 0.5, f"ROC undefined:\n{detection.get('roc_auc_undefined_reason')}", ha="center", wrap=True)
    else:
        fpr, tpr, _ = roc_curve(labels, [s.tumor_score for s in slices])
        ax.plot(fpr, tpr, lw=2, label=f"AUC = {detection['roc_auc']:.3f}")
        ax.legend(loc="lower right")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, per slice")
    _save(fig, output / "roc_curve.png")


def _dice_distribution(output: Path, per_patient: dict) -> None:
    dice = np.array([p["dice"] for p in per_patient.values()])
    fig = _figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    ax.axvline(dice.mean(), color="black", ls="--", label=f"mean {dice.mean():.3f}")
    ax.axvline(np.median(dice), color="#dd8452", ls=":", label=f"median {np.median(dice):.3f}")
    ax.set_xlabel("Dice (patient volume)")
    ax.set_ylabel("patients")
    ax.legend()
    _save(fig, output / "dice_per_patient.png")


def _overlay_rows(output: Path, name: str, rows: Sequence[tuple[str, str, str]], predictor, empty: str) -> None:
    """One figure row per ``(title, slice path, caption)``: the slice, then truth (green) and prediction (red)."""
    from bt_monai.data import load_truth_mask, mask_path_for
    from bt_monai.transforms import LoadSlice

    fig = _figure(figsize=(6.4, 3.2 * max(1, len(rows))))
    axes = fig.subplots(max(1, len(rows)), 2, squeeze=False)
    if not rows:
        axes[0, 0].text(0.5, 0.5, empty, ha="center")
    load = LoadSlice()
    predictions = {p.path: p for p in predictor.predict_paths([path for _, path, _ in rows])}
    for row, (title, path, caption) in enumerate(rows):
        image = load(path)
        gray = image[1 if image.shape[0] >= 3 else 0].numpy().T
        truth = load_truth_mask(mask_path_for(path), load)
        pred = predictions[path].mask > 0
        overlay = overlay_rgb(gray, prediction=pred, truth=truth, window="max")
        axes[row, 0].imshow(gray, cmap="gray")
        axes[row, 0].set_title(f"{printable(title)}\n{printable(Path(path).name)}", fontsize=8)
        axes[row, 1].imshow(overlay)
        axes[row, 1].set_title(f"{caption} (green truth, red prediction)", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    _save(fig, output / name)


def _gallery(output: Path, slices, predictor) -> None:
    tumor = sorted((s for s in slices if s.tumor_true), key=lambda s: float(dice_from_counts(s.counts)))
    picks = [("worst", tumor[0]), ("median", tumor[len(tumor) // 2]), ("best", tumor[-1])] if tumor else []
    rows = [(label, s.path, f"Dice {float(dice_from_counts(s.counts)):.3f}") for label, s in picks]
    _overlay_rows(output, "overlay_gallery.png", rows, predictor, "no tumor slice in the dataset")


def _worst_patients(output: Path, worst: Sequence[dict], predictor) -> None:
    rows = [
        (p["patient_id"], p["largest_tumor_slice"], f"patient Dice {p['dice']:.3f}")
        for p in worst
        if p["largest_tumor_slice"]
    ]
    _overlay_rows(output, "worst_patients.png", rows, predictor, "no patient with tumor")


def write_figures(output: Path, slices: Sequence, per_patient: dict, metrics: dict, predictor=None) -> None:
    """The PNG figures of :data:`FIGURES` for the tasks in ``metrics`` (the gallery needs a predictor)."""
    if "detection" in metrics:
        _confusion(output, metrics["detection"])
        _roc(output, slices, metrics["detection"])
    if "segmentation" in metrics:
        _dice_distribution(output, per_patient)
        if predictor is not None:
            _gallery(output, slices, predictor)
            _worst_patients(output, metrics["segmentation"].get("worst_patients", []), predictor)


def _fmt(value) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _patient_table(per_patient: dict) -> str:
    """The per-patient table: a column no patient has a value for (the mm³ of TIFFs, which carry no spacing)
    is left out, and a missing value in another column shows as a dash (not "undefined", a metric's word)."""
    columns = [c for c in next(iter(per_patient.values()), {}) if any(p[c] is not None for p in per_patient.values())]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join("<td>&ndash;</td>" if p[c] is None else f"<td>{_fmt(p[c])}</td>" for c in columns) + "</tr>"
        for p in per_patient.values()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(output: Path, metrics: dict, per_patient: dict) -> None:
    """``report.html``: tables and figures (embedded as data URIs) in one page that needs no network."""
    ci = metrics.get("confidence_intervals", {})
    headline = []
    for group in ("detection", "segmentation"):
        for key, value in metrics.get(group, {}).items():
            if isinstance(value, (int, float)) or value is None:
                interval = ci.get(f"{group}.{key}")
                shown = "" if not interval else f"{interval[0]:.4f} to {interval[1]:.4f}"
                headline.append((group, key, value, shown))
    figures = "".join(
        f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,"
        f"{base64.b64encode((output / name).read_bytes()).decode()}'><figcaption>{html.escape(title)}"
        "</figcaption></figure>"
        for name, title in FIGURES.items()
        if (output / name).is_file()
    )
    evaluated = json.dumps(metrics.get("evaluated", {}), indent=2)
    slice_score = html.escape(str(metrics.get("evaluated", {}).get("settings", {}).get("slice_score", "detector")))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bt_monai evaluation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 640px; }}
pre {{ background: #f7f7f7; padding: 1em; }}
</style></head><body>
<h1>bt_monai evaluation report</h1>
<p>Detection is per slice: the {slice_score}
slice score at threshold {_fmt(metrics["evaluated"].get("threshold"))}. Dice per patient pools all
slices of a patient into one volume; Dice over tumor slices averages slices whose ground truth has tumor.
Intervals: 95%, bootstrap over patients. Research use only, not for diagnosis.</p>
<h2>Metrics</h2>
{_table(headline, ["task", "metric", "value", "95% interval"])}
<h2>Figures</h2>
{figures}
<h2>Per patient</h2>
{_patient_table(per_patient)}
<h2>What was evaluated</h2>
<pre>{html.escape(evaluated)}</pre>
</body></html>
"""
    atomic_write_bytes(output / "report.html", printable(page).encode())


def write_report(
    output: str | os.PathLike,
    slices: Sequence[SliceResult],
    threshold: float,
    evaluated: dict,
    n_bootstrap: int = 1000,
    seed: int = 0,
    predictor=None,
    skipped: Sequence[tuple[str, str]] = (),
    tasks: Sequence[str] = ("detection", "segmentation"),
) -> dict:
    """Summarize ``slices`` and write metrics.json, the CSVs, the figures and report.html under ``output``.

    ``tasks`` limits metrics.json to the tasks that were evaluated (a bundle evaluates one). The overlay
    gallery needs a ``predictor`` to redraw the slices; without one it is left out.
    """
    output = Path(output).expanduser()
    metrics, per_patient = summarize(slices, threshold, n_bootstrap, seed)
    metrics = {k: v for k, v in metrics.items() if k not in ("detection", "segmentation") or k in tasks}
    metrics["confidence_intervals"] = {
        k: v for k, v in metrics["confidence_intervals"].items() if k.split(".")[0] in tasks
    }
    metrics["evaluated"] = {
        "bt_monai_version": bt_monai.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **evaluated,
        "bootstrap": {"resamples": n_bootstrap, "unit": "patient", "seed": seed},
        "threshold": threshold,
    }
    metrics = json.loads(json.dumps(metrics, default=float), parse_constant=lambda c: None)  # NaN -> null
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    slice_columns = [
        "patient_id", "slice_index", "path", "tumor_true", "tumor_probability", "tumor_score", "tumor_pred",
        *SEGMENTATION_METRICS, "true_area_px", "pred_area_px",
    ]  # fmt: skip
    rows = []
    for s in slices:
        scores = segmentation_scores(s.counts)  # dice, iou, pixel_accuracy: the metrics' own definitions
        rows.append(
            [
                s.patient_id,
                s.slice_index,
                s.path,
                s.tumor_true,
                f"{s.tumor_probability:.6f}",
                f"{s.tumor_score:.6f}",
                s.tumor_pred,
            ]
            + [f"{scores[name]:.6f}" for name in SEGMENTATION_METRICS]
            + [s.tp + s.fn, s.tp + s.fp]
        )
    write_csv(output / "per_slice.csv", slice_columns, rows)
    patient_columns = list(next(iter(per_patient.values())))
    write_csv(
        output / "per_patient.csv",
        patient_columns,
        [["" if p[k] is None else p[k] for k in patient_columns] for p in per_patient.values()],
    )
    write_skipped(output, skipped)  # always, header only when nothing was skipped
    write_figures(output, slices, per_patient, metrics, predictor)
    write_html(output, metrics, per_patient)
    return metrics
