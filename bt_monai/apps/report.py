"""Figures and the self-contained HTML page of an evaluation (see :mod:`bt_monai.apps.evaluate`)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from scipy import ndimage

from bt_monai.apps.files import atomic_write_bytes, printable

__all__ = ["FIGURES", "write_figures", "write_html", "outline"]

FIGURES = {
    "confusion_matrix.png": "Detection: confusion matrix",
    "roc_curve.png": "Detection: ROC curve",
    "dice_per_patient.png": "Segmentation: Dice per patient (volume)",
    "overlay_gallery.png": "Segmentation: best, median and worst tumor slices",
}


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask."""
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask)


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _confusion(output: Path, detection: dict) -> None:
    matrix = np.array(detection["confusion_matrix"])
    fig = Figure(figsize=(3.6, 3.2))
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

    fig = Figure(figsize=(3.8, 3.6))
    ax = fig.subplots()
    labels = [s.tumor_true for s in slices]
    if detection.get("roc_auc") is None:
        ax.text(0.5, 0.5, f"ROC undefined:\n{detection.get('roc_auc_undefined_reason')}", ha="center", wrap=True)
    else:
        fpr, tpr, _ = roc_curve(labels, [s.tumor_probability for s in slices])
        ax.plot(fpr, tpr, lw=2, label=f"AUC = {detection['roc_auc']:.3f}")
        ax.legend(loc="lower right")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, per slice")
    _save(fig, output / "roc_curve.png")


def _dice_distribution(output: Path, per_patient: dict) -> None:
    dice = np.array([p["dice"] for p in per_patient.values()])
    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    ax.axvline(dice.mean(), color="black", ls="--", label=f"mean {dice.mean():.3f}")
    ax.axvline(np.median(dice), color="#dd8452", ls=":", label=f"median {np.median(dice):.3f}")
    ax.set_xlabel("Dice (patient volume)")
    ax.set_ylabel("patients")
    ax.legend()
    _save(fig, output / "dice_per_patient.png")


def _gallery(output: Path, slices, predictor) -> None:
    from bt_monai.data import mask_path_for
    from bt_monai.metrics import dice_from_counts
    from bt_monai.transforms import BinarizeMask, LoadSlice

    tumor = sorted((s for s in slices if s.tumor_true), key=lambda s: float(dice_from_counts(s.counts)))
    picks = [("worst", tumor[0]), ("median", tumor[len(tumor) // 2]), ("best", tumor[-1])] if tumor else []
    fig = Figure(figsize=(6.4, 3.2 * max(1, len(picks))))
    axes = fig.subplots(max(1, len(picks)), 2, squeeze=False)
    if not picks:
        axes[0, 0].text(0.5, 0.5, "no tumor slice in the dataset", ha="center")
    load = LoadSlice()
    predictions = {p.path: p for p in predictor.predict_paths([s.path for _, s in picks])}
    for row, (label, s) in enumerate(picks):
        image = load(s.path)
        gray = image[1 if image.shape[0] >= 3 else 0].numpy().T
        truth = BinarizeMask()(load(mask_path_for(s.path)))[0].numpy().T > 0
        pred = predictions[s.path].mask > 0
        overlay = np.stack([gray / max(float(gray.max()), 1e-6)] * 3, -1)
        overlay[outline(truth)] = (0.1, 0.9, 0.1)
        overlay[outline(pred)] = (0.95, 0.1, 0.1)
        axes[row, 0].imshow(gray, cmap="gray")
        axes[row, 0].set_title(f"{label}: {printable(Path(s.path).name)}", fontsize=8)
        axes[row, 1].imshow(overlay)
        dice = float(dice_from_counts(s.counts))
        axes[row, 1].set_title(f"Dice {dice:.3f} (green truth, red prediction)", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    _save(fig, output / "overlay_gallery.png")


def write_figures(output: Path, slices: Sequence, per_patient: dict, metrics: dict, predictor=None) -> None:
    """The PNG figures of :data:`FIGURES` for the tasks in ``metrics`` (the gallery needs a predictor)."""
    if "detection" in metrics:
        _confusion(output, metrics["detection"])
        _roc(output, slices, metrics["detection"])
    if "segmentation" in metrics:
        _dice_distribution(output, per_patient)
        if predictor is not None:
            _gallery(output, slices, predictor)


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
    patients = [list(p.values()) for p in per_patient.values()]
    evaluated = json.dumps(metrics.get("evaluated", {}), indent=2)
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
<p>Detection is per slice at threshold {_fmt(metrics["evaluated"].get("threshold"))}. Dice per patient pools all
slices of a patient into one volume; Dice over tumor slices averages slices whose ground truth has tumor.
Intervals: 95%, bootstrap over patients. Research use only, not for diagnosis.</p>
<h2>Metrics</h2>
{_table(headline, ["task", "metric", "value", "95% interval"])}
<h2>Figures</h2>
{figures}
<h2>Per patient</h2>
{_table(patients, list(next(iter(per_patient.values()))) if per_patient else [])}
<h2>What was evaluated</h2>
<pre>{html.escape(evaluated)}</pre>
</body></html>
"""
    atomic_write_bytes(output / "report.html", printable(page).encode())
