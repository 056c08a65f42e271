"""``bt-monai infer URL --study UID``: the chosen MR series of studies on a DICOMweb server.

QIDO-RS lists the series, WADO-RS retrieves the chosen ones into ``OUT/.dicomweb``
(:mod:`bt_monai.data.dicom.dicomweb`), and from there they are processed exactly as a folder (:mod:`.run`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

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
from bt_monai.apps.dicom_input import CACHE_FOLDER
from bt_monai.data.dicom import DicomSeries, choose_series
from bt_monai.data.dicom.dicomweb import DicomWebError, DicomWebServer, StudyNotFoundError
from bt_monai.inferers import TumorPredictor
from bt_monai.utils import remove_stale_temporaries

__all__ = ["infer_dicomweb"]


def _requested_studies(server: DicomWebServer, studies: list[str], patient: str | None) -> list[str]:
    """The StudyInstanceUIDs to process: ``studies``, then those of ``patient``, each once."""
    found = list(studies)
    if patient is not None:
        of_patient = server.studies_of_patient(patient)
        if not of_patient:
            raise DicomWebError(f"{server.url}: no study of patient {patient!r}: check the PatientID")
        found += of_patient
    if not found:
        raise ValueError(f"{server.url}: name the studies to process: --study UID (repeatable) or --patient ID")
    return list(dict.fromkeys(found))


def _list_series(server: DicomWebServer, studies: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The series of each study (QIDO-RS), and the studies the server does not know, with the message."""
    listed, missing = [], {}
    for study in studies:
        try:
            listed += server.series_of_study(study)
        except StudyNotFoundError as e:
            missing[study] = str(e)
    return listed, missing


def _retrieve(run: DicomRun, server: DicomWebServer, chosen: list[dict], cache: Path) -> list[DicomSeries]:
    """Retrieve each chosen series into ``cache`` and scan it; a series that fails is skipped with the reason."""
    found = []
    for attributes in tqdm(chosen, desc="retrieving", unit="series", disable=None):
        study, uid = attributes["StudyInstanceUID"], attributes["SeriesInstanceUID"]
        try:
            folder = server.retrieve_series(study, uid, cache)
        except DicomWebError as e:  # retried already: the others go on
            run.skip_listed(attributes, str(e))
            continue
        scan = scan_folder(folder, run.output)
        for label, reason in scan.skipped:
            run.skip(label, reason)
        if not scan.series:
            run.skip_listed(attributes, "no image slice in the series (reasons in skipped.csv)")
        found += scan.series
    return found


def _study_status(run: DicomRun, studies: list[str], chosen: list[dict], missing: dict[str, str]) -> None:
    """Whether each requested study was processed: found, and every chosen series of it done."""
    done = {e["series_instance_uid"] for e in run.entries if e["status"] in ("processed", "done earlier")}
    reasons = {
        e["series_instance_uid"]: ("failed: " if e["status"] == "failed" else "not processed: ") + e.get("reason", "")
        for e in run.entries
        if e["status"] in ("skipped", "failed")
    }
    for study in studies:
        entry = {"study_instance_uid": study}
        mine = [a["SeriesInstanceUID"] for a in chosen if a["StudyInstanceUID"] == study]
        left = [uid for uid in mine if uid not in done]
        if study in missing:
            entry.update(status="not found", reason=missing[study])
            run.summary.skipped.append((f"studies/{study}", missing[study]))
        elif not mine:
            entry.update(status="incomplete", reason="no series to process (see the series of summary.json)")
        elif left:
            entry.update(status="incomplete", reason=f"series {left[0]} {reasons.get(left[0], 'not processed: ')}")
        else:
            entry["status"] = "processed"
        entry["series"] = mine
        run.summary.studies.append(entry)


def infer_dicomweb(
    predictor: TumorPredictor,
    url: str | DicomWebServer,
    output: str | os.PathLike,
    *,
    studies: Sequence[str] = (),
    patient: str | None = None,
    series: str | None = None,
    all_modalities: bool = False,
    always_seg: bool = False,
    overwrite: bool = False,
    anonymize: bool = False,
    batch_size: int = 16,
    provenance: dict | None = None,
    store: bool = False,
    store_to: str | DicomWebServer | None = None,
    ca_bundle: str | os.PathLike | None = None,
) -> DicomRunSummary:
    """Predict the chosen MR series of studies on a DICOMweb server; outputs under ``output`` as for a folder.

    QIDO-RS lists each study's series; the chosen ones (``series``, as :func:`.folder.infer_dicom`) are retrieved
    with WADO-RS into ``output/.dicomweb/studies/<study>/series/<series>/instances/<sop>`` (kept: a re-run
    retrieves a series again only when the server's instances changed) and processed exactly as a folder,
    so ``predictions.csv``'s ``path`` is the instance's place on the server. ``store``: send each series' SEG
    and SR back to ``url`` (one STOW-RS request per study); ``store_to``: to another server instead.

    A series whose transfer fails (after retries) is skipped and named in ``skipped.csv``; an unknown study
    is reported and the others go on; ``summary.studies_incomplete`` lists the studies not fully processed.
    Raises :class:`DicomWebError` when the server cannot be used at all (unreachable, credentials refused).
    """
    pattern = check_environment(series)
    server = url if isinstance(url, DicomWebServer) else DicomWebServer(url, ca_bundle)
    target = server if store else store_target(store_to, ca_bundle)
    study_uids = _requested_studies(server, list(studies), patient)
    listed, missing = _list_series(server, study_uids)  # before OUT is touched: a refused login writes nothing
    options = {
        "studies": list(studies),
        "patient": patient,
        "all_modalities": all_modalities,
        "always_seg": always_seg,
        "overwrite": overwrite,
        "anonymize": anonymize,
        "series": series,
    }
    cache = Path(output).expanduser() / CACHE_FOLDER
    run = start_run(predictor, output, cache, server.url, options, batch_size, provenance)
    run.series_label = lambda s: f"studies/{s.attributes.get('StudyInstanceUID', '')}/series/{s.uid}"  # as listed
    remove_stale_temporaries(cache, recursive=True)
    choice = choose_series(listed, pattern, all_modalities)
    for attributes, reason in choice.not_chosen:
        run.skip_listed(attributes, reason)
    run_all(run, _retrieve(run, server, choice.chosen, cache))
    _study_status(run, study_uids, choice.chosen, missing)
    extra = {
        "series_selection": selection_report(choice, lambda a: a["SeriesInstanceUID"]),
        "studies": run.summary.studies,
    }
    return finish_run(run, target, extra)
