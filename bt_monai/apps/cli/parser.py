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
    p.add_argument(
        "--output", "-o", required=True, help="the JSON datalist to write (--by-site: the folder of site datalists)"
    )
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of patients for validation (0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of patients for testing (0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (0)")
    p.add_argument(
        "--split",
        metavar="FILE",
        help="put the patients where FILE puts them (a split record such as configs/lgg_split.json, or a datalist) "
        "instead of splitting by seed",
    )
    sites = p.add_argument_group("federated sites")
    sites.add_argument(
        "--by-site",
        action="store_true",
        help="write OUTPUT/<site>.json, one datalist per contributing institution (TCGA_<site>_<case>) with its "
        "training and validation patients; the test patients stay outside every site",
    )
    sites.add_argument(
        "--min-site-patients",
        type=int,
        default=10,
        metavar="N",
        help="sites with fewer than N training patients are pooled into one site named by their codes (10)",
    )
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
        "federated",
        help="federated training with NVIDIA FLARE: each site trains the segmentation bundle on its own data",
        description="Federated training of the segmentation bundle with NVIDIA FLARE (pip install "
        "'bt_monai[federated]'). simulate: run the job in NVFlare's simulator on this machine, one process per site, "
        "FedAvg on the server. Each site reads only its own datalist and sends weights (or their differences) and "
        "its validation Dice, never images, file names or per-slice outputs. The job folder written to "
        "OUTPUT/job is the one a POC or provisioned NVFlare deployment takes.",
    )
    p.add_argument("action", choices=("simulate",))
    p.add_argument(
        "--sites", nargs="+", required=True, metavar="DATALIST", help="one datalist per site (its stem names the site)"
    )
    p.add_argument("--rounds", type=int, default=5, help="FedAvg rounds (5)")
    p.add_argument("--local-epochs", type=int, default=1, help="epochs each site trains per round (1)")
    p.add_argument("--output", "-o", required=True, help="folder to create for the run (must not exist, or be empty)")
    p.add_argument(
        "--send",
        choices=("weights", "diff"),
        default="weights",
        help="what a site sends each round: its weights, or their difference to the global model (weights)",
    )
    p.add_argument(
        "--privacy",
        choices=("none", "percentile"),
        default="none",
        help="client output filter: percentile = NVFlare's PercentilePrivacy on the weight differences (only the "
        "largest changes leave the site, clipped to --gamma; implies --send diff) (none)",
    )
    p.add_argument("--percentile", type=float, default=10.0, help="PercentilePrivacy: changes below it stay (10)")
    p.add_argument("--gamma", type=float, default=0.01, help="PercentilePrivacy: the largest change sent (0.01)")
    p.add_argument(
        "--on-site-failure",
        choices=("stop", "continue"),
        default="stop",
        help="a site that fails: stop the run, or go on with the sites left (stop)",
    )
    p.add_argument("--no-cross-site", action="store_true", help="skip the cross-site evaluation after the last round")
    p.add_argument("--init-weights", metavar="FILE", help="state dict the global model starts from (default: fresh)")
    p.add_argument("--bundle", help="the segmentation bundle folder the sites run (default: the installed one)")
    p.add_argument(
        "--bundle-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a train.json setting for every site, e.g. tumor_fraction=0.5 (VALUE as JSON); repeatable",
    )
    p.add_argument(
        "--site-override",
        action="append",
        default=[],
        metavar="SITE:KEY=VALUE",
        help="a train.json setting for one site, e.g. HT:batch_size=8; repeatable",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per site (0: the cores shared out)")
    p.set_defaults(func=command.federated)

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
