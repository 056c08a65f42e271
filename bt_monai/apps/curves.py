"""Training curves of a bundle run: its TensorBoard scalars drawn as one PNG (``python -m bt_monai curves``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bt_monai.utils import atomic_write_bytes

__all__ = ["read_scalars", "plot_training_curves"]


def read_scalars(log_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag in the TensorBoard event files under ``log_dir``: ``{tag: (steps, values)}``.

    A resumed run appends a new event file that repeats some steps: the last value written for a step wins.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(log_dir).expanduser().rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {log_dir}: give the run's output_dir")
    merged: dict[str, dict[int, float]] = {}
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return {
        tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)])) for tag, points in merged.items()
    }


def plot_training_curves(log_dir: str | os.PathLike, output: str | os.PathLike, title: str = "") -> Path:
    """Draw the training loss (per-epoch mean) and the per-epoch metrics of a run into the PNG ``output``."""
    scalars = read_scalars(log_dir)
    epoch_tags = {t: v for t, v in scalars.items() if t != "train_loss" and not t.startswith("Learning")}
    fig = Figure(figsize=(11, 4))
    loss_ax, metric_ax = fig.subplots(1, 2)
    if "train_loss" in scalars and epoch_tags:
        steps, values = scalars["train_loss"]
        epochs = max(int(s.max()) for s, _ in epoch_tags.values())
        per_epoch = np.array_split(values, epochs)  # iterations are numbered across epochs
        loss_ax.plot(np.arange(1, epochs + 1), [chunk.mean() for chunk in per_epoch], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="loss")
    for tag, (steps, values) in sorted(epoch_tags.items()):
        metric_ax.plot(steps, values, marker=".", label=tag)
    metric_ax.set(xlabel="epoch", ylabel="value", ylim=(0, 1), title="metrics")
    metric_ax.legend(fontsize="small")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(Path(output), buffer.getvalue())
    return Path(output)
