"""The ``bt-monai`` argument parser: commands, their options, and the model options of the settings type."""

from __future__ import annotations

import argparse

from bt_monai.apps.cli import commands as command
from bt_monai.apps.cli.options import add_model_options

__all__ = ["build_parser"]


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
    p.set_defaults(func=command.datalist)

    p = commands.add_parser(
        "infer",
        help="detect and segment tumor on one slice, a folder of slices or a kaggle_3m dataset",
        description="Run both models on INPUT (one image; a folder of TIFF/PNG/JPEG/DICOM/NIfTI slices, any "
        "nesting; or a kaggle_3m dataset, whose mask files are not inputs). Writes OUT/predictions.csv (path, "
        "tumor_probability, tumor_score, tumor, tumor_area_px), OUT/masks/<path>.png (0/255, at each slice's size) and "
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
    add_model_options(p, "infer")
    p.set_defaults(func=command.infer)

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
    add_model_options(p, "evaluate")
    p.set_defaults(func=command.evaluate)

    p = commands.add_parser(
        "curves",
        help="draw a bundle training run's loss and validation metrics (TensorBoard logs) as a PNG",
        description="Read the TensorBoard event files a bundle run wrote under its output_dir and draw the "
        "per-epoch training loss and metrics into one PNG.",
    )
    p.add_argument("log_dir", help="the run's output_dir (holds events.out.tfevents.*)")
    p.add_argument("--output", "-o", required=True, help="the PNG to write")
    p.add_argument("--title", default="", help="figure title")
    p.set_defaults(func=command.curves)

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
    p.set_defaults(func=command.bundle)

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
    p.set_defaults(func=command.label)
    return parser
