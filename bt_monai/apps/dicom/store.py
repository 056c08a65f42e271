"""Storing results back (``--store`` / ``--store-to``): each series' SEG and SR into its source study on a DICOMweb
server, one STOW-RS request per study, leaving out the objects the server already has.

No duplicates on re-runs: the objects' UIDs are derived (:func:`.resume.object_uids`), and a QIDO-RS look-up
of each SOPInstanceUID comes before storing.
"""

from __future__ import annotations

import os
from pathlib import Path

from bt_monai.data.dicom.dicomweb import DicomWebError, DicomWebServer

__all__ = ["store_report", "store_results", "store_study", "store_target"]


def store_target(store_to: str | DicomWebServer | None, ca_bundle: str | os.PathLike | None) -> DicomWebServer | None:
    """The server to store into (``store_to``: a URL or a server), or None; a malformed URL fails here."""
    if store_to is None or isinstance(store_to, DicomWebServer):
        return store_to
    return DicomWebServer(store_to, ca_bundle)


def store_study(server: DicomWebServer, study: str, objects: list[tuple[dict, str, Path]]) -> list[dict]:
    """Store a study's SEG and SR objects in one STOW-RS request, leaving out those the server already has.

    ``objects``: (series entry of ``summary.json``, "SEG" or "SR", file). Returns one record per object:
    ``status`` "stored", "already stored" or "not stored" (with ``reason``).
    """
    import pydicom

    pending = []
    for entry, kind, path in objects:
        ds = pydicom.dcmread(path)
        record = {
            "study_instance_uid": study,
            "series_folder": entry["folder"],
            "object": kind,
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
        }
        pending.append((record, ds))
    try:
        to_send = []
        for record, ds in pending:  # QIDO-RS first: the same UIDs on the server mean the same object
            if record["sop_instance_uid"] in server.instances_of_series(study, record["series_instance_uid"]):
                record["status"] = "already stored"
            else:
                to_send.append((record, ds))
        if to_send:
            result = server.store(study, [ds for _, ds in to_send])
            failed = dict(result.failed)
            for record, _ in to_send:
                if record["sop_instance_uid"] in result.stored:
                    record["status"] = "stored"
                else:
                    record.update(status="not stored", reason=failed.get(record["sop_instance_uid"], "refused"))
    except DicomWebError as e:  # the request itself failed: nothing of this study is known to be stored
        for record, _ in pending:
            if "status" not in record:
                record.update(status="not stored", reason=str(e))
    return [record for record, _ in pending]


def store_results(entries: list[dict], output: Path, server: DicomWebServer) -> list[dict]:
    """Store the SEG and SR of every series done (now or earlier; ``entries``: the series of ``summary.json``,
    their files under ``output``) into its source study on ``server``; one record per object (:func:`store_study`)."""
    by_study: dict[str, list[tuple[dict, str, Path]]] = {}
    for entry in entries:
        if entry["status"] not in ("processed", "done earlier", "failed"):  # failed: what it has (its SR, say)
            continue
        for kind in ("SEG", "SR"):
            written = entry.get("outputs", {}).get(kind.lower())
            if written:
                by_study.setdefault(entry["study_instance_uid"], []).append((entry, kind, output / written))
    records = []
    for study, objects in by_study.items():
        records += store_study(server, study, objects)
    return records


def store_report(server: DicomWebServer | None, stored: list[dict]) -> dict:
    """The ``store`` key of ``summary.json`` (none when nothing was to be stored)."""
    return {} if server is None else {"store": {"url": server.url, "objects": stored}}
