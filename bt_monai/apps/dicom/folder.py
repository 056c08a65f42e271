"""``bt-monai infer DICOM_FOLDER``: the chosen MR series of a DICOM export (a folder, a DICOMDIR or one file)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bt_monai.apps.dicom.reports import selection_report
from bt_monai.apps.dicom.run import (
    DicomRun,
    DicomRunSummary,
    check_environment,
    finish_run,
    run_all,
    scan_folder,
    start_run,
)
from bt_monai.apps.dicom.store import store_target
from bt_monai.data.dicom import DicomScan, DicomSeries, choose_series
from bt_monai.data.dicom.dicomweb import DicomWebServer
from bt_monai.inferers import TumorPredictor

__all__ = ["infer_dicom"]


def _input(source: str | os.PathLike) -> tuple[Path, Path]:
    """(what to scan, the folder reported paths are relative to) for a folder, a DICOMDIR or one file."""
    source = Path(source).expanduser()
    if source.is_file() and source.name.upper() == "DICOMDIR":
        source = source.parent  # the DICOMDIR lists the files of its folder: scan the folder
    return source, source if source.is_dir() else source.parent


def _choose_scanned(
    run: DicomRun, scan: DicomScan, pattern: re.Pattern | None, all_modalities: bool
) -> tuple[list[DicomSeries], dict]:
    """The scanned series to process (:func:`choose_series`); the others are skipped with the reason."""
    choice = choose_series(scan.series, pattern, all_modalities, attributes_of=lambda s: s.attributes)
    for series, reason in choice.not_chosen:
        run.skip_series(series, reason)
        for path in series.instance_paths():
            run.skip(str(path), f"series {series.uid}: {reason}")
    return choice.chosen, selection_report(choice, lambda s: s.uid)


def infer_dicom(
    predictor: TumorPredictor,
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    all_modalities: bool = False,
    always_seg: bool = False,
    overwrite: bool = False,
    anonymize: bool = False,
    batch_size: int = 16,
    provenance: dict | None = None,
    series: str | None = None,
    store_to: str | DicomWebServer | None = None,
    ca_bundle: str | os.PathLike | None = None,
) -> DicomRunSummary:
    """Predict every slice of the chosen MR series below ``source`` and write the outputs under ``output``.

    Args:
        source: a folder of DICOM files (any nesting and names, DICOMDIR allowed), a DICOMDIR or one file.
        all_modalities: also process series that are not MR (otherwise skipped, with the reason).
        always_seg: write a DICOM SEG even when no tumor pixel was found (an empty segment).
        overwrite: redo series an earlier run already finished (default: reuse those made with the same
            slices and the same predictor, i.e. the same :meth:`TumorPredictor.fingerprint`).
        anonymize: no PatientID / PatientName in the reports, nor in folder names (the SEG and SR keep the
            patient module of their source, as the standard requires).
        provenance: what the models are (e.g. :meth:`bt_monai.inferers.TumorPredictor.provenance`), for
            ``summary.json``; its segmentation bundle's name and version are the algorithm the SEG and SR name.
        series: a regular expression on SeriesDescription / ProtocolName choosing the series (default: per
            study the series naming FLAIR, else every MR series; see :func:`choose_series`).
        store_to: a DICOMweb URL (or server) to store each series' SEG and SR into (STOW-RS), in its study.
        ca_bundle: PEM file of the CA certificates that verify ``store_to``'s TLS certificate.

    Returns the run's summary; the run has done something useful when ``summary.series_done > 0``.
    """
    pattern = check_environment(series)
    target = store_target(store_to, ca_bundle)  # a malformed URL fails before any work
    source, root = _input(source)
    options = {
        "all_modalities": all_modalities,
        "always_seg": always_seg,
        "overwrite": overwrite,
        "anonymize": anonymize,
        "series": series,
    }
    run = start_run(predictor, output, root, str(source), options, batch_size, provenance)
    scan = scan_folder(source, run.output)
    for label, reason in scan.skipped:
        run.skip(label, reason)
    chosen, selection = _choose_scanned(run, scan, pattern, all_modalities)
    run_all(run, chosen)
    return finish_run(run, target, {"series_selection": selection})
