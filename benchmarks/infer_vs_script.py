"""``bt-monai infer`` against the plain script a user would write (``benchmarks/plain_script.py``), whole processes.

Each command runs as a fresh process (interpreter start, imports, model loading, reading, both networks,
writing every mask and the CSV), alternating ours and the script, ``--runs`` times each, into fresh output
folders. Inputs: the slices of a fixed, named list of patients, by default the test patients of
``configs/lgg_split.json`` (388 slices). Also timed: one slice in a cold process, and ``bt-monai --help`` /
``bt-monai infer --help``.

Rows: ours with the detector gating the U-Net (the segmentation bundle's ``segment_gate``) and without
(``--segment-gate 0``); ratio = the script's time / ours (above 1: ours is faster), from the medians.
Ours uses the shipped weights; the script random ones (it measures speed only).

Run on an idle machine: ``.venv/bin/python benchmarks/infer_vs_script.py [--runs 5]`` (needs the ``bench``
extra: ``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "plain_script.py"


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


def link_patients(data: Path, patients: list[str], folder: Path, first_slice_only: bool = False) -> int:
    """A folder of links to the patients' slice folders (or to one slice); returns the number of slices."""
    folder.mkdir(parents=True)
    count = 0
    for patient in patients:
        slices = sorted(p for p in (data / patient).glob("*.tif") if not p.name.endswith("_mask.tif"))
        if first_slice_only:
            os.symlink(slices[len(slices) // 2], folder / slices[len(slices) // 2].name)
            return 1
        os.symlink(data / patient, folder / patient)
        count += len(slices)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
    parser.add_argument("--split-file", default=str(REPO / "configs" / "lgg_split.json"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gate", type=float, help="segment_gate of the gated row (default: the bundle's)")
    args = parser.parse_args()

    patients = json.loads(Path(args.split_file).read_text())["patients"][args.split]
    bundle = json.loads((REPO / "bundle" / "brain_tumor_segmentation" / "configs" / "inference.json").read_text())
    gate = args.gate if args.gate is not None else float(bundle.get("segment_gate", 0.0))
    python, cli = sys.executable, str(Path(sys.executable).with_name("bt-monai"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = link_patients(Path(args.data), patients, tmp / "folder")
        link_patients(Path(args.data), patients, tmp / "one", first_slice_only=True)
        print(f"inputs: {n} slices of {len(patients)} {args.split} patients ({', '.join(patients)})")

        def ours(source: str, out: Path, g: float) -> list[str]:
            return [
                python,
                "-m",
                "bt_monai",
                "infer",
                str(tmp / source),
                "--output",
                str(out),
                "--segment-gate",
                str(g),
            ]

        variants = {
            "folder, ours, gate on": lambda out: ours("folder", out, gate),
            "folder, ours, gate off": lambda out: ours("folder", out, 0.0),
            "folder, script": lambda out: [python, str(SCRIPT), str(tmp / "folder"), str(out)],
            "one slice, ours": lambda out: ours("one", out, gate),
            "one slice, script": lambda out: [python, str(SCRIPT), str(tmp / "one"), str(out)],
            "bt-monai --help": lambda out: [cli, "--help"],
            "bt-monai infer --help": lambda out: [cli, "infer", "--help"],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for run in range(args.runs):
            names = list(variants)
            names = names[run % len(names) :] + names[: run % len(names)]  # alternate the order between runs
            for name in names:
                out = tmp / "out"
                times[name].append(timed(variants[name](out)))
                if name == "folder, ours, gate off" and run == 0:
                    with open(out / "predictions.csv", newline="") as f:
                        probabilities = [float(r["tumor_probability"]) for r in csv.DictReader(f)]
                shutil.rmtree(out, ignore_errors=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    gated = sum(p < gate for p in probabilities) / len(probabilities)
    print(f"\nmachine: {os.cpu_count()} CPU threads; {args.runs} runs each, alternating; median (min-max)\n")
    print("| command (whole process) | time | slices/s | ratio script/ours |")
    print("|---|---|---|---|")
    for name in ("folder, ours, gate on", "folder, ours, gate off", "folder, script"):
        ratio = median["folder, script"] / median[name]
        print(f"| {name} | {spread(times[name])} | {n / median[name]:.1f} | {ratio:.2f} |")
    for name in ("one slice, ours", "one slice, script"):
        print(f"| {name} | {spread(times[name])} | | {median['one slice, script'] / median[name]:.2f} |")
    for name in ("bt-monai --help", "bt-monai infer --help"):
        print(f"| {name} | {spread(times[name])} | | |")
    print(f"\nsegment_gate {gate:g}: the U-Net skipped {gated:.1%} of the {n} slices")


if __name__ == "__main__":
    main()
