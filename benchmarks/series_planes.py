"""Series in any plane: the same FLAIR voxels sent as axial, sagittal, coronal, oblique and thin-slice DICOM series
through ``infer`` (the shipped models), scored against the expert masks, and the time a sagittal series takes.

For each patient (default: the test patients of ``configs/lgg_split.json``; the shipped weights never saw them)
one study is written: its axial FLAIR (0.9375 mm pixels, 5 mm slices, as our exports), the same voxels as
sagittal and coronal images, the volume resampled to slices tilted 20 degrees about left-right (``oblique``),
interpolated to 1 mm axial slices (``thin``), and those thin slices as sagittal images (``thin_sagittal``, a 3D
acquisition's shape). Each series' ``mask.nii.gz`` is mapped onto the axial grid (trilinear, >= 0.5) and scored:

- Dice per patient against the expert mask, and against the axial run's mask;
- the tumor volume (mm³, from ``summary.json``) against the axial run's, beside the **resampling error**: the
  change in volume of the axial run's own mask when it is resampled onto that series' grid and back (what the
  geometry alone costs, with no model in the loop).

Then one sagittal series is timed phase by phase (decode, resample to axial, networks, resample back, threshold)
against a whole ``infer`` run of it. Run from the repository root:

    python benchmarks/series_planes.py [--data ../shared/data/lgg/kaggle_3m] [--patients ID ...]
        [--reformat-slice-spacing 5 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from pydicom.uid import generate_uid

from bt_monai.apps.dicom import infer_dicom
from bt_monai.data.dicom import iter_frame_pixels, scan_dicom_folder, to_channel_first
from bt_monai.inferers import TumorPredictor
from bt_monai.transforms.reformat import plan_axial, resample_volume, to_axial, to_source
from bt_monai.writers.dicom_series import axial_affine, reslice, write_volume_series

REPO = Path(__file__).resolve().parents[1]
VIEWS = ("axial", "sagittal", "coronal", "oblique", "thin", "thin_sagittal")


def patient_volume(data: Path, patient: str) -> tuple[np.ndarray, np.ndarray]:
    """(FLAIR x16 as uint16, expert mask as bool), both ``(W, H, D)``, of one kaggle_3m patient."""
    folder = data / patient
    n = len([p for p in folder.glob("*.tif") if not p.name.endswith("_mask.tif")])
    flair = np.stack([tifffile.imread(folder / f"{patient}_{k}.tif")[..., 1].T for k in range(1, n + 1)], -1)
    truth = np.stack([tifffile.imread(folder / f"{patient}_{k}_mask.tif").T > 0 for k in range(1, n + 1)], -1)
    return flair.astype(np.uint16) * 16, truth


def views_of(flair: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each view's (volume, RAS affine)."""
    affine = axial_affine()
    views = {"axial": (flair, affine)}
    for plane in ("sagittal", "coronal", "oblique", "thin"):
        views[plane] = reslice(flair, affine, plane)
    views["thin_sagittal"] = reslice(*views["thin"], "sagittal")
    return views


def on_grid(mask: np.ndarray, affine: np.ndarray, target: np.ndarray, shape) -> np.ndarray:
    """A 0/1 volume mapped onto another grid: trilinear, then >= 0.5."""
    return resample_volume(mask[None].astype(np.float32), affine, target, shape)[0].numpy() >= 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run_patient(predictor: TumorPredictor, data: Path, patient: str, work: Path) -> dict[str, dict]:
    """Every view of one patient through infer_dicom: per view, Dice against the expert and the axial run, volume."""
    flair, truth = patient_volume(data, patient)
    views = views_of(flair)
    study, frame = generate_uid(), generate_uid()
    source = work / patient / "in"
    for number, (name, (volume, affine)) in enumerate(views.items(), 1):
        write_volume_series(
            source / name, volume, affine, StudyInstanceUID=study, FrameOfReferenceUID=frame,
            SeriesNumber=number, SeriesDescription=f"FLAIR {name}",
        )  # fmt: skip
    out = work / patient / "out"
    infer_dicom(predictor, source, out, series="FLAIR")
    entries = {e["series_description"].split()[-1]: e for e in json.loads((out / "summary.json").read_text())["series"]}
    axial_affine_, shape = views["axial"][1], flair.shape
    masks = {}
    for name, entry in entries.items():
        image = nib.load(out / entry["outputs"]["nifti"])
        masks[name] = on_grid(np.asarray(image.dataobj), image.affine, axial_affine_, shape)
    axial_mask = np.asarray(nib.load(out / entries["axial"]["outputs"]["nifti"]).dataobj) > 0
    axial_volume = entries["axial"]["tumor_volume_mm3"]
    voxel = float(np.prod([0.9375, 0.9375, 5.0]))
    results = {}
    for name, entry in entries.items():
        volume, affine = views[name]
        there = on_grid(axial_mask, axial_affine_, affine, volume.shape)
        grid_voxel = abs(float(np.linalg.det(affine[:3, :3])))
        geometric = there.sum() * grid_voxel - axial_mask.sum() * voxel
        results[name] = {
            "dice_expert": dice(masks[name], truth),
            "dice_axial_run": dice(masks[name], masks["axial"]),
            "volume_mm3": entry["tumor_volume_mm3"],
            "volume_change": (entry["tumor_volume_mm3"] - axial_volume) / axial_volume if axial_volume else 0.0,
            "resampling_error": geometric / (axial_mask.sum() * voxel) if axial_mask.any() else 0.0,
            "reformatted": entry["geometry"]["reformatted"],
            "images": entry["slices"],
        }
    return results


