"""Command line: ``python -m bt_monai <command> ...`` (also installed as ``bt-monai``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from bt_monai.data import DatasetError, make_datalist, patients_in_split, write_datalist
from bt_monai.inferers.predictor import CLASSIFICATION_BUNDLE, SEGMENTATION_BUNDLE, WeightsError


def _datalist(args: argparse.Namespace) -> int:
    datalist = make_datalist(args.dataset, args.val_fraction, args.test_fraction, args.seed)
    path = write_datalist(datalist, args.output)
    for split, c in datalist["metadata"]["counts"].items():
        print(f"{split:<11} {c['patients']:>4} patients {c['slices']:>6} slices {c['tumor_slices']:>6} with tumor")
    print(f"wrote {path}")
    return 0


def _predictor(args: argparse.Namespace):
    from bt_monai.inferers import TumorPredictor

    overrides = {"amp": False} if args.no_amp else {}
    if args.device:
        overrides["device"] = args.device
    if args.min_component_px is not None:
        overrides["min_component_px"] = args.min_component_px
    if args.gate_masks is not None:
        overrides["gate_masks"] = args.gate_masks == "on"
    return TumorPredictor.from_bundles(
        args.segmentation_bundle,
        args.classification_bundle,
        args.segmentation_weights,
        args.classification_weights,
        **overrides,
    )


def _infer_dicom(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom import infer_dicom
    from bt_monai.inferers.predictor import bundle_provenance

    predictor = _predictor(args)
    provenance = bundle_provenance(
        args.segmentation_bundle, args.classification_bundle, args.segmentation_weights, args.classification_weights
    )
    run = infer_dicom(
        predictor,
        args.input,
        args.output,
        all_modalities=args.all_modalities,
        always_seg=args.always_seg,
        overwrite=args.overwrite,
        anonymize=args.anonymize,
        batch_size=args.batch_size,
        provenance=provenance,
    )
    print(
        f"{run.series_done} DICOM series ({len(run.processed)} processed now, {len(run.reused)} done earlier), "
        f"{run.slices} slices, {run.tumor_slices} with tumor; results in {args.output}"
    )
    for series in run.skipped_series:
        print(f"series {series['series_instance_uid']} skipped: {series['reason']}", file=sys.stderr)
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if run.skipped:
        print(f"{len(run.skipped)} file(s) skipped, reasons in {args.output}/skipped.csv", file=sys.stderr)
    if run.series_done == 0:
        hint = "; --all-modalities processes other modalities" if run.skipped_series else ""
        print(
            f"error: no MR image series could be processed in {args.input} (see {args.output}/summary.json and "
            f"skipped.csv{hint})",
            file=sys.stderr,
        )
        return 1
    return 0


def _infer(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom import looks_like_dicom_input
    from bt_monai.apps.infer import infer_folder

    if args.input_type == "dicom" or (args.input_type == "auto" and looks_like_dicom_input(args.input)):
        return _infer_dicom(args)
    dicom_only = ("all_modalities", "always_seg", "anonymize")
    given = [f"--{option.replace('_', '-')}" for option in dicom_only if getattr(args, option)]
    if given:
        print(f"note: {', '.join(given)}: for DICOM input only; {args.input} is read as slice images", file=sys.stderr)
    summary = infer_folder(_predictor(args), args.input, args.output, args.batch_size, overwrite=args.overwrite)
    earlier = f" ({summary.reused} of them done by an interrupted earlier run)" if summary.reused else ""
    print(f"{summary.slices} slices predicted{earlier}, {summary.tumor_slices} with tumor; results in {args.output}")
    if summary.skipped:
        print(f"{len(summary.skipped)} file(s) skipped, reasons in {args.output}/skipped.csv", file=sys.stderr)
    if summary.slices == 0:
        print(f"error: no readable slice found in {args.input}", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from bt_monai.apps.evaluate import HEADLINE_METRICS, evaluate_dataset
    from bt_monai.inferers.predictor import bundle_provenance

    predictor = _predictor(args)
    provenance = bundle_provenance(
        args.segmentation_bundle, args.classification_bundle, args.segmentation_weights, args.classification_weights
    )
    patients = None
    if args.split or args.split_file:
        if not (args.split and args.split_file):
            raise ValueError(
                "--split and --split-file go together: e.g. --split test --split-file configs/lgg_split.json"
            )
        patients = patients_in_split(args.split_file, args.split)
    metrics = evaluate_dataset(
        predictor, args.dataset, args.output, provenance, args.batch_size, args.bootstrap, patients=patients
    )
    ci = metrics["confidence_intervals"]
    print(f"{'task':<13}{'metric':<26}{'value':>8}   95% interval (patient bootstrap)")
    for group, names in HEADLINE_METRICS.items():
        for name in names:
            value, interval = metrics[group].get(name), ci.get(f"{group}.{name}")
            shown = "undefined" if value is None else f"{value:.4f}"
            span = f"{interval[0]:.4f} to {interval[1]:.4f}" if interval else ""
            print(f"{group:<13}{name:<26}{shown:>8}   {span}")
    counts = metrics["evaluated"]["dataset_counts"]
    print(f"{counts['evaluated_slices']} slices of {counts['patients']} patients; report: {args.output}/report.html")
    if counts["skipped_files"]:
        print(f"{counts['skipped_files']} file(s) skipped, reasons in {args.output}/skipped.csv", file=sys.stderr)
    return 0


def _curves(args: argparse.Namespace) -> int:
    from bt_monai.apps.curves import plot_training_curves

    print(f"wrote {plot_training_curves(args.log_dir, args.output, args.title)}")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segmentation-bundle", default=str(SEGMENTATION_BUNDLE), help="segmentation bundle folder")
    p.add_argument("--classification-bundle", default=str(CLASSIFICATION_BUNDLE), help="detection bundle folder")
    p.add_argument("--segmentation-weights", help="weights file instead of the bundle's models/model.pt")
    p.add_argument("--classification-weights", help="weights file instead of the bundle's models/model.pt")
    p.add_argument("--batch-size", type=int, default=16, help="slices per batch (16)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--no-amp", action="store_true", help="plain float32 (no bf16/fp16 autocast)")
    p.add_argument(
        "--min-component-px",
        type=int,
        help="drop mask components smaller than this many pixels (default: the segmentation bundle's setting)",
    )
    p.add_argument(
        "--gate-masks",
        choices=("on", "off"),
        help="clear the mask of slices the detector calls tumor-free (default: the segmentation bundle's setting)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bt_monai", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "datalist",
        help="split a kaggle_3m-style dataset by patient into a MONAI JSON datalist",
        description="Split a kaggle_3m-style dataset (one folder per patient, <patient>_<n>.tif with "
        "<patient>_<n>_mask.tif) by patient, stratified by tumor burden, into training/validation/test.",
    )
    p.add_argument("dataset", help="the dataset folder (holds one folder per patient)")
    p.add_argument("--output", "-o", required=True, help="the JSON datalist to write")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of patients for validation (0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of patients for testing (0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    p.set_defaults(func=_datalist)

    p = commands.add_parser(
        "infer",
        help="detect and segment tumor on one slice, a folder of slices or a kaggle_3m dataset",
        description="Run both models on INPUT (one image; a folder of TIFF/PNG/JPEG/DICOM/NIfTI slices, any "
        "nesting; or a kaggle_3m dataset, whose mask files are not inputs). Writes OUT/predictions.csv (path, "
        "tumor_probability, tumor, tumor_area_px), OUT/masks/<path>.png (0/255, at each slice's size) and "
        "OUT/skipped.csv for unreadable files. A DICOM folder (any nesting and file names, DICOMDIR allowed) is "
        "read series by series instead: per series OUT/<series>/seg.dcm (DICOM SEG), mask.nii.gz and overlays/*.png; "
        "OUT/predictions.csv with DICOM UIDs, OUT/summary.json (per series, tumor volume in mm3), OUT/skipped.csv. "
        "Interrupted (crash, kill)? Run the same command again: it continues where it stopped. Slices: an "
        "interrupted run's finished slices (recorded in OUT/.bt_monai_infer_progress.csv, removed when the run "
        "completes) are kept when the weights and settings are the same; DICOM: finished series are kept.",
    )
    p.add_argument("input", help="a slice file, a folder, or a DICOM folder / DICOMDIR")
    p.add_argument("--output", "-o", required=True, help="output folder (created)")
    p.add_argument(
        "--input-type",
        choices=("auto", "dicom", "slices"),
        default="auto",
        help="auto (default): DICOM when INPUT is a DICOM file or DICOMDIR, or a folder with a DICOMDIR or mostly "
        "DICOM files; dicom: always read series; slices: every file is one independent slice",
    )
    dicom = p.add_argument_group("DICOM input")
    dicom.add_argument(
        "--all-modalities", action="store_true", help="also process series that are not MR (skipped by default)"
    )
    dicom.add_argument(
        "--always-seg", action="store_true", help="write a DICOM SEG even when no tumor pixel was found (empty)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh: predict everything again, ignoring what an earlier run into OUT finished (slices: an "
        "interrupted run's progress; DICOM: finished series)",
    )
    dicom.add_argument(
        "--anonymize",
        action="store_true",
        help="no PatientID / PatientName in predictions.csv, summary.json or the series folder names",
    )
    _add_model_options(p)
    p.set_defaults(func=_infer)

    p = commands.add_parser(
        "evaluate",
        help="evaluate both models on a dataset with masks: metrics.json, CSVs, figures, report.html",
        description="Evaluate both models on DATASET (kaggle_3m layout, with masks). Writes OUT/metrics.json, "
        "OUT/per_slice.csv, OUT/per_patient.csv, PNG figures and OUT/report.html (self-contained).",
    )
    p.add_argument("dataset", help="the dataset folder (one folder per patient, with masks)")
    p.add_argument("--output", "-o", required=True, help="output folder (created)")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples for the intervals")
    p.add_argument("--split", choices=("training", "validation", "test"), help="evaluate only this split's patients")
    p.add_argument("--split-file", help="the split record naming the patients of --split (e.g. configs/lgg_split.json)")
    _add_model_options(p)
    p.set_defaults(func=_evaluate)

    p = commands.add_parser(
        "curves",
        help="draw a bundle training run's loss and validation metrics (TensorBoard logs) as a PNG",
        description="Read the TensorBoard event files a bundle run wrote under its output_dir and draw the "
        "per-epoch training loss and metrics into one PNG.",
    )
    p.add_argument("log_dir", help="the run's output_dir (holds events.out.tfevents.*)")
    p.add_argument("--output", "-o", required=True, help="the PNG to write")
    p.add_argument("--title", default="", help="figure title")
    p.set_defaults(func=_curves)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A blank slice (one value everywhere) scales to zeros; MONAI warns about it on every such slice.
    warnings.filterwarnings("ignore", message=r"Divide by zero \(a_min == a_max\)")
    try:
        return args.func(args)
    except (DatasetError, WeightsError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
