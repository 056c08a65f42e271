"""Command line: ``bt-monai <command> ...`` (also ``python -m bt_monai``).

Each command imports what it needs when it runs, so ``bt-monai --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence


class UserError(Exception):
    """A problem the user can fix (a path, a setting); printed as one line, exit status 2."""


def _datalist(args: argparse.Namespace) -> int:
    from bt_monai.data import make_datalist, write_datalist

    datalist = make_datalist(args.dataset, args.val_fraction, args.test_fraction, args.seed)
    path = write_datalist(datalist, args.output)
    for split, c in datalist["metadata"]["counts"].items():
        print(f"{split:<11} {c['patients']:>4} patients {c['slices']:>6} slices {c['tumor_slices']:>6} with tumor")
    print(f"wrote {path}")
    return 0


def _predictor(args: argparse.Namespace):
    from bt_monai.inferers import TumorPredictor

    overrides = {"amp": False} if args.no_amp else {}
    if getattr(args, "input_mode", None):
        overrides["input_mode"] = args.input_mode
    if args.device:
        overrides["device"] = args.device
    if args.min_component_px is not None:
        overrides["min_component_px"] = args.min_component_px
    if args.gate_masks is not None:
        overrides["gate_masks"] = args.gate_masks == "on"
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    if args.detection_threshold is not None:
        overrides["detection_threshold"] = args.detection_threshold
    if args.segment_gate is not None:
        overrides["segment_gate"] = args.segment_gate
    if args.fold_batch_norm is not None:
        overrides["fold_batch_norm"] = args.fold_batch_norm == "on"
    if args.decode_workers is not None:
        overrides["decode_workers"] = args.decode_workers
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    return TumorPredictor.from_bundles(
        args.segmentation_bundle, args.detection_bundle, args.segmentation_weights, args.detection_weights, **overrides
    )


def _provenance(args: argparse.Namespace) -> dict:
    from bt_monai.bundle import bundle_provenance

    return bundle_provenance(
        args.segmentation_bundle, args.detection_bundle, args.segmentation_weights, args.detection_weights
    )


def _dicom_options(args: argparse.Namespace) -> dict:
    """The keyword arguments both DICOM faces take (folder and DICOMweb)."""
    return {
        "all_modalities": args.all_modalities,
        "always_seg": args.always_seg,
        "overwrite": args.overwrite,
        "anonymize": args.anonymize,
        "batch_size": args.batch_size,
        "series": args.series,
        "store_to": args.store_to,
        "ca_bundle": args.ca_bundle,
    }


def _report_dicom(args: argparse.Namespace, run) -> int:
    """Print what a DICOM run did; the exit status: 1 when a study, a series or a store failed."""
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
    status = 0
    if run.stored:
        counts = {s: sum(1 for r in run.stored if r["status"] == s) for s in ("stored", "already stored")}
        print(f"stored {counts['stored']} object(s) (SEG, SR), {counts['already stored']} already on the server")
        for record in run.store_failed:
            print(
                f"error: not stored: {record['object']} of {record['series_folder']} (study "
                f"{record['study_instance_uid']}): {record['reason']}",
                file=sys.stderr,
            )
            status = 1
    for study in run.studies_incomplete:
        print(f"error: study {study['study_instance_uid']} {study['status']}: {study['reason']}", file=sys.stderr)
        status = 1
    if run.series_done == 0:
        hint = "; --all-modalities processes other modalities" if run.skipped_series else ""
        print(
            f"error: no MR image series could be processed from {args.input} (see {args.output}/summary.json and "
            f"skipped.csv{hint})",
            file=sys.stderr,
        )
        return 1
    return status


def _infer_dicom(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom import infer_dicom
    from bt_monai.data.dicom.dicomweb import DicomWebError

    if args.store:
        raise UserError(
            "--store sends the results back to the DICOMweb server INPUT is; for a folder use --store-to URL"
        )
    predictor = _predictor(args)
    try:
        run = infer_dicom(predictor, args.input, args.output, provenance=_provenance(args), **_dicom_options(args))
    except DicomWebError as e:
        raise UserError(str(e)) from None
    return _report_dicom(args, run)


def _infer_dicomweb(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom import infer_dicomweb
    from bt_monai.data.dicom.dicomweb import DicomWebError

    if args.input_type == "slices":
        raise UserError(f"{args.input} is a DICOMweb URL: --input-type slices does not apply")
    predictor = _predictor(args)
    try:
        run = infer_dicomweb(
            predictor,
            args.input,
            args.output,
            studies=args.study or [],
            patient=args.patient,
            store=args.store,
            provenance=_provenance(args),
            **_dicom_options(args),
        )
    except DicomWebError as e:
        raise UserError(str(e)) from None
    return _report_dicom(args, run)


def _infer(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom_input import looks_like_dicom_input
    from bt_monai.apps.infer import infer_folder
    from bt_monai.data.dicom.dicomweb import is_dicomweb_url

    if is_dicomweb_url(args.input):
        return _infer_dicomweb(args)
    if args.study or args.patient:
        raise UserError("--study / --patient choose studies on a DICOMweb server: give its URL as INPUT")
    if args.input_type == "dicom" or (args.input_type == "auto" and looks_like_dicom_input(args.input)):
        return _infer_dicom(args)
    dicom_only = ("all_modalities", "always_seg", "anonymize", "series", "store", "store_to")
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
    from bt_monai.data import patients_in_split

    predictor = _predictor(args)
    provenance = _provenance(args)
    patients = None
    if args.split or args.split_file:
        if not (args.split and args.split_file):
            raise UserError(
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
    print(
        f"{counts['evaluated_slices']} slices of {counts['patients']} patients, input {predictor.input_mode}; "
        f"report: {args.output}/report.html"
    )
    if counts["skipped_files"]:
        print(f"{counts['skipped_files']} file(s) skipped, reasons in {args.output}/skipped.csv", file=sys.stderr)
    return 0


def _curves(args: argparse.Namespace) -> int:
    from bt_monai.apps.curves import plot_training_curves

    print(f"wrote {plot_training_curves(args.log_dir, args.output, args.title)}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from bt_monai import bundle

    if args.action == "list":
        for row in bundle.list_bundles():
            where = row["path"] or "not found"
            weights = "with weights" if row["weights"] else "no weights"
            folder = bundle.BUNDLE_FOLDERS[row["name"]]
            print(f"{row['name']:<13} {folder:<28} {row['version'] or '-':<7} {weights:<13} {where}")
        return 0
    if not args.name:
        raise UserError(f"bt-monai bundle {args.action}: give a bundle name (segmentation or detection)")
    if args.action == "path":
        print(bundle.locate_bundle(args.name))
        return 0
    if not args.destination:
        raise UserError("bt-monai bundle copy NAME DEST: give the destination folder")
    copied = bundle.copy_bundle(args.name, args.destination)
    print(f"copied the {bundle.bundle_name(args.name)} bundle to {copied}; train there, e.g.:")
    print(f"  cd {copied} && python -m monai.bundle run training --meta_file configs/metadata.json \\")
    print("      --config_file configs/train.json --logging_file configs/logging.conf --dataset_dir /path/to/kaggle_3m")
    return 0


def _label(args: argparse.Namespace) -> int:
    from bt_monai.apps.label.datastore import make_label_datastore
    from bt_monai.data import DatasetError

    try:
        done = make_label_datastore(args.source, args.output, args.patients, labels=args.labels, copy=args.copy)
    except DatasetError as e:  # nothing was overwritten; exit status 1, as the datastore command always had
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{done['folder']}: {done['images']} slices, {done['labels']} labels ({done['tumor_labels']} with tumor)")
    return 0


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a probability between 0 and 1 is expected, got {text}")
    return value


def _gate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a tumor probability between 0 and 1 is expected, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1 is expected, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a whole number of at least 0 is expected, got {text}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segmentation-bundle", help="segmentation bundle folder or name (default: the installed bundle)")
    p.add_argument(
        "--detection-bundle",
        "--classification-bundle",
        dest="detection_bundle",
        help="detection bundle folder or name (default: the installed brain_tumor_classification bundle)",
    )
    p.add_argument("--segmentation-weights", help="weights file instead of the bundle's models/model.pt")
    p.add_argument(
        "--detection-weights",
        "--classification-weights",
        dest="detection_weights",
        help="weights file instead of the detection bundle's models/model.pt",
    )
    p.add_argument("--batch-size", type=int, default=16, help="slices per batch (16)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--no-amp", action="store_true", help="plain float32 (no bf16/fp16 autocast)")
    p.add_argument(
        "--min-component-px",
        type=int,
        help="drop mask components smaller than this many pixels (default: the segmentation bundle's setting)",
    )
    p.add_argument(
        "--threshold",
        type=_probability,
        help="per-pixel tumor probability threshold (default: the segmentation bundle's)",
    )
    p.add_argument(
        "--detection-threshold",
        type=_probability,
        help="slice tumor probability threshold (default: the detection bundle's)",
    )
    p.add_argument(
        "--gate-masks",
        choices=("on", "off"),
        help="clear the mask of slices the detector calls tumor-free (default: the segmentation bundle's setting)",
    )
    p.add_argument(
        "--segment-gate",
        type=_gate,
        help="run the U-Net only on slices whose tumor probability is at least this; the others get an empty mask "
        "(0: segment every slice; default: the segmentation bundle's setting)",
    )
    p.add_argument(
        "--fold-batch-norm",
        choices=("on", "off"),
        help="fold batch norms into convolutions, faster, rounding differs slightly (default: the bundle's setting)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads of the networks (default: PyTorch's, one per core)",
    )
    p.add_argument(
        "--decode-workers",
        type=_non_negative_int,
        help="threads that read and resize slices while the networks run (default: 2, none on 2 cores)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bt-monai", description="Brain tumor detection and segmentation on 2D MRI slices (MONAI plugin)."
    )
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
        "completes) are kept when the weights and settings are the same; DICOM: finished series are kept. A DICOMweb "
        "URL with --study UID / --patient ID: the studies' series are retrieved (QIDO-RS, WADO-RS) and processed as "
        "a DICOM folder; --store sends each SEG and SR back (STOW-RS). Credentials: the environment variables "
        "BT_MONAI_DICOMWEB_USER and BT_MONAI_DICOMWEB_PASSWORD (basic) or BT_MONAI_DICOMWEB_TOKEN (bearer).",
    )
    p.add_argument(
        "input", help="a slice file, a folder, a DICOM folder / DICOMDIR, or a DICOMweb URL (http(s)://host/dicom-web)"
    )
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
    dicom.add_argument(
        "--series",
        metavar="REGEX",
        help="process the series whose SeriesDescription or ProtocolName matches REGEX (case-insensitive; default: "
        "per study the series naming FLAIR, else every MR series)",
    )
    web = p.add_argument_group("DICOMweb (INPUT a URL; credentials from BT_MONAI_DICOMWEB_* environment variables)")
    web.add_argument("--study", action="append", metavar="UID", help="a StudyInstanceUID to process (repeatable)")
    web.add_argument("--patient", metavar="ID", help="process every study of this PatientID")
    web.add_argument(
        "--store",
        action="store_true",
        help="store each series' SEG and SR into its study on the INPUT server (STOW-RS); no duplicates on re-runs",
    )
    web.add_argument(
        "--store-to", metavar="URL", help="store the SEG and SR on this DICOMweb server instead (folder input too)"
    )
    web.add_argument(
        "--ca-bundle", metavar="FILE", help="PEM file of the CA certificates that verify the servers' TLS certificates"
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
    p.add_argument(
        "--input",
        dest="input_mode",
        choices=("all", "flair"),
        help="what the predictor is given: all (the three sequences as RGB, the bundles' default) or flair (the "
        "FLAIR channel alone as one grayscale image, exactly as a DICOM series arrives)",
    )
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

    p = commands.add_parser(
        "bundle",
        help="list the installed bundles, print one's folder, or copy one into a folder of yours for training",
        description="The two shipped MONAI bundles: segmentation (brain_tumor_segmentation) and detection "
        "(brain_tumor_classification; 'classification' names it too). 'copy' puts one into DEST (new or empty) "
        "with its configs, docs and weights, as monai.bundle download does for a Zoo bundle: train there, never "
        "in the installed folder.",
    )
    p.add_argument("action", choices=("list", "path", "copy"))
    p.add_argument("name", nargs="?", help="segmentation or detection (or a bundle folder name)")
    p.add_argument("destination", nargs="?", help="copy: the folder to create (must not exist, or be empty)")
    p.set_defaults(func=_bundle)

    p = commands.add_parser(
        "label",
        help="MONAI Label: link slices into a datastore folder (optionally with their masks as labels)",
        description="Link the slices of a kaggle_3m dataset (or any folder of slices) into one flat folder for "
        "`monailabel start_server --studies`; with --labels, write each kaggle_3m mask as its finished label "
        "(labels/final/<id>.<ext>, 0/1). Same as `python -m bt_monai.apps.label datastore`.",
    )
    p.add_argument("action", choices=("datastore",))
    p.add_argument("source", help="kaggle_3m dataset folder, or any folder of slices")
    p.add_argument("--output", required=True, help="datastore folder to create or add to")
    p.add_argument("--patients", nargs="+", metavar="PATIENT", help="only these kaggle_3m patient folders")
    p.add_argument("--labels", action="store_true", help="write the kaggle_3m masks as finished labels")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.set_defaults(func=_label)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A blank slice (one value everywhere) scales to zeros; MONAI warns about it on every such slice.
    warnings.filterwarnings("ignore", message=r"Divide by zero \(a_min == a_max\)")
    from bt_monai.bundle import WeightsError  # standard library only: cheap

    try:
        return args.func(args)
    except (UserError, OSError, ValueError, WeightsError) as e:  # DatasetError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
