"""Where a training epoch's time goes: the segmentation bundle's trainer against the network's own time.

Rows (milliseconds per training slice, lower is better; ratio = row / the network's own time):

- the bundle's ``train#trainer`` as shipped: cached deterministic preprocessing, random augmentation applied
  per batch in the training process (``RandBatchAugment`` through ``AugmentedPrepareBatch``), no loader
  workers;
- the same trainer with the previous data path: MONAI's per-sample random transforms
  (``train_augmentations``) in one DataLoader worker process;
- data loading and augmentation alone, for both paths (the trainer's loader iterated without a network);
- the network's own time: forward, loss, backward and optimizer step of the same network, loss, optimizer and
  precision on one batch held in memory (what the epoch would cost if data were free).

Run on an idle CPU: ``.venv/bin/python benchmarks/training_epoch.py [--data ../shared/data/lgg/kaggle_3m]
[--patients 12]``. Compare ratios measured in the same run, not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bt_monai.bundle import locate_bundle
from bt_monai.inferers import cpu_supports_bf16

REPO = Path(__file__).resolve().parents[1]
OLD_DATA_PATH = {
    "train#random_transforms": "$bt_monai.transforms.train_augmentations('image', 'label', "
    "sequence_dropout=@sequence_dropout)",
    "train#trainer#prepare_batch": "$monai.engines.default_prepare_batch",
    "loader_workers": 1,
}


def subset_of(dataset: Path, patients: int, folder: Path) -> Path:
    folder.mkdir()
    for patient in sorted(p for p in dataset.iterdir() if p.is_dir())[:patients]:
        (folder / patient.name).symlink_to(patient.resolve(), target_is_directory=True)
    return folder


def workflow(data: Path, root: Path, batch_size: int, **override):
    from monai.bundle import ConfigWorkflow

    bundle = locate_bundle(name="segmentation")
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        workflow_type=None,
        bundle_root=str(root),
        dataset_dir=str(data),
        max_epochs=2,
        val_interval=1000,  # no validation: the epoch is what is measured
        batch_size=batch_size,
        val_fraction=0.2,
        test_fraction=0.1,
        **override,
    )
    wf.initialize()
    return wf


def trainer_ms_per_slice(wf, batch_size: int) -> float:
    """The second epoch's milliseconds per slice (the first warms up), from iteration to iteration."""
    from ignite.engine import Events

    stamps: list[float] = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
    wf.run()
    second = stamps[len(stamps) // 2 :]
    return 1000 * (second[-1] - second[0]) / (batch_size * (len(second) - 1))


def loading_ms_per_slice(wf) -> float:
    """One pass of the trainer's loader (and its batch augmentation) with no network."""
    loader = wf.parser.get_parsed_content("train#dataloader")
    prepare = wf.parser.get_parsed_content("train#trainer").prepare_batch
    count, start = 0, time.perf_counter()
    for batch in loader:
        image, _ = prepare(batch, torch.device("cpu"), False)[:2]
        count += len(image)
    return 1000 * (time.perf_counter() - start) / count


def network_ms_per_slice(wf, batch_size: int, steps: int = 8) -> float:
    network = wf.parser.get_parsed_content("network")
    loss = wf.parser.get_parsed_content("loss")
    optimizer = wf.parser.get_parsed_content("optimizer")
    inferer = wf.parser.get_parsed_content("train#inferer")
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    x, y = batch["image"].as_tensor(), batch["label"].as_tensor()
    network.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(inferer(x, network), y).backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / (steps * batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
    parser.add_argument("--patients", type=int, default=12, help="patients linked into the benchmark dataset")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_of(Path(args.data), args.patients, Path(tmp) / "data")
        rows = []
        shipped = workflow(data, Path(tmp) / "new", args.batch_size)
        slices = len(shipped.parser.get_parsed_content("train#dataset"))
        # The trainer first: its two epochs also warm up oneDNN's kernels for the bare loop measured after it.
        trainer = trainer_ms_per_slice(shipped, args.batch_size)
        network = network_ms_per_slice(shipped, args.batch_size)
        rows.append(("network alone: forward + loss + backward + step, one in-memory batch", network))
        rows.append(("bundle trainer, batch augmentation in the training process (shipped)", trainer))
        rows.append(("  its data loading + augmentation alone", loading_ms_per_slice(shipped)))
        old = workflow(data, Path(tmp) / "old", args.batch_size, **OLD_DATA_PATH)
        rows.append(
            (
                "bundle trainer, per-sample MONAI augmentation in 1 loader worker",
                trainer_ms_per_slice(old, args.batch_size),
            )
        )
        rows.append(("  its data loading + augmentation alone", loading_ms_per_slice(old)))
    precision = "bf16 autocast + channels-last" if cpu_supports_bf16() else "fp32"
    print(f"\nsegmentation training epoch, {slices} training slices of {args.patients} patients, batch "
          f"{args.batch_size}, {precision}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'what':<78}{'ms/slice':>10}{'ratio':>8}")
    for name, ms in rows:
        print(f"{name:<78}{ms:>10.1f}{ms / network:>8.2f}")
    print("(ratio = milliseconds per slice / the network's own; the goal is an epoch within 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
