"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) with ``dicomweb-client``: find a study's series, retrieve a series
into a local cache folder, store objects back.

One :class:`DicomWebServer` per service root (``http(s)://host:port/dicom-web``). Its ``requests`` session
carries the credentials (:data:`USER_ENV` / :data:`PASSWORD_ENV` for HTTP basic, or :data:`TOKEN_ENV` for a
bearer token: read from the environment, never from the command line, never written anywhere), verifies TLS
(a private CA with ``ca_bundle``), and retries transient failures (connection errors, 429 and 5xx) with
exponential backoff through urllib3's ``Retry`` on its ``HTTPAdapter``. dicomweb-client's own retry is turned
off, so that one policy applies. Every failure becomes a :class:`DicomWebError` whose message names the URL
and what to do.

A retrieved series lands in ``<cache>/studies/<study>/series/<series>/instances/<sop>``: the instance's own
place on the server, so paths reported relative to ``<cache>`` are the server's. A series folder is built
under a temporary name and renamed into place when every instance is there (with ``.retrieved.json`` listing
them); a later retrieval that finds the same instances on the server reads nothing again.

``dicomweb_client`` and ``requests`` are imported when a server is opened, not with this module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bt_monai.utils import atomic_write_bytes, make_temporary_dir, quiet_loggers, replace_folder

__all__ = [
    "PASSWORD_ENV",
    "RETRIEVED_MARKER",
    "TOKEN_ENV",
    "USER_ENV",
    "DicomWebError",
    "DicomWebServer",
    "SeriesTransferError",
    "StoreResult",
    "StudyNotFoundError",
    "check_dicomweb_url",
    "is_dicomweb_url",
    "series_cache_folder",
]

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "BT_MONAI_DICOMWEB_USER", "BT_MONAI_DICOMWEB_PASSWORD", "BT_MONAI_DICOMWEB_TOKEN"
RETRIEVED_MARKER = ".retrieved.json"  # in a complete cached series folder: the instances it holds
# What QIDO-RS is asked for, per series (ProtocolName is not a default QIDO attribute: asked for by name).
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "ProtocolName", "SeriesNumber")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CREDENTIALS_HINT = f"set {USER_ENV} and {PASSWORD_ENV} (HTTP basic) or {TOKEN_ENV} (bearer token)"


class DicomWebError(RuntimeError):
    """A DICOMweb request that failed; the message names the URL, what failed and what to do."""


class StudyNotFoundError(DicomWebError):
    """The server knows no such study (HTTP 404, or an empty QIDO-RS answer)."""


class SeriesTransferError(DicomWebError):
    """A series whose retrieval failed (after the retries): the run goes on without it."""


