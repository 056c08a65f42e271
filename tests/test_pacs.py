"""From the PACS and back, against a real Orthanc (DICOMweb plugin, authentication on): studies retrieved with
QIDO-RS / WADO-RS, the SEG and the measurement report (SR) stored back with STOW-RS, checked by decoding them
and by dciodvfy. Bearer tokens, TLS and faults (a transfer cut midway, a refused STOW) go through a small
HTTPS reverse proxy in front of Orthanc (Orthanc's own authentication is HTTP basic only).

The series are made from real LGG slices (FLAIR as 16-bit MR, with geometry, one study RLE-compressed); the
models are the shipped bundles'.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import RLELossless
from test_dicom import compress, flair, seg_masks, write_series

from bt_monai.__main__ import main
from bt_monai.apps.dicom import read_predictions
from bt_monai.data.dicom.dicomweb import PASSWORD_ENV, TOKEN_ENV, USER_ENV, DicomWebServer

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.filterwarnings("ignore:builtin type (Swig|swig):DeprecationWarning"),  # python-gdcm's bindings
    pytest.mark.filterwarnings("ignore:.*nvImageCodec"),
    pytest.mark.filterwarnings("ignore:Divide by zero"),  # the uniform slice scales to zeros
]

USER, PASSWORD, TOKEN = "radiology", "s3cret-pw", "token-for-the-proxy"


# --- a real Orthanc -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc in its own process group on free localhost ports, storage in ``folder``, basic auth on."""

    def __init__(self, tools: dict, folder: Path) -> None:
        self.tools, self.folder = tools, folder
        self.http_port, self.dicom_port = _free_port(), _free_port()
        self.root = f"http://127.0.0.1:{self.http_port}"
        self.url = f"{self.root}/dicom-web"
        self.process: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bt_monai_test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [self.tools["plugin"]],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "config.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [self.tools["orthanc"], str(self.folder / "config.json")], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.root}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def upload(self, path: Path) -> None:
        answer = requests.post(f"{self.root}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()

    def client(self):
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return DICOMwebClient(self.url, session=session)

    def series(self, study: str, modality: str) -> list[str]:
        """The SeriesInstanceUIDs of ``modality`` in ``study`` on this server."""
        found = self.client().search_for_series(study, search_filters={"Modality": modality})
        return [item["0020000E"]["Value"][0] for item in found]

    def instances(self, study: str, series: str) -> list[pydicom.Dataset]:
        return list(self.client().retrieve_series(study, series))


@pytest.fixture(scope="module")
def studies(tmp_path_factory, lgg_root) -> dict:
    """Two studies of one patient as files: study 1 with an "AX FLAIR" and a "T1 AX" series, study 2 with one
    FLAIR series, RLE-compressed."""
    src = tmp_path_factory.mktemp("studies")
    images = {n: flair(lgg_root, n).astype(np.uint16) * 16 for n in (9, 10, 11, 12, 13)}
    first = write_series(
        src / "s1" / "flair", [images[n] for n in (9, 11, 13)], SeriesNumber=3, SeriesDescription="AX FLAIR"
    )
    study1 = first["StudyInstanceUID"]
    t1 = write_series(
        src / "s1" / "t1",
        [images[n] for n in (10, 12)],
        SeriesNumber=2,
        SeriesDescription="T1 AX",
        ProtocolName="t1_se_tra",
        StudyInstanceUID=study1,
    )
    second = write_series(
        src / "s2" / "flair", [images[n] for n in (10, 12)], SeriesNumber=5, SeriesDescription="FLAIR"
    )
    for path in second["paths"]:
        compress(path, RLELossless)
    second["sop_uids"] = [pydicom.dcmread(p).SOPInstanceUID for p in second["paths"]]  # compress gives new ones
    return {
        "src": src,
        "flair1": first,
        "t1": t1,
        "flair2": second,
        "study1": study1,
        "study2": second["StudyInstanceUID"],
    }


def _upload(server: Orthanc, studies: dict, keys=("flair1", "t1", "flair2")) -> None:
    for key in keys:
        for path in studies[key]["paths"]:
            server.upload(path)


@pytest.fixture(scope="module")
def orthanc(pacs_tools, tmp_path_factory, studies):
    server = Orthanc(pacs_tools, tmp_path_factory.mktemp("orthanc")).start()
    try:
        _upload(server, studies)
        yield server
    finally:
        server.stop()


@pytest.fixture
def basic_auth(monkeypatch):
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _infer(url: str, out: Path, *options: str) -> int:
    return main(["infer", url, "-o", str(out), *options])


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _entry(out: Path, series_uid: str) -> dict:
    (entry,) = [s for s in _summary(out)["series"] if s["series_instance_uid"] == series_uid]
    return entry


def _skipped(out: Path) -> dict[str, str]:
    import csv

    with open(out / "skipped.csv", newline="") as f:
        return {row["path"]: row["reason"] for row in csv.DictReader(f)}


def _dciodvfy(tools: dict, ds: pydicom.Dataset, folder: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for ``ds``."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run([tools["dciodvfy"], str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def _sr_values(ds: pydicom.Dataset) -> dict[str, float]:
    """The measurements of an SR's one measurement group, by concept meaning, read back with highdicom."""
    import highdicom as hd

    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = sr.content.get_volumetric_roi_measurement_groups() or sr.content.get_image_measurement_groups()
    (group,) = groups
    return {m.name.meaning: m.value for m in group.get_measurements()}


# --- the round trip: infer URL --study ... --store ----------------------------------------------------------


@pytest.fixture(scope="module")
def round_trip(orthanc, studies, tmp_path_factory) -> dict:
    """``infer URL --study 1 --study 2 --store``, and the same series as a folder; run once."""
    root = tmp_path_factory.mktemp("round_trip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(USER_ENV, USER)
        mp.setenv(PASSWORD_ENV, PASSWORD)
        started = time.monotonic()
        status = _infer(
            orthanc.url, root / "web", "--study", studies["study1"], "--study", studies["study2"], "--store"
        )
        seconds = time.monotonic() - started
    folder_status = _infer(str(studies["src"]), root / "folder")
    return {
        "web": root / "web",
        "folder": root / "folder",
        "status": status,
        "folder_status": folder_status,
        "s": seconds,
    }


def test_the_round_trip_processes_every_study_and_exits_0(round_trip, studies):
    assert round_trip["status"] == 0 and round_trip["folder_status"] == 0
    summary = _summary(round_trip["web"])
    assert [s["status"] for s in summary["studies"]] == ["processed", "processed"]
    assert summary["totals"]["series_processed"] == 2


def test_the_default_choice_takes_the_flair_series_and_summary_json_says_so(round_trip, studies):
    summary = _summary(round_trip["web"])
    selection = summary["series_selection"]
    assert "FLAIR" in selection["rule"]
    assert sorted(selection["chosen"]) == sorted(
        [studies["flair1"]["SeriesInstanceUID"], studies["flair2"]["SeriesInstanceUID"]]
    )
    (not_chosen,) = selection["not_chosen"]
    assert not_chosen["series_instance_uid"] == studies["t1"]["SeriesInstanceUID"] and "FLAIR" in not_chosen["reason"]
    cache = round_trip["web"] / ".dicomweb" / "studies" / studies["study1"] / "series"
    assert not (cache / studies["t1"]["SeriesInstanceUID"]).exists()  # never retrieved


def test_predictions_path_is_the_instance_place_on_the_server(round_trip, studies):
    rows = read_predictions(round_trip["web"])
    first = studies["flair1"]
    by_sop = {r["SOPInstanceUID"]: r["path"] for r in rows}
    for sop in first["sop_uids"]:
        assert by_sop[sop] == f"studies/{studies['study1']}/series/{first['SeriesInstanceUID']}/instances/{sop}"
    assert len(rows) == 5


def test_the_stored_seg_has_the_masks_of_the_same_series_as_a_folder(round_trip, orthanc, studies):
    for key, study in (("flair1", "study1"), ("flair2", "study2")):
        series = studies[key]
        (seg_series,) = orthanc.series(studies[study], "SEG")
        (stored,) = orthanc.instances(studies[study], seg_series)
        buffer = io.BytesIO()
        stored.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        from_server = seg_masks(buffer, series["sop_uids"])
        entry = _entry(round_trip["folder"], series["SeriesInstanceUID"])
        from_folder = seg_masks(round_trip["folder"] / entry["outputs"]["seg"], series["sop_uids"])
        assert from_server.any()  # a real test: the shipped models find tumor on these slices
        np.testing.assert_array_equal(from_server, from_folder)
        assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == series["SeriesInstanceUID"]


def test_the_stored_sr_reports_the_volume_of_summary_json(round_trip, orthanc, studies):
    for key, study in (("flair1", "study1"), ("flair2", "study2")):
        (sr_series,) = orthanc.series(studies[study], "SR")
        (stored,) = orthanc.instances(studies[study], sr_series)
        values = _sr_values(stored)
        entry = _entry(round_trip["web"], studies[key]["SeriesInstanceUID"])
        assert entry["tumor_volume_mm3"] > 0
        assert values["Volume"] == pytest.approx(entry["tumor_volume_mm3"], abs=5e-4)
        assert values["Area"] == pytest.approx(entry["largest_tumor_area_mm2"], abs=5e-4)
        assert values["Number of slices with tumor"] == entry["segmented_slices"]
        assert (
            entry["tumor_volume_mm3"]
            == _entry(round_trip["folder"], studies[key]["SeriesInstanceUID"])["tumor_volume_mm3"]
        )


def test_the_sr_references_the_seg_segment_and_the_source_images(round_trip, orthanc, studies):
    import highdicom as hd

    (seg_series,) = orthanc.series(studies["study1"], "SEG")
    (seg,) = orthanc.instances(studies["study1"], seg_series)
    (sr_series,) = orthanc.series(studies["study1"], "SR")
    (stored,) = orthanc.instances(studies["study1"], sr_series)
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(stored).content.get_volumetric_roi_measurement_groups()
    segment = group.referenced_segment
    assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID and segment.referenced_segment_numbers == [1]
    sources = {item.referenced_sop_instance_uid for item in segment.source_images_for_segmentation}
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in stored.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert set(studies["flair1"]["sop_uids"]) | {seg.SOPInstanceUID} == evidence
    assert sources == set(studies["flair1"]["sop_uids"])


def test_the_stored_seg_and_sr_pass_dciodvfy_without_errors(round_trip, orthanc, studies, pacs_tools, tmp_path):
    for study in ("study1", "study2"):
        for modality in ("SEG", "SR"):
            (series,) = orthanc.series(studies[study], modality)
            (stored,) = orthanc.instances(studies[study], series)
            errors, _ = _dciodvfy(pacs_tools, stored, tmp_path)
            assert errors == [], f"{modality}: {errors}"


def test_a_report_without_a_tumor_passes_dciodvfy_too(pacs_tools, tmp_path):
    from test_dicom import BrightDetector, BrightSegmenter

    from bt_monai.apps.dicom import infer_dicom
    from bt_monai.inferers import TumorPredictor

    write_series(tmp_path / "in", [np.full((64, 64), 300, np.uint16)] * 2)  # uniform: nothing bright
    predictor = TumorPredictor(BrightSegmenter(), BrightDetector(), input_mode="all", amp=False)
    (folder,) = infer_dicom(predictor, tmp_path / "in", tmp_path / "out").processed
    assert not (tmp_path / "out" / folder / "seg.dcm").exists()
    errors, _ = _dciodvfy(pacs_tools, pydicom.dcmread(tmp_path / "out" / folder / "sr.dcm"), tmp_path)
    assert errors == []


def test_stored_objects_keep_the_source_patient_module(round_trip, orthanc, studies):
    for modality in ("SEG", "SR"):
        (series,) = orthanc.series(studies["study1"], modality)
        (stored,) = orthanc.instances(studies["study1"], series)
        assert (stored.PatientID, str(stored.PatientName)) == ("LGG-4942", "Test^Patient")
        assert stored.StudyInstanceUID == studies["study1"]


def test_a_rerun_retrieves_nothing_again_and_stores_no_duplicate(round_trip, orthanc, studies, basic_auth, capsys):
    web = round_trip["web"]
    cached = sorted(web.joinpath(".dicomweb").rglob("instances/*"))
    before = {p: p.stat().st_mtime_ns for p in cached}
    assert _infer(orthanc.url, web, "--study", studies["study1"], "--study", studies["study2"], "--store") == 0
    assert {p: p.stat().st_mtime_ns for p in sorted(web.joinpath(".dicomweb").rglob("instances/*"))} == before
    stored = _summary(web)["store"]["objects"]
    assert len(stored) == 4 and {s["status"] for s in stored} == {"already stored"}
    for study in ("study1", "study2"):
        for modality in ("SEG", "SR"):
            (series,) = orthanc.series(studies[study], modality)
            assert len(orthanc.instances(studies[study], series)) == 1
    assert "0 object(s)" in capsys.readouterr().out


def test_a_run_into_a_new_output_folder_makes_the_same_objects_and_stores_no_duplicate(
    round_trip, orthanc, studies, basic_auth, tmp_path
):
    out = tmp_path / "again"  # no cache, no finished series: everything retrieved and predicted anew
    assert _infer(orthanc.url, out, "--study", studies["study1"], "--store") == 0
    objects = _summary(out)["store"]["objects"]
    assert {o["status"] for o in objects} == {"already stored"}
    first = {o["sop_instance_uid"] for o in _summary(round_trip["web"])["store"]["objects"]}
    assert {o["sop_instance_uid"] for o in objects} <= first
    for modality in ("SEG", "SR"):
        (series,) = orthanc.series(studies["study1"], modality)
        assert len(orthanc.instances(studies["study1"], series)) == 1


def test_anonymize_keeps_the_patient_out_of_the_reports_not_out_of_the_objects(orthanc, studies, basic_auth, tmp_path):
    out = tmp_path / "anon"
    assert _infer(orthanc.url, out, "--study", studies["study1"], "--anonymize") == 0
    reports = (out / "predictions.csv").read_text() + (out / "summary.json").read_text()
    assert "LGG-4942" not in reports and "Test^Patient" not in reports
    entry = _entry(out, studies["flair1"]["SeriesInstanceUID"])
    for name in ("seg", "sr"):
        ds = pydicom.dcmread(out / entry["outputs"][name])
        assert ds.PatientID == "LGG-4942"


def test_the_folder_input_writes_the_sr_too_and_its_volume_is_the_summary_one(round_trip, studies):
    entry = _entry(round_trip["folder"], studies["flair1"]["SeriesInstanceUID"])
    values = _sr_values(pydicom.dcmread(round_trip["folder"] / entry["outputs"]["sr"]))
    assert values["Volume"] == pytest.approx(entry["tumor_volume_mm3"], abs=5e-4)


def test_series_regex_chooses_by_description_or_protocol_name(orthanc, studies, basic_auth, tmp_path):
    out = tmp_path / "t1"
    assert _infer(orthanc.url, out, "--study", studies["study1"], "--series", "^t1_se") == 0  # the ProtocolName
    assert _summary(out)["series_selection"]["chosen"] == [studies["t1"]["SeriesInstanceUID"]]
    assert _summary(out)["options"]["series"] == "^t1_se"


def test_store_to_sends_the_results_of_a_folder_into_their_study(orthanc, basic_auth, tmp_path, lgg_root):
    images = [flair(lgg_root, n).astype(np.uint16) * 16 for n in (11, 13)]
    series = write_series(tmp_path / "src", images, PatientID="OTHER-1")  # not the patient of `studies`
    out = tmp_path / "out"
    assert _infer(str(tmp_path / "src"), out, "--store-to", orthanc.url) == 0
    study = series["StudyInstanceUID"]
    (seg_series,) = orthanc.series(study, "SEG")
    (sr_series,) = orthanc.series(study, "SR")
    (seg,) = orthanc.instances(study, seg_series)
    (sr,) = orthanc.instances(study, sr_series)
    entry = _entry(out, series["SeriesInstanceUID"])
    assert seg.SOPInstanceUID == pydicom.dcmread(out / entry["outputs"]["seg"]).SOPInstanceUID
    assert _sr_values(sr)["Volume"] == pytest.approx(entry["tumor_volume_mm3"], abs=5e-4)


def test_a_study_with_messy_headers_gets_its_seg_and_sr_back(orthanc, basic_auth, pacs_tools, tmp_path, lgg_root):
    """What a hospital's export carries: dashes in StudyDate, an anonymizer's birth date, no frame of reference."""
    from test_dicom_headers import ABSENT, messy_series

    images = [flair(lgg_root, n).astype(np.uint16) * 16 for n in (11, 13)]
    change = {"PatientID": "MESSY-1", "StudyDate": "2001-01-01", "PatientBirthDate": "00000000"}
    series = messy_series(tmp_path / "src", images, {**change, "FrameOfReferenceUID": ABSENT})
    for path in series["paths"]:
        orthanc.upload(path)
    study, out = series["StudyInstanceUID"], tmp_path / "out"
    assert _infer(orthanc.url, out, "--study", study, "--store") == 0
    (seg_series,) = orthanc.series(study, "SEG")
    (sr_series,) = orthanc.series(study, "SR")
    (seg,) = orthanc.instances(study, seg_series)
    (sr,) = orthanc.instances(study, sr_series)
    for stored in (seg, sr):
        errors, _ = _dciodvfy(pacs_tools, stored, tmp_path)
        assert errors == [] and stored.StudyDate == "20010101" and stored.PatientBirthDate == ""
    repairs = {r["attribute"]: r["action"] for r in _entry(out, series["SeriesInstanceUID"])["header_repairs"]}
    assert repairs == {"StudyDate": "repaired", "PatientBirthDate": "emptied", "FrameOfReferenceUID": "derived"}


def test_store_needs_a_dicomweb_input(studies, tmp_path, capsys):
    assert _infer(str(studies["src"]), tmp_path / "out", "--store") == 2
    assert "--store-to URL" in capsys.readouterr().err


# --- failures against Orthanc itself ------------------------------------------------------------------------


def test_a_wrong_password_fails_with_one_clear_message_and_writes_nothing(
    orthanc, studies, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    assert _infer(orthanc.url, tmp_path / "out", "--study", studies["study1"]) == 2
    err = capsys.readouterr().err
    assert "401" in err and USER_ENV in err and TOKEN_ENV in err and "Traceback" not in err
    assert "wrong" not in err  # never the password
    assert not (tmp_path / "out").exists()


def test_an_unknown_study_is_reported_and_the_others_go_on(orthanc, studies, basic_auth, tmp_path, capsys):
    unknown = "1.2.826.0.1.3680043.8.498.1"
    out = tmp_path / "out"
    assert _infer(orthanc.url, out, "--study", unknown, "--study", studies["study2"]) == 1
    err = capsys.readouterr().err
    assert f"no study {unknown}" in err
    by_uid = {s["study_instance_uid"]: s["status"] for s in _summary(out)["studies"]}
    assert by_uid == {unknown: "not found", studies["study2"]: "processed"}
    assert f"studies/{unknown}" in _skipped(out)


def test_a_patient_id_selects_all_of_the_patients_studies(orthanc, studies, basic_auth, tmp_path):
    out = tmp_path / "out"
    assert _infer(orthanc.url, out, "--patient", "LGG-4942") == 0
    assert {s["study_instance_uid"] for s in _summary(out)["studies"]} == {studies["study1"], studies["study2"]}


def test_credentials_in_the_url_are_refused(orthanc, studies, tmp_path, capsys):
    url = orthanc.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    assert _infer(url, tmp_path / "out", "--study", studies["study1"]) == 2
    err = capsys.readouterr().err
    assert USER_ENV in err and PASSWORD not in err


# --- through a fault-injecting HTTPS proxy: bearer token, TLS, transfers cut midway, STOW refused -----------


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1 / localhost, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bt_monai test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _drop_parts(body: bytes, content_type: str, modality: str) -> tuple[bytes, list[tuple[str, str]]]:
    """``body`` (multipart/related, DICOM parts) without the parts of ``modality``; their (class, SOP) UIDs."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    delimiter = b"\r\n--" + boundary
    segments = body.split(delimiter)
    kept, dropped = [segments[0]], []
    for segment in segments[1:]:
        if segment.startswith(b"--"):  # the closing delimiter
            kept.append(segment)
            continue
        ds = pydicom.dcmread(io.BytesIO(segment.split(b"\r\n\r\n", 1)[1]), stop_before_pixels=True)
        if ds.Modality == modality:
            dropped.append((ds.SOPClassUID, ds.SOPInstanceUID))
        else:
            kept.append(segment)
    return delimiter.join(kept), dropped


class FaultyProxy:
    """An HTTPS reverse proxy in front of Orthanc: checks a bearer token, forwards with HTTP basic auth, and,
    when told, cuts a series' WADO-RS answer midway (``cut[series_uid]`` more times, -1: always), answers
    500 to every STOW-RS request (``refuse_stow``), or keeps the objects of one modality out of a STOW-RS
    request and answers 202 with them in a FailedSOPSequence, as a server that stored only part does
    (``drop_from_stow``)."""

    def __init__(self, upstream: Orthanc, folder: Path) -> None:
        self.upstream, self.cut, self.refuse_stow, self.stow_requests = upstream, {}, False, 0
        self.drop_from_stow: str | None = None
        self.ca, cert, key = _certificates(folder)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._forward()

            def do_POST(self):
                self._forward()

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command == "POST" else None
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, b"bearer token required", {"WWW-Authenticate": "Bearer"})
                if self.command == "POST":
                    proxy.stow_requests += 1
                    if proxy.refuse_stow:
                        return self._answer(500, b"storage refused", {})
                dropped_sops = []
                if self.command == "POST" and proxy.drop_from_stow:
                    body, dropped_sops = _drop_parts(body, self.headers["Content-Type"], proxy.drop_from_stow)
                connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream.http_port, timeout=60)
                # plain bodies (the proxy may cut them), and a length http.client sets from the (edited) body
                dropped = ("authorization", "host", "accept-encoding", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                connection.close()
                series = self.path.split("?")[0].rstrip("/").split("/")
                wado = self.command == "GET" and len(series) >= 2 and series[-2] == "series"
                if wado and proxy.cut.get(series[-1], 0):
                    proxy.cut[series[-1]] -= 1
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.getheader("Content-Type"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])  # then the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    return
                extra = {"Content-Type": answer.getheader("Content-Type") or "application/octet-stream"}
                if dropped_sops:
                    result = json.loads(data)
                    failed = [
                        {"00081150": {"vr": "UI", "Value": [c]}, "00081155": {"vr": "UI", "Value": [u]}}
                        | {"00081197": {"vr": "US", "Value": [0xA700]}}  # Out of Resources
                        for c, u in dropped_sops
                    ]
                    result["00081198"] = {"vr": "SQ", "Value": failed}
                    return self._answer(202, json.dumps(result).encode(), extra)
                self._answer(answer.status, data, extra)

            def _answer(self, status: int, data: bytes, headers: dict):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(orthanc, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with FaultyProxy(orthanc, tmp_path) as p:
        yield p


def test_a_bearer_token_over_verified_tls_with_a_private_ca(proxy, studies, tmp_path):
    out = tmp_path / "out"
    assert _infer(proxy.url, out, "--study", studies["study2"], "--ca-bundle", str(proxy.ca)) == 0
    assert _summary(out)["studies"][0]["status"] == "processed"
    assert TOKEN not in (out / "summary.json").read_text()


def test_tls_is_verified_by_default(proxy, studies, tmp_path, capsys):
    assert _infer(proxy.url, tmp_path / "out", "--study", studies["study2"]) == 2
    err = capsys.readouterr().err
    assert "TLS certificate not verified" in err and "--ca-bundle" in err


def test_a_missing_token_is_a_credentials_message(proxy, studies, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    assert _infer(proxy.url, tmp_path / "out", "--study", studies["study2"], "--ca-bundle", str(proxy.ca)) == 2
    assert "401" in capsys.readouterr().err


def test_a_transfer_cut_once_is_retried_and_succeeds(proxy, studies, tmp_path):
    proxy.cut[studies["flair2"]["SeriesInstanceUID"]] = 1
    out = tmp_path / "out"
    assert _infer(proxy.url, out, "--study", studies["study2"], "--ca-bundle", str(proxy.ca)) == 0
    assert _entry(out, studies["flair2"]["SeriesInstanceUID"])["status"] == "processed"


def test_a_series_whose_transfer_keeps_failing_is_skipped_and_named_and_the_others_go_on(
    proxy, studies, tmp_path, capsys
):
    broken = studies["flair1"]["SeriesInstanceUID"]
    proxy.cut[broken] = -1
    out = tmp_path / "out"
    options = ["--study", studies["study1"], "--study", studies["study2"], "--ca-bundle", str(proxy.ca)]
    assert _infer(proxy.url, out, *options) == 1
    reason = _skipped(out)[f"studies/{studies['study1']}/series/{broken}"]
    assert "failed 3 times" in reason
    by_uid = {s["study_instance_uid"]: s["status"] for s in _summary(out)["studies"]}
    assert by_uid == {studies["study1"]: "incomplete", studies["study2"]: "processed"}
    assert not list((out / ".dicomweb").rglob(f"*{broken}*"))  # nothing half-retrieved stays
    assert f"study {studies['study1']} incomplete" in capsys.readouterr().err


def test_a_refused_stow_says_what_was_not_stored_and_exits_1(proxy, orthanc, studies, tmp_path, capsys, lgg_root):
    # a study of its own, so that nothing stored by other tests is counted
    image = flair(lgg_root, 11).astype(np.uint16) * 16
    series = write_series(tmp_path / "src", [image], SeriesDescription="FLAIR", PatientID="OTHER-2")
    for path in series["paths"]:
        orthanc.upload(path)
    proxy.refuse_stow = True
    out = tmp_path / "out"
    assert _infer(proxy.url, out, "--study", series["StudyInstanceUID"], "--store", "--ca-bundle", str(proxy.ca)) == 1
    err = capsys.readouterr().err
    assert "not stored: SR" in err and "HTTP 500" in err
    assert {o["status"] for o in _summary(out)["store"]["objects"]} == {"not stored"}
    assert (
        orthanc.series(series["StudyInstanceUID"], "SR") == []
        and orthanc.series(series["StudyInstanceUID"], "SEG") == []
    )
    assert proxy.stow_requests == 4  # one request per study, retried 3 times (POST is safe: fixed UIDs)


def test_a_partly_stored_study_says_which_object_was_not_stored_and_a_rerun_stores_only_that(
    proxy, orthanc, tmp_path, capsys, lgg_root
):
    images = [flair(lgg_root, n).astype(np.uint16) * 16 for n in (11, 13)]
    series = write_series(tmp_path / "src", images, SeriesDescription="FLAIR", PatientID="OTHER-3")
    for path in series["paths"]:
        orthanc.upload(path)
    study = series["StudyInstanceUID"]
    options = ["--study", study, "--store", "--ca-bundle", str(proxy.ca)]
    proxy.drop_from_stow = "SR"  # the server stores the SEG, refuses the SR
    out = tmp_path / "out"
    assert _infer(proxy.url, out, *options) == 1
    err = capsys.readouterr().err
    assert "not stored: SR" in err and "failure reason 42752" in err and "not stored: SEG" not in err
    status = {o["object"]: o["status"] for o in _summary(out)["store"]["objects"]}
    assert status == {"SEG": "stored", "SR": "not stored"}
    assert len(orthanc.series(study, "SEG")) == 1 and orthanc.series(study, "SR") == []
    proxy.drop_from_stow = None
    assert _infer(proxy.url, out, *options) == 0
    status = {o["object"]: o["status"] for o in _summary(out)["store"]["objects"]}
    assert status == {"SEG": "already stored", "SR": "stored"}
    (seg_series,) = orthanc.series(study, "SEG")
    assert len(orthanc.instances(study, seg_series)) == 1 and len(orthanc.series(study, "SR")) == 1


# --- the server stopped mid-run ------------------------------------------------------------------------------


def test_the_server_stopped_mid_run_names_what_is_missing_and_a_rerun_completes(
    pacs_tools, studies, tmp_path, basic_auth, monkeypatch, capsys
):
    server = Orthanc(pacs_tools, tmp_path / "orthanc").start()
    try:
        _upload(server, studies, ("flair1", "flair2"))
        retrieve = DicomWebServer.retrieve_series
        calls = []

        def stop_before_the_second(self, *args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                server.stop()  # the real server goes away between two series
            return retrieve(self, *args, **kwargs)

        monkeypatch.setattr(DicomWebServer, "retrieve_series", stop_before_the_second)
        out = tmp_path / "out"
        options = ["--study", studies["study1"], "--study", studies["study2"], "--store"]
        assert _infer(server.url, out, *options) == 1
        err = capsys.readouterr().err
        assert "cannot reach the server" in err and "not stored" in err
        statuses = {s["study_instance_uid"]: s["status"] for s in _summary(out)["studies"]}
        assert sorted(statuses.values()) == ["incomplete", "processed"]
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no half-written folder or file

        monkeypatch.setattr(DicomWebServer, "retrieve_series", retrieve)
        server.start()
        assert _infer(server.url, out, *options) == 0
        statuses = [s["status"] for s in _summary(out)["store"]["objects"]]
        assert sorted(set(statuses)) == ["stored"] and len(statuses) == 4
    finally:
        server.stop()
