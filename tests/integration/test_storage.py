"""Storing DPP instances through the listener and REST, in the real Orthanc."""

from __future__ import annotations

import io
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage, Verification

from dpp_tools.samples import make_library, make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.config import KEYS
from orthanc_dpp.model.sop import CT_DPP_STORAGE, STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests.datasets import LOST_PREDECESSOR, kvp_constraint, version_chain
from tests.orthanc_server import HttpError, OrthancServer
from tests.peers import associate, store_protocols
from tests.waiting import eventually


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """The usual server, with TEST_SCU trusted to C-STORE Protocol Approvals (storescu test)."""
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"), dpp={"ApprovalStorers": ["TEST_SCU"]}
    ) as orthanc:
        yield orthanc


def as_received(ds: Dataset, transfer_syntax: str) -> Dataset:
    """``ds`` as a receiver decodes it after encoding in ``transfer_syntax``."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds, transfer_syntax)))


def original(server: OrthancServer, uid: str) -> Dataset:
    return pydicom.dcmread(io.BytesIO(server.get(f"/dpp/protocols/{uid}/file")))


def test_versions_stored_by_c_store_and_rest_are_compared_and_chained(
    server: OrthancServer,
) -> None:
    first, second, third = version_chain(8100, 3, "XA")
    store_protocols(server, [first, second])
    assert server.post("/dpp/protocols", to_bytes(third))["Stored"] == 1
    uids = [str(ds.SOPInstanceUID) for ds in (first, second, third)]
    # Normalization gave each a patient, study and series; the diff sees the protocols as sent.
    (change,) = server.get_json(f"/dpp/protocols/{uids[0]}/diff/{uids[2]}")["Differences"]
    kv = float(kvp_constraint(first).ConstraintValueSequence[0].SelectorDSValue)
    assert change["Path"].startswith("AcquisitionProtocolElementSpecificationSequence[0].")
    assert (change["Keyword"], change["Tag"]) == ("SelectorDSValue", "00720072")
    assert (change["A"], change["B"]) == (
        {"vr": "DS", "Value": [kv]},
        {"vr": "DS", "Value": [kv + 20]},
    )
    assert server.get_json(f"/dpp/protocols/{uids[1]}/diff/{uids[1]}") == {"Differences": []}
    versions = server.get_json(f"/dpp/protocols/{uids[1]}/versions")
    assert [(v["SOPInstanceUID"], v["Stored"]) for v in versions["Predecessors"]] == [
        (uids[0], True),
        (LOST_PREDECESSOR, False),
    ]
    assert [v["SOPInstanceUID"] for v in versions["Successors"]] == [uids[2]]
    assert versions["Successors"][0]["ProtocolName"] == third.ProtocolName
    with pytest.raises(HttpError) as unknown:
        server.get(f"/dpp/protocols/{uids[0]}/diff/1.2.3.4")
    assert unknown.value.status == 404 and unknown.value.json()["Unknown"] == ["1.2.3.4"]
    server.delete(f"/dpp/protocols/{uids[2]}")
    assert server.get_json(f"/dpp/protocols/{uids[1]}/versions")["Successors"] == []
    assert server.status_of("GET", f"/dpp/protocols/{uids[2]}/versions") == 404


def test_c_echo_pynetdicom_and_dcmtk(server: OrthancServer) -> None:
    assoc = associate(server, [Verification])
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    result = subprocess.run(
        ["echoscu", "-aec", server.aet, "127.0.0.1", str(server.dpp_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_c_store_many_and_read_back_element_for_element(
    server: OrthancServer, transfer_syntax: str
) -> None:
    seed = 1000 * TRANSFER_SYNTAXES.index(transfer_syntax)
    sent = list(make_library(12, seed=seed, kinds=("CT", "XA")))
    store_protocols(server, [as_received(ds, transfer_syntax) for ds in sent], [transfer_syntax])
    for ds in sent:
        back = original(server, ds.SOPInstanceUID)
        assert back == as_received(ds, transfer_syntax), ds.SOPInstanceUID
        assert "PatientID" not in back
    listed = server.get_json("/dpp/protocols?limit=1000")
    listed_uids = {p["SOPInstanceUID"] for p in listed["Protocols"]}
    assert {ds.SOPInstanceUID for ds in sent} <= listed_uids


def test_stored_instances_appear_in_a_library_tree(server: OrthancServer) -> None:
    ds = make_protocol(7001, "CT")
    store_protocols(server, [ds])
    patients = server.get_json("/patients?expand")
    library = [p for p in patients if p["MainDicomTags"]["PatientID"] == "DPP-PROTOCOL-LIBRARY"]
    assert library and library[0]["MainDicomTags"]["PatientName"] == (
        "Defined Procedure Protocol Library"
    )
    series = server.get_json(f"/patients/{library[0]['ID']}/series?expand")
    descriptions = {s["MainDicomTags"].get("SeriesDescription") for s in series}
    assert "CT Defined Procedure Protocols" in descriptions


def test_c_store_from_dcmtk_storescu(server: OrthancServer, tmp_path: Path) -> None:
    sent = [make_protocol(8000 + i, kind) for i, kind in enumerate(["CT", "XA", "APPROVAL"])]
    files = []
    for ds in sent:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        files.append(str(path))
    # Calling as the declared TEST_SCU: storing protocols is for declared modalities.
    command = ["storescu", "--required", "-aet", "TEST_SCU", "-aec", server.aet]
    result = subprocess.run(
        [*command, "127.0.0.1", str(server.dpp_port), *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for ds in sent:
        assert original(server, ds.SOPInstanceUID) == as_received(ds, ExplicitVRLittleEndian)


def test_non_dpp_sop_class_is_refused(
    server: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assoc = associate(server, [CTImageStorage, CT_DPP_STORAGE])
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assert CTImageStorage not in accepted
    assert CT_DPP_STORAGE in accepted
    # A CT image on the DPP context does not match its SOP class. pynetdicom
    # sends a file as it is, on the context of its Media Storage SOP Class
    # UID, when told to send files in chunks.
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    image = make_non_dpp(1)
    path = tmp_path / "image.dcm"
    path.write_bytes(to_bytes(image))
    mislabelled = pydicom.dcmread(path)
    mislabelled.file_meta.MediaStorageSOPClassUID = CT_DPP_STORAGE
    mislabelled.save_as(path)  # enforce_file_format would restore the real class
    answer = assoc.send_c_store(path)
    assoc.release()
    assert answer.Status == 0xA900
    assert answer.ErrorComment.startswith("SOP Class UID 1.2.840.10008.5.1.4.1.1.2 does not")
    assert server.wait_for_log("C-STORE from TEST_SCU@127.0.0.1")
    assert image.SOPInstanceUID not in server.get("/dpp/protocols?limit=1000").decode()


def test_restart_keeps_everything_retrievable(make_server) -> None:
    orthanc = make_server()
    orthanc.start()
    sent = list(make_library(5, seed=99))
    store_protocols(orthanc, sent)
    orthanc.restart()
    status = orthanc.get_json("/dpp/status")
    assert status["Protocols"]["Total"] == 5
    # The index came back from the snapshot saved at shutdown, not from the files.
    assert "5 protocol(s) (5 from the snapshot, 0 new from the change log" in orthanc.log()
    for ds in sent:
        assert original(orthanc, ds.SOPInstanceUID) == as_received(ds, ExplicitVRLittleEndian)


def _plugin_version(server: OrthancServer) -> tuple[int, ...]:
    version = server.get_json("/dpp/status")["Platform"]["PythonPlugin"]
    return tuple(int(part) for part in version.split("."))


def test_platform_versions_and_interpreter_lock_are_reported(server: OrthancServer) -> None:
    platform = server.get_json("/dpp/status")["Platform"]
    assert platform["Orthanc"] == server.get_json("/system")["Version"]
    assert platform["PythonPlugin"] == server.get_json("/plugins/python")["Version"]
    assert platform["pydicom"] == pydicom.__version__
    # The server runs with "Python": {"AllowThreads": true}, which plugins
    # 4.3 and later honour (their NEWS); the plugin measured it itself.
    releases = _plugin_version(server) >= (4, 3)
    assert platform["InterpreterLockReleasedInCalls"] is releases
    assert platform["ReceivedInstanceHook"] is releases


def test_plain_post_instances_of_a_dpp_file(server: OrthancServer) -> None:
    """Normalized by the received-instance hook where it is installed, refused where not."""
    ds = make_protocol(9100, "XA")
    if not server.get_json("/dpp/status")["Platform"]["ReceivedInstanceHook"]:
        with pytest.raises(HttpError) as refused:
            server.post("/instances", to_bytes(ds))
        assert refused.value.status in (400, 404)
        assert server.post("/tools/lookup", str(ds.SOPInstanceUID).encode(), "text/plain") == []
        assert "received-instance hook is not installed" in server.log()
        return
    try:
        server.post("/instances", to_bytes(ds))
    except HttpError as exc:
        # Orthanc 1.10.1 answers 404 "Inexistent tag" after a modified upload
        # although it stored the instance (docs/orthanc-versions.md).
        assert exc.status == 404
    path = f"/dpp/protocols/{ds.SOPInstanceUID}"
    assert eventually(lambda: server.status_of("GET", path) == 200, 30), f"{path} never appeared"
    server_status = server.get_json(path)
    assert server_status["SOPClassUID"] == str(ds.SOPClassUID)
    assert original(server, ds.SOPInstanceUID) == as_received(ds, ExplicitVRLittleEndian)


def test_received_instance_hook_stays_off_while_calls_keep_the_interpreter_lock(
    make_server,
) -> None:
    orthanc = make_server(config={"Python": {"AllowThreads": False}})
    orthanc.start()
    platform = orthanc.get_json("/dpp/status")["Platform"]
    assert platform["InterpreterLockReleasedInCalls"] is False
    assert platform["ReceivedInstanceHook"] is False
    assert "received-instance hook is not installed" in orthanc.log()
    # Our own paths still store.
    store_protocols(orthanc, [make_protocol(9200, "CT")])
    assert orthanc.get_json("/dpp/status")["Protocols"]["Total"] == 1


def test_storage_classes_are_all_accepted(server: OrthancServer) -> None:
    assoc = associate(server)
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assoc.release()
    assert set(STORAGE_CLASSES) <= accepted


def test_configuration_is_in_status(server: OrthancServer) -> None:
    status = server.get_json("/dpp/status")
    assert status["Configuration"] == {"Valid": True, "Errors": []}
    assert status["Listener"]["State"] == "running"
    assert status["Listener"]["Port"] == server.dpp_port


def test_orthanc_stops_promptly_with_an_association_open(make_server) -> None:
    orthanc = make_server()
    orthanc.start()
    assoc = associate(orthanc, [Verification])
    assert assoc.send_c_echo().Status == 0x0000
    # The peer keeps the association open; Orthanc must still exit cleanly
    # (a kill after the 30-second grace period would give -9).
    assert orthanc.stop(timeout=30) == 0
    assert "Aborting association with TEST_SCU at shutdown" in orthanc.log()
    assoc.abort()


def test_bad_configuration_is_reported_and_orthanc_stays_up(make_server) -> None:
    orthanc = make_server(dpp={"Port": "eleven", "Prot": 1})
    orthanc.start(wait_listener=False)
    status = orthanc.get_json("/dpp/status")
    assert status["Configuration"]["Valid"] is False
    assert status["Configuration"]["Errors"] == [
        "DefinedProcedureProtocol.Port: must be a whole number (got 'eleven')",
        "DefinedProcedureProtocol.Prot: unknown key (known keys: " + ", ".join(sorted(KEYS)) + ")",
    ]
    assert status["Listener"]["State"] == "stopped"
    assert "DPP: Configuration error, DPP listener not started: DefinedProcedureProtocol.Port" in (
        orthanc.log()
    )
    assert orthanc.get_json("/system")["Name"].startswith("dpp-test-")  # Orthanc still serves
    with pytest.raises(HttpError) as refused:
        orthanc.get("/dpp/protocols")
    assert refused.value.status == 503
    assert refused.value.json()["Error"] == "DPP plugin configuration is invalid"


def test_port_in_use_is_reported_and_orthanc_stays_up(make_server) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        orthanc = make_server(dpp={"Port": port})
        orthanc.start()
        status = orthanc.get_json("/dpp/status")
        assert status["Listener"]["State"] == "failed"
        assert status["Listener"]["Error"].startswith(f"cannot listen on 127.0.0.1:{port}")
        assert "DPP: DPP listener not started: cannot listen on" in orthanc.log()
        assert orthanc.get_json("/system")["Name"].startswith("dpp-test-")


def test_strangers_may_not_write_the_library(make_server) -> None:
    """DicomAlwaysAllowStore (true, for images) does not open C-STORE of protocols."""
    orthanc = make_server(config={"DicomAlwaysAllowStore": True})
    orthanc.start()
    ds = make_protocol(9600, "CT")
    assoc = associate(orthanc, ae_title="STRANGER")
    answer = assoc.send_c_store(ds)
    assoc.release()
    assert answer.Status == 0x0124
    assert answer.ErrorComment == "Not authorised"  # the reason stays in the log
    assert (
        orthanc.wait_for_log("C-STORE from STRANGER@127.0.0.1")
        and "AET STRANGER is not in Orthanc's DicomModalities" in orthanc.log()
    )
    assert orthanc.get_json("/dpp/status")["Protocols"]["Total"] == 0
    # A declared modality may (the tests' TEST_SCU).
    store_protocols(orthanc, [ds])
    assert orthanc.get_json("/dpp/status")["Protocols"]["Total"] == 1


def test_unknown_callers_may_store_when_the_administrator_says_so(make_server) -> None:
    orthanc = make_server(dpp={"UnknownCallersMayStore": True}, declare_test_scu=False)
    orthanc.start()
    store_protocols(orthanc, [make_protocol(9601, "XA")])
    assert orthanc.get_json("/dpp/status")["Protocols"]["Total"] == 1


def test_dpp_routes_need_credentials_when_orthanc_asks_for_them(make_server) -> None:
    orthanc = make_server(
        config={"AuthenticationEnabled": True, "RegisteredUsers": {"admin": "change-me"}}
    )
    orthanc.start()
    for method, path in (("GET", "/dpp/status"), ("POST", "/dpp/protocols")):
        request = urllib.request.Request(orthanc.url + path, data=b"x", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401, path
    assert orthanc.get_json("/dpp/status")["Listener"]["State"] == "running"  # with them


def test_oversized_upload_answers_413(make_server) -> None:
    orthanc = make_server(dpp={"MaximumUploadSize": 1 << 20})
    orthanc.start()
    with pytest.raises(HttpError) as refused:
        orthanc.post("/dpp/protocols", bytes(2 << 20))
    assert refused.value.status == 413
    assert refused.value.json()["Error"] == "upload larger than MaximumUploadSize (1048576 bytes)"