def is_dicomweb_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` is an ``http://`` or ``https://`` address (rather than a local path)."""
    return str(text).lower().startswith(("http://", "https://"))


def check_dicomweb_url(url: str) -> str:
    """``url`` without a trailing slash; ``ValueError`` when it is no http(s) URL or carries credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url}: not a DICOMweb URL; give the service root, e.g. http://localhost:8042/dicom-web")
    if parts.username or parts.password:
        raise ValueError(f"credentials in the URL are not accepted (they would end up in logs): {_CREDENTIALS_HINT}")
    return url.rstrip("/")


def _check_uid(uid: str, what: str) -> str:
    """A UID (digits and dots, at most 64 characters): it becomes a folder name, so nothing else may pass."""
    uid = str(uid).strip()
    if not _UID.match(uid) or len(uid) > 64:
        raise DicomWebError(f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def series_cache_folder(cache: Path, study_uid: str, series_uid: str) -> Path:
    """Where a retrieved series is kept below ``cache``: its WADO-RS path."""
    return (
        cache
        / "studies"
        / _check_uid(study_uid, "StudyInstanceUID")
        / "series"
        / _check_uid(series_uid, "SeriesInstanceUID")
    )


def _value(item: dict, keyword: str) -> str:
    """The first value of ``keyword`` in a DICOM JSON object, as text ('' when absent)."""
    from pydicom.datadict import tag_for_keyword

    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value") or [""]
    value = values[0]
    if isinstance(value, dict):  # a person name
        value = value.get("Alphabetic", "")
    return str(value).strip()


def _session(ca_bundle: str | os.PathLike | None, retries: int, backoff_s: float):
    """A ``requests`` session: credentials from the environment, TLS verification, retries with backoff."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class Session(requests.Session):
        """--ca-bundle wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, which requests lets override a session's
        ``verify`` (psf/requests#3829)."""

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if ca_bundle is not None:
                settings["verify"] = str(ca_bundle)
            return settings

    session = Session()
    token, user = os.environ.get(TOKEN_ENV), os.environ.get(USER_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, os.environ.get(PASSWORD_ENV, ""))
    if ca_bundle is not None:
        if not Path(ca_bundle).is_file():
            raise ValueError(f"--ca-bundle {ca_bundle}: no such file (give the PEM file of your CA's certificates)")
        session.verify = str(ca_bundle)
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff_s,
        status_forcelist=(429, 500, 502, 503, 504),
        # POST too: what is stored has UIDs derived from its inputs, so sending it again stores nothing twice.
        allowed_methods=frozenset({"GET", "POST"}),
        raise_on_status=False,  # the last answer reaches dicomweb-client, which raises HTTPError with it
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass
class StoreResult:
    """What one STOW-RS request stored: SOP instance UIDs stored, and those refused with the reason."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class DicomWebServer:
    """A DICOMweb service root, reached through ``dicomweb-client`` with this module's session.

    Args:
        url: the service root, e.g. ``http://localhost:8042/dicom-web``.
        ca_bundle: a PEM file of CA certificates to verify the server's TLS certificate with (default: the
            system's); verification is never turned off.
        timeout_s: (connect, read) timeouts of each request in seconds.
        retries: retries of a request after a connection error, a timeout, 429 or 5xx (exponential backoff).
        backoff_s: backoff factor: waits of about 0, 2, 4, ... times this between retries.
        series_attempts: attempts at retrieving one series whose transfer breaks off midway.
    """

    def __init__(
        self,
        url: str,
        ca_bundle: str | os.PathLike | None = None,
        timeout_s: tuple[float, float] = (10.0, 120.0),
        retries: int = 3,
        backoff_s: float = 0.5,
        series_attempts: int = 3,
    ) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.url = check_dicomweb_url(url)
        self.series_attempts = series_attempts
        self.backoff_s = backoff_s
        self.client = DICOMwebClient(self.url, session=_session(ca_bundle, retries, backoff_s), timeout=timeout_s)
        self.client.set_http_retry_params(retry=False)  # one retry policy: the session's

    # --- errors -------------------------------------------------------------------------------------------

    def _error(self, what: str, error: Exception) -> DicomWebError:
        """``error`` (from requests, or dicomweb-client) as a message that names the URL and the remedy."""
        import requests

        if isinstance(error, requests.exceptions.SSLError):
            return DicomWebError(
                f"{self.url}: TLS certificate not verified while {what} ({_first_line(error)}); for a private CA "
                "give its certificates with --ca-bundle FILE"
            )
        if isinstance(error, requests.exceptions.Timeout):
            return DicomWebError(f"{self.url}: no answer in time while {what}: check the server, then run again")
        if isinstance(error, requests.exceptions.ConnectionError):
            return DicomWebError(
                f"{self.url}: cannot reach the server while {what} ({_first_line(error)}): check the URL and that "
                "the server is running, then run again"
            )
        if isinstance(error, requests.exceptions.HTTPError) and error.response is not None:
            status = error.response.status_code
            reason = f"HTTP {status} {error.response.reason or ''}".strip()
            if status == 401:
                return DicomWebError(
                    f"{self.url}: the server refused the credentials ({reason}) while {what}: {_CREDENTIALS_HINT}"
                )
            if status == 403:
                return DicomWebError(
                    f"{self.url}: access denied ({reason}) while {what}: the account lacks the permission; "
                    f"use an account allowed to do this ({_CREDENTIALS_HINT})"
                )
            return DicomWebError(f"{self.url}: the server answered {reason} while {what}")
        return DicomWebError(f"{self.url}: {what} failed: {type(error).__name__}: {_first_line(error)}")

    def _call(self, what: str, function, *args, empty_on_404: bool = False, **kwargs):
        """``function(*args, **kwargs)`` with its failures as :class:`DicomWebError` (``empty_on_404``: a 404
        answer, "nothing there", gives ``[]``)."""
        import requests

        try:
            with quiet_loggers("dicomweb_client", level=logging.CRITICAL):  # errors are reported by the caller
                return function(*args, **kwargs)
        except requests.exceptions.HTTPError as e:
            if empty_on_404 and e.response is not None and e.response.status_code == 404:
                return []
            raise self._error(what, e) from None
        except (requests.exceptions.RequestException, ValueError) as e:
            raise self._error(what, e) from None

    # --- QIDO-RS ------------------------------------------------------------------------------------------

    def studies_of_patient(self, patient_id: str) -> list[str]:
        """The StudyInstanceUIDs of the patient ``patient_id`` (exact match); empty when none."""
        found = self._call(
            f"searching the studies of patient {patient_id!r}",
            self.client.search_for_studies,
            search_filters={"PatientID": patient_id},
            fields=["StudyInstanceUID"],
            get_remaining=True,
        )
        return sorted({_check_uid(_value(item, "StudyInstanceUID"), "StudyInstanceUID") for item in found})

    def series_of_study(self, study_uid: str) -> list[dict[str, str]]:
        """The series of a study as attribute dicts (:data:`SERIES_FIELDS` plus StudyInstanceUID).

        Raises :class:`StudyNotFoundError` when the server has no such study.
        """
        study_uid = _check_uid(study_uid, "StudyInstanceUID")
        found = self._call(
            f"searching the series of study {study_uid}",
            self.client.search_for_series,
            study_instance_uid=study_uid,
            fields=list(SERIES_FIELDS),
            get_remaining=True,
            empty_on_404=True,
        )
        if not found:
            raise StudyNotFoundError(
                f"{self.url}: no study {study_uid} on the server: check the StudyInstanceUID (or use --patient ID)"
            )
        series = []
        for item in found:
            attributes = {keyword: _value(item, keyword) for keyword in SERIES_FIELDS}
            attributes["SeriesInstanceUID"] = _check_uid(attributes["SeriesInstanceUID"], "SeriesInstanceUID")
            series.append({**attributes, "StudyInstanceUID": study_uid})
        return series

    def instances_of_series(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOPInstanceUIDs the server holds in a series, sorted (empty when none)."""
        found = self._call(
            f"listing the instances of series {series_uid}",
            self.client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            fields=["SOPInstanceUID"],
            get_remaining=True,
            empty_on_404=True,
        )
        return sorted(_check_uid(_value(item, "SOPInstanceUID"), "SOPInstanceUID") for item in found)

    # --- WADO-RS ------------------------------------------------------------------------------------------

    def retrieve_series(self, study_uid: str, series_uid: str, cache: Path) -> Path:
        """The series' folder in ``cache`` (see :func:`series_cache_folder`), retrieved unless already complete.

        Complete means its ``.retrieved.json`` lists exactly the instances the server holds now. Instances come
        in their stored transfer syntax. A transfer that breaks off (or misses instances) is tried
        ``series_attempts`` times, then raises :class:`SeriesTransferError`; nothing half-retrieved stays.
        """
        target = series_cache_folder(cache, study_uid, series_uid)
        expected = self.instances_of_series(study_uid, series_uid)
        if not expected:
            raise SeriesTransferError(f"{self.url}: series {series_uid} lists no instance")
        if _retrieved(target) == expected:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        reason = ""
        for attempt in range(self.series_attempts):
            if attempt:
                time.sleep(self.backoff_s * 2**attempt)
            temporary = make_temporary_dir(target.parent, series_uid)
            try:
                self._retrieve_into(temporary, study_uid, series_uid, expected)
                replace_folder(temporary, target)
                return target
            except DicomWebError as e:
                reason = str(e)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
        raise SeriesTransferError(f"retrieving series {series_uid} failed {self.series_attempts} times: {reason}")

    def _retrieve_into(self, folder: Path, study_uid: str, series_uid: str, expected: list[str]) -> None:
        """Write every instance of the series into ``folder/instances/``, then the marker listing them."""
        import io

        import pydicom
        import requests

        what = f"retrieving series {series_uid}"
        got = set()
        try:
            with quiet_loggers("dicomweb_client", "pydicom", level=logging.CRITICAL):
                for ds in self.client.iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)):
                    sop = _check_uid(ds.SOPInstanceUID, "SOPInstanceUID")
                    buffer = io.BytesIO()
                    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
                    atomic_write_bytes(folder / "instances" / sop, buffer.getvalue())
                    got.add(sop)
        except (requests.exceptions.RequestException, ValueError, AttributeError) as e:
            raise self._error(what, e) from None
        except OSError:  # writing into the cache (disk full, permissions): the user's to fix, not a transfer
            raise
        except Exception as e:  # a cut multipart body can fail while pydicom parses its last part
            raise DicomWebError(f"{self.url}: {what}: the answer was incomplete ({type(e).__name__})") from None
        missing = sorted(set(expected) - got)
        if missing:
            raise DicomWebError(f"{self.url}: {what}: {len(missing)} of {len(expected)} instances did not arrive")
        marker = {"url": self.url, "study": study_uid, "series": series_uid, "instances": sorted(got)}
        atomic_write_bytes(folder / RETRIEVED_MARKER, json.dumps(marker, indent=1).encode())

    # --- STOW-RS ------------------------------------------------------------------------------------------

    def store(self, study_uid: str, datasets: Sequence) -> StoreResult:
        """Store ``datasets`` (pydicom datasets of one study) in one STOW-RS request; what was stored or refused.

        Raises :class:`DicomWebError` when the request itself fails (unreachable, credentials): then nothing
        is known to be stored.
        """
        import requests

        wanted = [str(ds.SOPInstanceUID) for ds in datasets]
        what = f"storing {len(wanted)} object(s) into study {study_uid}"
        try:
            with quiet_loggers("dicomweb_client", level=logging.CRITICAL):
                answer = self.client.store_instances(list(datasets), study_instance_uid=study_uid)
        except requests.exceptions.HTTPError as e:
            if e.response is None or e.response.status_code in (401, 403):
                raise self._error(what, e) from None
            answer = _stow_answer(e.response)  # 409 and others: the answer may say which instances failed
            reason = f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
            failed = {uid: reason for uid in wanted}
            failed.update(dict(_failed_items(answer)))
            return StoreResult([], [(uid, failed[uid]) for uid in wanted])
        except (requests.exceptions.RequestException, ValueError) as e:
            raise self._error(what, e) from None
        stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
        failed = dict(_failed_items(answer))
        if not stored and not failed:  # a server that answers with an empty body: success, per its status
            stored = set(wanted)
        result = StoreResult([uid for uid in wanted if uid in stored and uid not in failed], [])
        result.failed = [
            (uid, failed.get(uid, "not listed as stored in the server's answer"))
            for uid in wanted
            if uid not in result.stored
        ]
        return result


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0][:300]


def _retrieved(folder: Path) -> list[str] | None:
    """The instances a complete cached series folder holds (its marker), or None."""
    try:
        return json.loads((folder / RETRIEVED_MARKER).read_text())["instances"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stow_answer(response):
    """The STOW-RS answer dataset of ``response`` (DICOM JSON), or an empty dataset."""
    import pydicom

    try:
        return pydicom.Dataset.from_json(response.json())
    except Exception:  # no body, or not DICOM JSON
        return pydicom.Dataset()


def _failed_items(answer) -> list[tuple[str, str]]:
    """(SOPInstanceUID, reason) of each FailedSOPSequence item of a STOW-RS answer."""
    failed = []
    for item in answer.get("FailedSOPSequence", []):
        code = item.get("FailureReason")
        failed.append((str(item.get("ReferencedSOPInstanceUID", "")), f"refused by the server (failure reason {code})"))
    return failed
