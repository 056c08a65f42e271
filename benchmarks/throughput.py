"""Throughput of bt_monai's inference and training paths against bare peers, measured side by side in one run.

Rows (slices per second, higher is better; ratio = bt_monai / peer at the same precision):

- segmentation inference: the project's predictor path (``AutocastInferer`` + ``MobileNetV2UNet``) against
  ``segmentation_models_pytorch.Unet("mobilenet_v2")`` called bare;
- detection inference: ``MobileNetV2Classifier`` through the same path against torchvision's ``mobilenet_v2``
  called bare;
- end to end: ``TumorPredictor.predict_paths`` over slice files (read, preprocess, both models, masks at the
  slice's size) against the two bare models on preprocessed tensors;
- training step: the segmentation bundle's ``SupervisedTrainer`` (cached data, augmentation, handlers) against a
  bare PyTorch loop over the same network, loss, optimizer and precision.

Run: ``.venv/bin/python benchmarks/throughput.py [--data ../shared/data/lgg/kaggle_3m] [--slices 128]``.
Numbers depend on the machine and its load: compare ratios measured in the same run, not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bt_monai.data import discover_kaggle3m, make_synthetic_kaggle3m
from bt_monai.inferers import AutocastInferer, TumorPredictor, cpu_supports_bf16
from bt_monai.networks import MobileNetV2Classifier, MobileNetV2UNet

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare(network: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype | None, channels_last: bool):
    memory = torch.channels_last if channels_last else torch.contiguous_format
    network = network.eval().to(memory_format=memory)
    x = batch.contiguous(memory_format=memory)

    @torch.no_grad()
    def run():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            network(x)

    return run


def ours(network: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype | None, channels_last: bool):
    memory = torch.channels_last if channels_last else torch.contiguous_format
    network = network.eval().to(memory_format=memory)
    inferer = AutocastInferer(enabled=dtype is not None, dtype=dtype, channels_last=channels_last)

    @torch.no_grad()
    def run():
        inferer(batch, network)

    return run


def training_rows(
    dataset: Path, batch_size: int, steps: int, dtype: torch.dtype | None, patients: int = 12
) -> list[tuple]:
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    bundle = REPO / "bundle" / "brain_tumor_segmentation"
    with tempfile.TemporaryDirectory() as tmp:
        # A few patients are enough for a steady rate: link the first `patients` patient folders.
        subset = Path(tmp) / "data"
        subset.mkdir()
        for folder in sorted(p for p in dataset.iterdir() if p.is_dir())[:patients]:
            (subset / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        wf = ConfigWorkflow(
            config_file=str(bundle / "configs" / "train.json"),
            workflow_type=None,
            bundle_root=tmp,
            dataset_dir=str(subset),
            max_epochs=2,
            val_interval=1000,
            batch_size=batch_size,
            amp=dtype is not None,
            val_fraction=0.2,
            test_fraction=0.1,
        )
        wf.initialize()
        stamps: list[float] = []
        trainer = wf.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
        wf.run()
        second_epoch = stamps[len(stamps) // 2 :]  # the first epoch warms up
        trainer_rate = batch_size * (len(second_epoch) - 1) / (second_epoch[-1] - second_epoch[0])
        loss = wf.parser.get_parsed_content("loss")
        network = MobileNetV2UNet().to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
        x = torch.rand(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(batch_size, 1, 224, 224) > 0.9).float()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = network(x)
            loss(out.float(), y).backward()
            optimizer.step()

        network.train()
        bare_rate = batch_size / timed(step, steps)
    return [("training step, U-Net (bundle trainer vs bare loop)", trainer_rate, bare_rate)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
    parser.add_argument("--slices", type=int, default=128, help="slices for the end-to-end row")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()

    import segmentation_models_pytorch as smp
    import torchvision

    torch.manual_seed(0)
    dtype = torch.bfloat16 if cpu_supports_bf16() else None
    precision = "bf16 autocast + channels-last" if dtype else "fp32 + channels-last"
    batch = torch.rand(args.batch_size, 3, 224, 224)
    rows = []
    pairs = (
        (
            "segmentation inference (MobileNetV2 U-Net vs smp Unet)",
            MobileNetV2UNet(),
            smp.Unet("mobilenet_v2", encoder_weights=None, classes=1),
        ),
        (
            "detection inference (classifier vs torchvision mobilenet_v2)",
            MobileNetV2Classifier(),
            torchvision.models.mobilenet_v2(num_classes=1),
        ),
    )
    for name, project, peer in pairs:
        ours_rate = args.batch_size / timed(ours(project, batch, dtype, True), args.repeats)
        peer_rate = args.batch_size / timed(bare(peer, batch, dtype, True), args.repeats)
        rows.append((name, ours_rate, peer_rate))

    data = Path(args.data)
    if not data.is_dir():
        data = make_synthetic_kaggle3m(Path(tempfile.mkdtemp()) / "kaggle_3m", 8, 16, size=256)
    paths = [r.image for r in discover_kaggle3m(data)][: args.slices]
    seg, det = MobileNetV2UNet(), MobileNetV2Classifier()
    predictor = TumorPredictor(seg, det, amp=dtype is not None)
    start = time.perf_counter()
    for _ in predictor.predict_paths(paths, args.batch_size):
        pass
    end_to_end = len(paths) / (time.perf_counter() - start)
    both_bare = 1 / (1 / rows[0][2] + 1 / rows[1][2])
    rows.append((f"end to end over {len(paths)} files (predictor vs both bare models)", end_to_end, both_bare))

    if not args.skip_training:
        rows += training_rows(data, args.batch_size, args.repeats, dtype)

    print(f"\nbt_monai throughput, {precision}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")  # fmt: skip
    print(f"{'what':<72}{'bt_monai':>10}{'peer':>10}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:<72}{a:>10.1f}{b:>10.1f}{a / b:>8.2f}")
    print("(slices per second; ratio = bt_monai / peer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
