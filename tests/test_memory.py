"""Folder inference streams: however many slices a folder holds, at most one batch of decoded slices (plus the
decoding threads' look-ahead) is alive at once, so memory stays flat (benchmarks/infer_memory.py measures the
process's RSS over 10,000 slices)."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bt_monai.apps.infer import infer_folder
from bt_monai.inferers import TumorPredictor
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet


class AliveCounter:
    """Counts the objects passed to :meth:`track` that are still alive, and the most that were at once."""

    def __init__(self) -> None:
        self.alive = self.most = self.tracked = 0

    def track(self, obj):
        self.alive += 1
        self.tracked += 1
        self.most = max(self.most, self.alive)
        weakref.finalize(obj, self._released)
        return obj

    def _released(self) -> None:
        self.alive -= 1


@pytest.fixture(scope="module")
def predictor() -> TumorPredictor:
    torch.manual_seed(0)
    return TumorPredictor(
        MobileNetV2UNet(), MobileNetV2Classifier(), spatial_size=(32, 32), amp=False, decode_workers=0
    )


def slice_folder(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8)).save(folder / f"s_{i}.png")
    return folder


@pytest.mark.parametrize("count", [9, 50])
@pytest.mark.parametrize("workers", [0, 2])
def test_folder_inference_holds_one_batch_of_decoded_slices_whatever_the_folder_size(
    count, workers, predictor, tmp_path, monkeypatch
):
    src = slice_folder(tmp_path / "in", count)
    decoded = AliveCounter()
    prepare = predictor.prepare
    monkeypatch.setattr(predictor, "prepare", lambda pixels: decoded.track(prepare(pixels)))
    monkeypatch.setattr(predictor, "decode_workers", workers)
    summary = infer_folder(predictor, src, tmp_path / "out", batch_size=4)
    assert summary.slices == decoded.tracked == count
    lookahead = 2 * 4 if workers else 0  # the decoding threads work at most two batches ahead
    assert decoded.most <= 4 + lookahead + 1  # one batch (and the slice being added), for 9 slices as for 50
    assert decoded.alive == 0
