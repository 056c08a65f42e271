"""What gating the U-Net by the detector costs in accuracy and saves in work, on the validation patients.

With ``segment_gate`` g the U-Net runs only on slices whose tumor probability is >= g; the others get an empty
mask. One pass of both models over every slice (no gate) gives each slice's probability and mask; each gate
value then empties the masks below it, which is exactly what the gated predictor outputs. Printed per gate
and input mode: the share of slices the U-Net skips, patient Dice (mean over patients, the headline metric)
and its change, and the tumor slices skipped with their largest tumor in pixels.

The gate is chosen on validation patients (``configs/lgg_split.json``), never on test patients: the largest
gate whose Dice drop is at most 0.005 in both input modes and that skips no tumor slice of more than
``--max-skipped-px`` tumor pixels.

Run: ``.venv/bin/python benchmarks/segment_gate.py [--data ../shared/data/lgg/kaggle_3m] [--split validation]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bt_monai.data import discover_kaggle3m, patients_in_split
from bt_monai.inferers import TumorPredictor
from bt_monai.metrics import SliceResult, summarize
from bt_monai.metrics.functional import segmentation_counts
from bt_monai.transforms import BinarizeMask, LoadSlice

REPO = Path(__file__).resolve().parents[1]
GATES = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def predict(predictor: TumorPredictor, records) -> list[dict]:
    load, binarize = LoadSlice(), BinarizeMask()
    rows, by_image = [], {r.image: r for r in records}
    for prediction in predictor.predict_paths(list(by_image)):
        record = by_image[prediction.path]
        truth = binarize(load(record.mask))[0].numpy().T > 0
        counts = segmentation_counts(torch.from_numpy(prediction.mask[None, None]), torch.from_numpy(truth[None, None]))
        rows.append(
            {
                "record": record,
                "probability": prediction.tumor_probability,
                "counts": counts[0].int().tolist(),
                "truth_px": int(truth.sum()),
            }
        )
    return rows


def gated(rows: list[dict], gate: float, threshold: float) -> list[SliceResult]:
    results = []
    for row in rows:
        r, (tp, fp, fn, tn) = row["record"], row["counts"]
        if row["probability"] < gate:  # not segmented: an empty mask
            tp, fp, fn, tn = 0, 0, row["truth_px"], tn + fp + tp
        p = row["probability"]
        results.append(
            SliceResult(r.patient_id, r.slice_index, r.image, r.tumor, p, int(p >= threshold), tp, fp, fn, tn)
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"))
    parser.add_argument("--split", default="validation", choices=("training", "validation", "test"))
    parser.add_argument("--split-file", default=str(REPO / "configs" / "lgg_split.json"))
    parser.add_argument("--max-skipped-px", type=int, default=50, help="largest tumor a gate may skip (pixels)")
    args = parser.parse_args()

    patients = set(patients_in_split(args.split_file, args.split))
    records = [r for r in discover_kaggle3m(args.data) if r.patient_id in patients]
    print(
        f"{args.split} patients: {len(patients)}, slices: {len(records)}, tumor slices: {sum(r.tumor for r in records)}"
    )
    columns = ("input", "gate", "slices not segmented", "Dice per patient", "change", "tumor slices skipped")
    print("\n| " + " | ".join(columns) + " | largest skipped (px) |")
    print("|---|---|---|---|---|---|---|")
    safe = {}
    for mode in ("all", "flair"):
        predictor = TumorPredictor.from_bundles(input_mode=mode, segment_gate=0.0)
        rows = predict(predictor, records)
        base = None
        safe[mode] = set()
        for gate in GATES:
            metrics, _ = summarize(gated(rows, gate, predictor.detection_threshold), predictor.detection_threshold, 0)
            dice = metrics["segmentation"]["dice_per_patient_mean"]
            base = dice if base is None else base
            skipped = [row for row in rows if row["probability"] < gate]
            tumor_skipped = [row["truth_px"] for row in skipped if row["truth_px"] > 0]
            largest = max(tumor_skipped, default=0)
            print(
                f"| {mode} | {gate:g} | {len(skipped) / len(rows):.1%} | {dice:.4f} | {dice - base:+.4f} "
                f"| {len(tumor_skipped)} | {largest} |"
            )
            if base - dice <= 0.005 and largest <= args.max_skipped_px:
                safe[mode].add(gate)
    both = sorted(safe["all"] & safe["flair"])
    print(f"\nlargest gate within 0.005 Dice and {args.max_skipped_px} px in both modes: {both[-1] if both else 0}")


if __name__ == "__main__":
    main()