def time_sagittal(predictor: TumorPredictor, data: Path, patient: str, work: Path, repeats: int = 3) -> dict:
    """Seconds per phase of one sagittal series (medians of ``repeats``), and a whole infer run of it."""
    flair, _ = patient_volume(data, patient)
    volume, affine = reslice(flair, axial_affine(), "sagittal")
    folder = work / "timing" / "in"
    write_volume_series(folder, volume, affine)
    (series,) = scan_dicom_folder(folder).series
    settings = predictor.settings
    phases: dict[str, list[float]] = {k: [] for k in ("decode", "to_axial", "networks", "to_source", "threshold")}
    whole = []
    for r in range(repeats):
        t0 = time.perf_counter()
        images = [to_channel_first(p) for _, p in iter_frame_pixels(series.frames)]
        stacked = np.stack(images, -1)
        t1 = time.perf_counter()
        plan = plan_axial(series.affine()[0], stacked.shape[1:], settings.axial_tolerance_deg,
                          settings.reformat_pixel_mm, settings.reformat_slice_mm)  # fmt: skip
        axial = to_axial(stacked, plan)
        t2 = time.perf_counter()
        slices = ((str(k), axial[..., k]) for k in range(axial.shape[-1]))
        maps = [p.probabilities.T for p in predictor.predict_probabilities(slices, 16)]
        t3 = time.perf_counter()
        back = to_source(np.stack(maps, -1)[None], plan)[0].numpy()
        t4 = time.perf_counter()
        _ = [(back[..., k] >= predictor.threshold).T for k in range(back.shape[-1])]
        t5 = time.perf_counter()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            phases[key].append(value)
        t = time.perf_counter()
        infer_dicom(predictor, folder, work / "timing" / f"out{r}", overwrite=True)
        whole.append(time.perf_counter() - t)
    return {
        "images": len(series.frames),
        "axial_slices": plan.axial_shape[2],
        "phases": {k: statistics.median(v) for k, v in phases.items()},
        "infer": statistics.median(whole),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m")
    parser.add_argument("--patients", nargs="*", help="patient folders (default: the test split of lgg_split.json)")
    parser.add_argument("--reformat-slice-spacing", type=float, nargs="+", default=[5.0],
                        help="axial slice spacings (mm) to compare for the reformatted series")  # fmt: skip
    parser.add_argument("--no-timing", action="store_true", help="skip the sagittal timing")
    args = parser.parse_args()
    patients = args.patients or json.loads((REPO / "configs" / "lgg_split.json").read_text())["patients"]["test"]
    base = TumorPredictor.from_bundles()
    print(f"{len(patients)} patients; views: {', '.join(VIEWS)}; shipped models", flush=True)
    for spacing in args.reformat_slice_spacing:
        predictor = TumorPredictor(base.segmenter, base.detector, base.settings.replace(reformat_slice_mm=spacing))
        per_view: dict[str, list[dict]] = {v: [] for v in VIEWS}
        with tempfile.TemporaryDirectory() as tmp:
            for patient in patients:
                for name, result in run_patient(predictor, args.data, patient, Path(tmp)).items():
                    per_view[name].append(result)
                print(f"  {patient} done", file=sys.stderr, flush=True)
        print(f"\nreformat slice spacing {spacing:g} mm")
        print(
            "| series | reformatted | images | Dice vs expert | Dice vs axial run | volume change | resampling error |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, results in per_view.items():
            mean = {k: statistics.mean(abs(r[k]) if "change" in k or "error" in k else r[k] for r in results)
                    for k in ("dice_expert", "dice_axial_run", "volume_change", "resampling_error")}  # fmt: skip
            print(
                f"| {name} | {'yes' if results[0]['reformatted'] else 'no'} | {results[0]['images']} (first) | "
                f"{mean['dice_expert']:.3f} | {mean['dice_axial_run']:.3f} | {100 * mean['volume_change']:.1f}% | "
                f"{100 * mean['resampling_error']:.1f}% |"
            )
        worst = {n: min(r["dice_axial_run"] for r in rs) for n, rs in per_view.items()}
        print("worst patient, Dice vs axial run: " + ", ".join(f"{n} {v:.3f}" for n, v in worst.items()))
    if not args.no_timing:
        with tempfile.TemporaryDirectory() as tmp:
            timing = time_sagittal(base, args.data, patients[0], Path(tmp))
        total = sum(timing["phases"].values())
        print(f"\nsagittal series of {patients[0]}: {timing['images']} images -> {timing['axial_slices']} axial slices")
        print("| phase | seconds | share |")
        print("|---|---|---|")
        for phase, seconds in timing["phases"].items():
            print(f"| {phase} | {seconds:.2f} | {100 * seconds / total:.0f}% |")
        print(f"| whole infer run (outputs included) | {timing['infer']:.2f} | |")
        print(f"{timing['images'] / timing['infer']:.1f} source images per second through infer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
