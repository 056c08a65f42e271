"""Memory of ``python -m bt_monai infer`` over a large folder of slices: it should stay flat, whatever the count.

N slices (default 10,000: 256x256 8-bit PNGs, a few dozen distinct synthetic heads repeated) are written to a
temporary folder; then ``python -m bt_monai infer`` runs as a subprocess twice: over the first N/10 slices (the
reference) and over all N. The child's resident memory (VmRSS in ``/proc/<pid>/status``) is sampled every
``--interval`` seconds against the slices done (rows of its progress record, ``OUT/.bt_monai_infer_progress.csv``),
and its peak is the kernel's own (``ru_maxrss`` from ``wait4``). Printed: RSS after 10%, 50% and 100% of the
slices of each run, both peaks, and their ratio: about 1.0 when memory does not grow with the number of slices.

Weights: ``--segmentation-weights`` / ``--detection-weights`` as for the CLI, else the shipped bundles'
``models/model.pt``, else seeded random weights (memory does not depend on the values).

Run: ``.venv/bin/python benchmarks/infer_memory.py [--slices 10000] [--batch-size 16]``. Linux only (``/proc``,
``wait4``). Writes about 0.3 GB per 10,000 slices to the temporary folder (removed at the end).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bt_monai.apps.infer import PROGRESS_FILE
from bt_monai.bundle import locate_bundle

FRACTIONS = (0.1, 0.5, 1.0)


def head_png(rng: np.random.Generator, size: int = 256) -> bytes:
    """An 8-bit PNG of a head-like ellipse with texture and a bright blob."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    head = ((xx - 0.5) / rng.uniform(0.3, 0.42)) ** 2 + ((yy - 0.5) / rng.uniform(0.35, 0.45)) ** 2 <= 1
    coarse = rng.random((size // 16, size // 16))
    texture = np.kron(coarse, np.ones((16, 16))) * 0.5 + rng.random((size, size)) * 0.2
    cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.03, 0.12)
    blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    image = np.where(head, texture + 0.2 + 0.4 * blob, 0.0)
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_slices(folder: Path, count: int, distinct: int = 64) -> list[Path]:
    rng = np.random.default_rng(0)
    templates = [head_png(rng) for _ in range(distinct)]
    folder.mkdir(parents=True)
    paths = [folder / f"slice_{i:05d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(templates[i % distinct])
    return paths


def weight_options(args: argparse.Namespace, folder: Path) -> list[str]:
    """The CLI's weight options: as given, the shipped bundles' model.pt, or seeded random weights."""
    options = []
    for name, given, bundle, network in (
        ("segmentation", args.segmentation_weights, locate_bundle(name="segmentation"), "MobileNetV2UNet"),
        ("detection", args.detection_weights, locate_bundle(name="detection"), "MobileNetV2Classifier"),
    ):
        if given is None and not (bundle / "models" / "model.pt").is_file():
            import torch

            from bt_monai import networks

            torch.manual_seed(0)
            given = folder / f"{name}_random.pt"
            torch.save(getattr(networks, network)().state_dict(), given)
            print(f"{name}: no weights given nor shipped, using seeded random weights")
        if given is not None:
            options += [f"--{name}-weights", str(given)]
    return options


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class ProgressCounter:
    """Slices done by a running ``infer``: the rows appended to its progress record so far (read incrementally)."""

    def __init__(self, output: Path) -> None:
        self.path = output / PROGRESS_FILE
        self.offset, self.lines = 0, 0

    def done(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return max(self.lines - 1, 0)
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        return max(self.lines - 1, 0)  # the first line is the run's fingerprint


@dataclass
class MemoryRun:
    slices: int
    samples: list[tuple[int, float]] = field(default_factory=list)  # (slices done, RSS MB)
    peak_mb: float = 0.0
    seconds: float = 0.0

    def at(self, fraction: float) -> tuple[int, float]:
        """The first sample once ``fraction`` of the slices were done (the last sample if none)."""
        goal = fraction * self.slices
        return next((s for s in self.samples if s[0] >= goal), self.samples[-1])


def measure(command: list[str], output: Path, slices: int, interval: float) -> MemoryRun:
    """Run ``command`` (an ``infer`` into ``output``), sampling its RSS until it exits."""
    run, counter = MemoryRun(slices), ProgressCounter(output)
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:  # reaped here, so that ru_maxrss is this child's own peak
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            rss = rss_mb(process.pid)
            if rss is not None:
                run.samples.append((counter.done(), rss))
            time.sleep(interval)
        run.seconds = time.perf_counter() - start
        if process.returncode != 0:
            errors.seek(0)
            sys.exit(f"infer failed ({process.returncode}):\n{errors.read().decode()[-3000:]}")
    run.peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    if not run.samples:
        run.samples.append((slices, run.peak_mb))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=10000, help="slices of the full run (10000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples (0.1)")
    parser.add_argument("--segmentation-weights", help="weights file instead of the bundle's models/model.pt")
    parser.add_argument("--detection-weights", help="weights file instead of the bundle's models/model.pt")
    args = parser.parse_args()
    if not Path("/proc/self/status").is_file():
        sys.exit("needs Linux (/proc/<pid>/status)")

    reference = max(args.slices // 10, 1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = weight_options(args, tmp)
        print(f"writing {args.slices} slices of 256x256 PNG ...", flush=True)
        write_slices(tmp / "all", args.slices)
        (tmp / "reference").mkdir()
        for i in range(reference):
            (tmp / "reference" / f"slice_{i:05d}.png").symlink_to(tmp / "all" / f"slice_{i:05d}.png")
        for count, source in ((reference, tmp / "reference"), (args.slices, tmp / "all")):
            output = tmp / f"out_{count}"
            command = [sys.executable, "-m", "bt_monai", "infer", str(source), "--output", str(output)]
            command += ["--input-type", "slices", "--batch-size", str(args.batch_size), *weights]
            print(f"infer over {count} slices ...", flush=True)
            runs.append(measure(command, output, count, args.interval))

    print(f"\nbt_monai infer memory: batch {args.batch_size}, {os.cpu_count()} CPUs, resident set size (RSS)")
    print(f"{'slices in run':>14}{'sampled at':>12}{'slices done':>13}{'RSS MB':>10}")
    for run in runs:
        for fraction in FRACTIONS:
            done, rss = run.at(fraction)
            print(f"{run.slices:>14}{fraction:>12.0%}{done:>13}{rss:>10.1f}")
        speed = f"({run.seconds:.0f} s, {run.slices / run.seconds:.1f} slices/s)"
        print(f"{run.slices:>14}{'peak':>12}{'':>13}{run.peak_mb:>10.1f}   {speed}")
    print("(sampled at 100%: the last sample before the process ended)")
    small, large = runs
    ratio = large.peak_mb / small.peak_mb
    print(f"peak RSS, {large.slices} vs {small.slices} slices: ratio {ratio:.3f} (flat memory: about 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
