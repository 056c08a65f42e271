"""The ``bt-monai`` commands: each turns its parsed options into a call of the layers below and a status.

Each command imports what it needs when it runs, so ``bt-monai --help`` answers at once. Exit statuses:
:data:`bt_monai.apps.cli.exits.EXIT_STATUSES`.
"""

from __future__ import annotations

import argparse
import sys

from bt_monai.apps.cli.exits import ExitStatus, UserError
from bt_monai.apps.cli.options import predictor as predictor_of

__all__ = ["bundle", "curves", "datalist", "evaluate", "federated", "infer", "label"]


def datalist(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bt_monai.data import make_datalist, site_datalists, write_datalist, write_site_datalists

    # --by-site: absolute paths, since a site's datalist is read wherever that site keeps it
    dataset = Path(args.dataset).expanduser().resolve() if args.by_site else args.dataset
    datalist = make_datalist(dataset, args.val_fraction, args.test_fraction, args.seed, split_file=args.split)
    if args.by_site:
        sites = site_datalists(datalist, args.min_site_patients)
        paths = write_site_datalists(sites, args.output)
        print(f"{'site':<12}{'institutions':<14}{'training':>18}{'validation':>18}")
        for site, site_list in sites.items():
            c = site_list["metadata"]["counts"]
            shown = {s: f"{c[s]['patients']} pat {c[s]['slices']} sl" for s in ("training", "validation")}
            institutions = ",".join(site_list["metadata"]["institutions"])
            print(f"{site:<12}{institutions:<14}{shown['training']:>18}{shown['validation']:>18}")
        test = datalist["metadata"]["counts"]["test"]
        print(f"test patients held out of every site: {test['patients']} ({test['slices']} slices)")
        print(f"wrote {len(paths)} site datalists to {args.output}")
        return ExitStatus.DONE
    path = write_datalist(datalist, args.output)
    for split, c in datalist["metadata"]["counts"].items():
        print(f"{split:<11} {c['patients']:>4} patients {c['slices']:>6} slices {c['tumor_slices']:>6} with tumor")
    print(f"wrote {path}")
    return ExitStatus.DONE


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


def _repairs_line(series: dict) -> str:
    """One line for the header values a series' SEG and SR needed fixed (a warning when a UID was derived)."""
    shown = []
    for r in series["repairs"]:
        change = {"repaired": f" -> {r['value']!r}", "derived": f": {r['value']}"}.get(r["action"], "")
        original = f" {r['original']!r}" if r["original"] else ""
        shown.append(f"{r['attribute']}{original} {r['action']}{change}")
    level = "warning" if any(r["action"] == "derived" for r in series["repairs"]) else "note"
    return f"{level}: {series['folder']}: source header values fixed for its SEG and SR: {'; '.join(shown)}"


def _report_dicom(args: argparse.Namespace, run) -> int:
    """Print what a DICOM run did; the exit status: incomplete (1) when a study, a series or a store failed."""
    print(
        f"{run.series_done} DICOM series ({len(run.processed)} processed now, {len(run.reused)} done earlier), "
        f"{run.slices} slices, {run.tumor_slices} with tumor; results in {args.output}"
    )
    for series in run.skipped_series:
        print(f"series {series['series_instance_uid']} skipped: {series['reason']}", file=sys.stderr)
    for series in run.geometry:
        print(f"{series['level']}: {series['folder']}: {series['reason']}", file=sys.stderr)
    for series in run.header_repairs:
        print(_repairs_line(series), file=sys.stderr)
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if run.skipped:
        print(f"{len(run.skipped)} file(s) skipped, reasons in {args.output}/skipped.csv", file=sys.stderr)
    status = ExitStatus.DONE
    for series in run.failed_series:
        print(
            f"error: series {series['series_instance_uid']} ({series['folder']}): {series['reason']} (its masks "
            f"and other outputs are written; see {args.output}/summary.json)",
            file=sys.stderr,
        )
        status = ExitStatus.INCOMPLETE
    if run.stored:
        counts = {s: sum(1 for r in run.stored if r["status"] == s) for s in ("stored", "already stored")}
        print(f"stored {counts['stored']} object(s) (SEG, SR), {counts['already stored']} already on the server")
        for record in run.store_failed:
            print(
                f"error: not stored: {record['object']} of {record['series_folder']} (study "
                f"{record['study_instance_uid']}): {record['reason']}",
                file=sys.stderr,
            )
            status = ExitStatus.INCOMPLETE
    for study in run.studies_incomplete:
        print(f"error: study {study['study_instance_uid']} {study['status']}: {study['reason']}", file=sys.stderr)
        status = ExitStatus.INCOMPLETE
    if run.series_done == 0:
        hint = "; --all-modalities processes other modalities" if run.skipped_series else ""
        print(
            f"error: no MR image series could be processed from {args.input} (see {args.output}/summary.json and "
            f"skipped.csv{hint})",
            file=sys.stderr,
        )
        return ExitStatus.INCOMPLETE
    return status


def _one_process_for_dicom(args: argparse.Namespace) -> None:
    """Refuse DICOM input under torchrun: its series, resume markers and stores are not shared among processes."""
    from bt_monai.utils.distributed import launched_world_size

    if launched_world_size() > 1:
        raise UserError(
            f"{args.input} is DICOM input, which runs as one process: under torchrun only folders of slice images "
            "are shared among the processes. Run one bt-monai infer per DICOM folder or per study list instead "
            "(README, 'Many processes')"
        )


def _infer_dicom(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom import infer_dicom
    from bt_monai.data.dicom.dicomweb import DicomWebError

    _one_process_for_dicom(args)
    if args.store:
        raise UserError(
            "--store sends the results back to the DICOMweb server INPUT is; for a folder use --store-to URL"
        )
    predictor = predictor_of(args)
    try:
        run = infer_dicom(predictor, args.input, args.output, provenance=predictor.provenance(), **_dicom_options(args))
    except DicomWebError as e:
        raise UserError(str(e)) from None
    return _report_dicom(args, run)


def _infer_dicomweb(args: argparse.Namespace) -> int:
    from bt_monai.apps.dicom import infer_dicomweb
    from bt_monai.data.dicom.dicomweb import DicomWebError

    if args.input_type == "slices":
        raise UserError(f"{args.input} is a DICOMweb URL: --input-type slices does not apply")
    _one_process_for_dicom(args)
    predictor = predictor_of(args)
    try:
        run = infer_dicomweb(
            predictor,
            args.input,
            args.output,
            studies=args.study or [],
            patient=args.patient,
            store=args.store,
            provenance=predictor.provenance(),
            **_dicom_options(args),
        )
    except DicomWebError as e:
        raise UserError(str(e)) from None
    return _report_dicom(args, run)


def infer(args: argparse.Namespace) -> int:
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
    from bt_monai.utils.distributed import init_process_group, is_main_process

    init_process_group(args.device)  # under torchrun: before the networks are built (each rank on its GPU)
    summary = infer_folder(predictor_of(args), args.input, args.output, args.batch_size, overwrite=args.overwrite)
    if not is_main_process():  # rank 0 reports the whole run
        return ExitStatus.DONE if summary.slices else ExitStatus.INCOMPLETE
    earlier = f" ({summary.reused} of them done by an interrupted earlier run)" if summary.reused else ""
    print(f"{summary.slices} slices predicted{earlier}, {summary.tumor_slices} with tumor; results in {args.output}")
    if summary.skipped:
        print(f"{len(summary.skipped)} file(s) skipped, reasons in {args.output}/skipped.csv", file=sys.stderr)
    if summary.slices == 0:
        print(f"error: no readable slice found in {args.input}", file=sys.stderr)
        return ExitStatus.INCOMPLETE
    return ExitStatus.DONE


def evaluate(args: argparse.Namespace) -> int:
    from bt_monai.apps.evaluate import HEADLINE_METRICS, evaluate_dataset
    from bt_monai.data import patients_in_split
    from bt_monai.utils.distributed import init_process_group, is_main_process

    init_process_group(args.device)  # under torchrun: before the networks are built (each rank on its GPU)
    predictor = predictor_of(args)
    provenance = predictor.provenance()
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
    if not is_main_process():  # rank 0 reports the whole run
        return ExitStatus.DONE
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
    return ExitStatus.DONE


def curves(args: argparse.Namespace) -> int:
    from bt_monai.apps.curves import plot_training_curves

    print(f"wrote {plot_training_curves(args.log_dir, args.output, args.title)}")
    return ExitStatus.DONE


def bundle(args: argparse.Namespace) -> int:
    from bt_monai import bundle

    if args.action == "list":
        for row in bundle.list_bundles():
            where = row["path"] or "not found"
            weights = "with weights" if row["weights"] else "no weights"
            folder = bundle.BUNDLE_FOLDERS[row["name"]]
            print(f"{row['name']:<13} {folder:<28} {row['version'] or '-':<7} {weights:<13} {where}")
        return ExitStatus.DONE
    if not args.name:
        raise UserError(f"bt-monai bundle {args.action}: give a bundle name (segmentation or detection)")
    if args.action == "path":
        print(bundle.locate_bundle(args.name))
        return ExitStatus.DONE
    if not args.destination:
        raise UserError("bt-monai bundle copy NAME DEST: give the destination folder")
    copied = bundle.copy_bundle(args.name, args.destination)
    print(f"copied the {bundle.bundle_name(args.name)} bundle to {copied}; train there, e.g.:")
    print(f"  cd {copied} && python -m monai.bundle run training --meta_file configs/metadata.json \\")
    print("      --config_file configs/train.json --logging_file configs/logging.conf --dataset_dir /path/to/kaggle_3m")
    return ExitStatus.DONE


def federated(args: argparse.Namespace) -> int:
    try:
        import nvflare  # noqa: F401
    except ImportError as e:
        raise UserError(f"bt-monai federated needs NVIDIA FLARE ({e}): pip install 'bt_monai[federated]'") from None
    from bt_monai.apps.federated.client import parse_overrides
    from bt_monai.apps.federated.job import FederatedSettings
    from bt_monai.apps.federated.simulate import FederatedRunStopped, check_site_datalists, simulate

    sites = check_site_datalists(args.sites)
    site_overrides: dict[str, dict] = {}
    for entry in args.site_override:
        site, sep, pair = entry.partition(":")
        if not sep or site not in sites:
            raise UserError(f"--site-override {entry!r}: write SITE:KEY=VALUE with SITE one of {', '.join(sites)}")
        site_overrides.setdefault(site, {}).update(parse_overrides([pair], "--site-override"))
    for flag, value, least in (("--rounds", args.rounds, 1), ("--local-epochs", args.local_epochs, 1)):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    settings = FederatedSettings(
        sites=sites,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        send=args.send,
        privacy=args.privacy,
        percentile=args.percentile,
        gamma=args.gamma,
        on_site_failure=args.on_site_failure,
        cross_site_evaluation=not args.no_cross_site,
        threads=args.threads,
        bundle=args.bundle,
        overrides=parse_overrides(args.bundle_override, "--bundle-override"),
        site_overrides=site_overrides,
        init_weights=args.init_weights,
    )
    print(
        f"federated simulation: {len(sites)} sites ({', '.join(sites)}), {args.rounds} rounds x {args.local_epochs} "
        f"local epochs; logs in the output folder when done"
    )
    try:
        run = simulate(settings, args.output)
    except FederatedRunStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.INCOMPLETE
    print(run.table())
    for line in run.failures:
        print(f"warning: {line}; the run went on without it (--on-site-failure continue)", file=sys.stderr)
    print(f"global model: {run.folder / 'model.pt'}")
    print(f"NVFlare job folder (submit it to a POC or provisioned deployment): {run.folder / 'job' / settings.name}")
    return ExitStatus.INCOMPLETE if run.failures else ExitStatus.DONE


def label(args: argparse.Namespace) -> int:
    from bt_monai.apps.label.datastore import make_label_datastore

    # a DatasetError (e.g. a file of the datastore that would be overwritten) is refused: exit status 2
    done = make_label_datastore(args.source, args.output, args.patients, labels=args.labels, copy=args.copy)
    print(f"{done['folder']}: {done['images']} slices, {done['labels']} labels ({done['tumor_labels']} with tumor)")
    return ExitStatus.DONE
