"""`python -m bt_monai curves`: a bundle run's TensorBoard scalars as one PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from bt_monai.__main__ import main
from bt_monai.apps.curves import read_scalars


def _write_run(log_dir, epochs: int, iterations: int, first_epoch: int = 1) -> None:
    with SummaryWriter(str(log_dir)) as writer:
        for epoch in range(first_epoch, epochs + 1):
            for i in range(iterations):
                writer.add_scalar("train_loss", 1.0 / epoch, (epoch - 1) * iterations + i + 1)
            writer.add_scalar("val_patient_dice", epoch / 10, epoch)


def test_a_resumed_run_reads_as_one_curve_with_the_last_value_per_epoch(tmp_path):
    _write_run(tmp_path, epochs=3, iterations=4)
    _write_run(tmp_path, epochs=5, iterations=4, first_epoch=3)  # resumed at epoch 3
    steps, values = read_scalars(tmp_path)["val_patient_dice"]
    assert steps.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(values, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)


def test_curves_command_writes_a_png(tmp_path, capsys):
    _write_run(tmp_path / "run", epochs=4, iterations=3)
    assert main(["curves", str(tmp_path / "run"), "--output", str(tmp_path / "curves.png")]) == 0
    assert Image.open(tmp_path / "curves.png").size[0] > 500


def test_a_folder_without_logs_is_a_clear_error(tmp_path, capsys):
    assert main(["curves", str(tmp_path), "--output", str(tmp_path / "c.png")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
