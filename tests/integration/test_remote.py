"""One Orthanc with the plugin finds and pulls protocols from another DPP archive.

Site A and site B are two real Orthancs with the plugin, each declaring the
other in ``DicomModalities``. Through A's REST API: a C-FIND on B (answers
checked against B's protocols), retrieves by C-GET and by C-MOVE into A,
after which A lists the protocols and serves byte for byte what B serves.
A bare pynetdicom archive plays a failing remote (C-FIND answered 0xC000
with an Error Comment), a slow one (an asynchronous retrieve whose
progress is seen before it completes) and a hostile one (a C-GET that sends
what nobody asked for, a dataset that is not the announced instance, a
deflate bomb, an oversize dataset; a C-FIND that never ends). A pushes
protocols to DCMTK's storescp and to a pynetdicom storage SCP. The examples
of docs/remote-archives.md run here with curl.
"""

from __future__ import annotations

import io
import json
import shlex
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dpp_tools.samples import make_protocol
from tests import doc_examples
from tests.bare_archive import BareArchive, RawStore
from tests.certificates import make_ca, make_leaf
from tests.hostile import deflated_bomb, peak_memory_kb
from tests.orthanc_server import HttpError, OrthancServer
from tests.peers import collecting_storescp, store_protocols, storescp
from tests.waiting import eventually

SITE_A, SITE_B = "ORTHANC_DPP", "SITE_B_DPP"


def site_pair(
    folder: Path, *extra_modalities: tuple[str, dict[str, Any]]
) -> tuple[OrthancServer, OrthancServer]:
    """A and B, each declared in the other's modality list (not started)."""
    a = OrthancServer(folder / "site-a", aet=SITE_A)
    b = OrthancServer(folder / "site-b", aet=SITE_B)
    a.config["DicomModalities"]["site-b"] = {"AET": SITE_B, "Host": "127.0.0.1", "Port": b.dpp_port}
    b.config["DicomModalities"]["site-a"] = {"AET": SITE_A, "Host": "127.0.0.1", "Port": a.dpp_port}
    for name, entry in extra_modalities:
        a.config["DicomModalities"][name] = entry
    return a, b


def call(server: OrthancServer, path: str, body: Any) -> tuple[int, Any]:
    """POST JSON, answer (status, JSON) whatever the status."""
    try:
        _, _, answer = server.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        return 200, json.loads(answer)
    except HttpError as exc:
        return exc.status, exc.json()


@pytest.fixture(scope="module")
def held() -> list[Dataset]:
    """B's protocols: CT and XA, default repertoire and Latin-1."""
    return [make_protocol(seed, "CT" if seed % 2 else "XA") for seed in range(40, 48)]


@pytest.fixture(scope="module")
def bare() -> Iterator[BareArchive]:
    archive = BareArchive(
        [make_protocol(seed, "CT", charset="") for seed in range(60, 63)],
        ae_title="BARE_DPP",
        pending_gate=threading.Event(),
    )
    with archive:
        yield archive


@pytest.fixture(scope="module")
def hostile() -> Iterator[BareArchive]:
    archive = BareArchive(
        [make_protocol(seed, "CT", charset="") for seed in range(80, 86)], ae_title="HOSTILE_DPP"
    )
    with archive:
        yield archive


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory,
    held: list[Dataset],
    bare: BareArchive,
    hostile: BareArchive,
) -> Iterator[tuple[OrthancServer, OrthancServer]]:
    a, b = site_pair(
        tmp_path_factory.mktemp("remote"),
        ("bare", bare.modality()),
        ("hostile", hostile.modality()),
    )
    with b, a:
        store_protocols(b, held)
        yield a, b


def a_file(a: OrthancServer, uid: str) -> bytes:
    return a.get(f"/dpp/protocols/{uid}/file")


def test_a_finds_bs_protocols(sites, held: list[Dataset]) -> None:
    a, _ = sites
    code, answer = call(a, "/dpp/modalities/site-b/find", {"ProtocolName": "", "Limit": 100})
    assert code == 200, answer
    assert answer["Complete"] is True and answer["Count"] == len(held)
    found = {
        item["00080018"]["Value"][0]: item["00181030"]["Value"][0] for item in answer["Answers"]
    }
    assert found == {str(ds.SOPInstanceUID): str(ds.ProtocolName) for ds in held}
    xa = [ds for ds in held if "XA" in str(ds.ProtocolName)]
    code, answer = call(a, "/dpp/modalities/site-b/find", {"ProtocolName": "XA*"})
    assert code == 200
    assert sorted(i["00080018"]["Value"][0] for i in answer["Answers"]) == sorted(
        str(ds.SOPInstanceUID) for ds in xa
    )


@pytest.mark.parametrize("method", ["C-GET", "C-MOVE"])
def test_a_pulls_protocols_from_b_with_nothing_lost(sites, held, method: str) -> None:
    a, b = sites
    chosen = held[:4] if method == "C-GET" else held[4:]
    uids = [str(ds.SOPInstanceUID) for ds in chosen]
    code, answer = call(
        a, "/dpp/modalities/site-b/retrieve", {"SOPInstanceUIDs": uids, "Method": method}
    )
    assert code == 200, answer
    assert (answer["Method"], answer["DimseStatusName"]) == (method, "Success")
    assert (answer["Completed"], answer["Failed"]) == (len(uids), 0)
    assert (answer["StoredHere"], answer["MissingHere"]) == (len(uids), [])
    listed = {p["SOPInstanceUID"] for p in a.get_json("/dpp/protocols?limit=1000")["Protocols"]}
    assert set(uids) <= listed
    for ds in chosen:
        uid = str(ds.SOPInstanceUID)
        assert a_file(a, uid) == b.get(f"/dpp/protocols/{uid}/file")  # the same bytes
        assert pydicom.dcmread(io.BytesIO(a_file(a, uid))) == ds  # normalization undone


def test_a_failing_remote_is_502_naming_the_status(sites, bare: BareArchive) -> None:
    a, _ = sites
    bare.find_failure = (0xC000, "Protocol index offline")
    try:
        code, answer = call(a, "/dpp/modalities/bare/find", {"ProtocolName": "*"})
    finally:
        bare.find_failure = None
    assert code == 502
    assert answer["DimseStatus"] == "0xC000"
    assert answer["DimseStatusName"] == "Failure: Unable to Process"
    assert answer["ErrorComment"] == "Protocol index offline"
    assert "BARE_DPP@127.0.0.1" in answer["Error"]
    assert "DPP C-FIND on bare (BARE_DPP@127.0.0.1" in a.log()


def test_an_unreachable_remote_is_502(sites) -> None:
    a, _ = sites
    a.request(
        "PUT",
        "/modalities/down",
        json.dumps({"AET": "DOWN", "Host": "127.0.0.1", "Port": 1}).encode(),
    )
    code, answer = call(a, "/dpp/modalities/down/find", {})  # added a moment ago: found
    assert code == 502
    assert "cannot connect" in answer["Error"]


def test_asynchronous_retrieve_shows_progress_and_completion(sites, bare: BareArchive) -> None:
    a, _ = sites
    gate = bare.pending_gate
    assert gate is not None
    uids = list(bare.held)
    code, answer = call(
        a, "/dpp/modalities/bare/retrieve", {"SOPInstanceUIDs": uids, "Asynchronous": True}
    )
    assert code == 200, answer
    path = answer["Path"]

    def job() -> dict[str, Any]:
        return a.get_json(path)

    try:
        # The archive holds back the second protocol until the gate opens.
        assert eventually(lambda: job()["Completed"] == 1, 60), job()
        running = job()
        assert (running["State"], running["Progress"], running["Requested"]) == ("Running", 33, 3)
    finally:
        gate.set()
    assert eventually(lambda: job()["State"] == "Success", 60), job()
    done = job()
    assert done["Progress"] == 100 and done["Completed"] == 3
    assert done["Result"]["StoredHere"] == 3
    for uid in uids:
        assert pydicom.dcmread(io.BytesIO(a_file(a, uid))) == bare.held[uid]
    assert path.rsplit("/", 1)[1] in {j["ID"] for j in a.get_json("/dpp/jobs")}


def test_a_tls_modality_is_queried_over_tls(make_server, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    for name in ("site-a", "bare"):
        make_leaf(pki, name, "ca")
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(pki / "bare.pem", pki / "bare.key")
    server_side.load_verify_locations(pki / "ca.pem")
    server_side.verify_mode = ssl.CERT_REQUIRED  # site A must present its certificate
    held = [make_protocol(70, "CT", charset="")]
    with BareArchive(held, ae_title="TLS_DPP", ssl_context=server_side) as archive:
        a = make_server(
            config={
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(pki / "site-a.pem"),
                "DicomTlsPrivateKey": str(pki / "site-a.key"),
                "DicomTlsTrustedCertificates": str(pki / "ca.pem"),
                "DicomModalities": {"tls-site": archive.modality(UseDicomTls=True)},
            }
        )
        a.start()
        code, answer = call(a, "/dpp/modalities/tls-site/find", {"ProtocolName": ""})
        assert code == 200, answer
        assert answer["Answers"][0]["00181030"]["Value"] == [str(held[0].ProtocolName)]
        uid = str(held[0].SOPInstanceUID)
        code, answer = call(a, "/dpp/modalities/tls-site/retrieve", {"SOPInstanceUIDs": [uid]})
        assert code == 200 and answer["StoredHere"] == 1, answer
        # Without TLS the same archive does not answer.
        a.request("PUT", "/modalities/plain-site", json.dumps(archive.modality()).encode())
        code, answer = call(a, "/dpp/modalities/plain-site/find", {})
        assert code == 502, answer


# -- a hostile archive ---------------------------------------------------------------------


def stored_here(a: OrthancServer, uid: str) -> bool:
    try:
        a_file(a, uid)
    except HttpError as exc:
        assert exc.status == 404
        return False
    return True


def still_healthy(a: OrthancServer, held: list[Dataset]) -> None:
    """A answers, its listener runs, and it still queries a sound archive."""
    assert a.get_json("/dpp/status")["Listener"]["State"] == "running"
    code, answer = call(a, "/dpp/modalities/site-b/find", {"ProtocolName": ""})
    assert code == 200 and answer["Count"] == len(held), answer


def test_a_hostile_archive_gets_only_the_requested_protocols_stored(
    sites, held: list[Dataset], hostile: BareArchive
) -> None:
    a, _ = sites
    wanted, unasked, impostor, other, announced = list(hostile.held.values())[:5]
    uid = {name: str(ds.SOPInstanceUID) for name, ds in
           {"wanted": wanted, "unasked": unasked, "impostor": impostor,
            "other": other, "announced": announced}.items()}  # fmt: skip
    bomb_uid = "1.2.826.0.1.3680043.8.498.999"  # deflated_bomb's
    bomb = RawStore(bomb_uid, str(wanted.SOPClassUID), deflated_bomb(1 << 30),
                    DeflatedExplicitVRLittleEndian)  # fmt: skip
    hostile.get_sends = [
        RawStore.of(wanted),
        RawStore.of(unasked),  # nobody asked for it
        RawStore.of(wanted),  # more than asked: the same one again
        RawStore.of(impostor, affected_uid=uid["announced"]),  # not what it says it is
        bomb,  # 1 GiB once inflated
    ]
    before = peak_memory_kb(a)
    try:
        code, answer = call(
            a,
            "/dpp/modalities/hostile/retrieve",
            {"SOPInstanceUIDs": [uid["wanted"], uid["announced"], bomb_uid]},
        )
    finally:
        hostile.get_sends = None
    assert code == 200, answer
    # Only the one requested protocol that came as itself is stored.
    assert stored_here(a, uid["wanted"])
    assert not any(stored_here(a, uid[n]) for n in ("unasked", "impostor", "announced"))
    assert not stored_here(a, bomb_uid)
    assert (answer["StoredHere"], answer["MissingHere"]) == (1, [uid["announced"], bomb_uid])
    assert answer["Unrequested"] == {
        uid["unasked"]: "not requested by this C-GET",
        uid["wanted"]: "already received in this C-GET",
    }
    refused = answer["RefusedHere"]
    assert uid["impostor"] in refused[uid["announced"]]
    assert "MaximumDatasetSize" in refused[bomb_uid]
    # What the archive was told, sub-operation by sub-operation.
    assert hostile.store_statuses[-5:] == [0x0000, 0x0124, 0x0124, 0xC000, 0xA700]
    assert hostile.store_comments[-5:-1] == [
        "",
        "SOP Instance not requested by this C-GET",
        "SOP Instance already received in this C-GET",
        "SOP Instance UID is not the Affected SOP Instance UID",
    ]
    log = a.log()
    assert (
        f"C-GET from hostile (HOSTILE_DPP@127.0.0.1:{hostile.port}): {uid['unasked']} refused"
        in log
    )
    assert peak_memory_kb(a) - before < 200 * 1024  # inflation stopped at MaximumDatasetSize
    still_healthy(a, held)


def test_a_background_retrieve_reports_unrequested_protocols(sites, hostile: BareArchive) -> None:
    a, _ = sites
    wanted, unasked = list(hostile.held.values())[5], list(hostile.held.values())[1]
    hostile.get_sends = [RawStore.of(unasked), RawStore.of(wanted)]
    try:
        code, answer = call(
            a,
            "/dpp/modalities/hostile/retrieve",
            {"SOPInstanceUIDs": [str(wanted.SOPInstanceUID)], "Asynchronous": True},
        )
        assert code == 200, answer
        path = answer["Path"]
        assert eventually(lambda: a.get_json(path)["State"] == "Success", 30), a.get_json(path)
    finally:
        hostile.get_sends = None
    result = a.get_json(path)["Result"]
    assert result["Unrequested"] == {str(unasked.SOPInstanceUID): "not requested by this C-GET"}
    assert (result["StoredHere"], result["MissingHere"]) == (1, [])
    assert not stored_here(a, str(unasked.SOPInstanceUID))


def test_an_oversize_dataset_from_an_archive_aborts_the_retrieve(
    sites, held: list[Dataset], hostile: BareArchive
) -> None:
    a, _ = sites
    big = list(hostile.held.values())[4]
    uid = str(big.SOPInstanceUID)
    oversize = RawStore.of(big)
    hostile.get_sends = [
        RawStore(uid, oversize.sop_class, oversize.data + bytes(17 << 20)),  # > 16 MiB
    ]
    try:
        code, answer = call(a, "/dpp/modalities/hostile/retrieve", {"SOPInstanceUIDs": [uid]})
    finally:
        hostile.get_sends = None
    assert code == 502, answer
    assert "association aborted during C-GET" in answer["Error"]
    assert "(MaximumDatasetSize) was being sent" in answer["Error"]
    assert not stored_here(a, uid)
    still_healthy(a, held)


def test_an_archive_answering_a_find_without_end_is_cut_off(
    sites, held: list[Dataset], hostile: BareArchive
) -> None:
    a, _ = sites
    hostile.endless_find = True
    try:
        code, answer = call(a, "/dpp/modalities/hostile/find", {"Limit": 5})
    finally:
        hostile.endless_find = False
    assert code == 502, answer
    assert "goes on answering" in answer["Error"]
    assert len(answer["Answers"]) == 5
    still_healthy(a, held)


# -- docs/remote-archives.md's examples ----------------------------------------------------

#: Fields whose values change from run to run.
VARIES = {"ID", "Path", "CreationTime", "CompletionTime"}


def readme_examples() -> list[doc_examples.Example]:
    remote_archives = doc_examples.DOCS / "remote-archives.md"
    return doc_examples.curl_examples(
        doc_examples.doc_section(remote_archives, "Querying other DPP archives")
    )


def test_readme_examples_answer_as_shown(tmp_path: Path) -> None:
    doc_examples.write_samples(tmp_path)
    a, b = site_pair(tmp_path / "sites")
    problems: list[str] = []
    with b, a:
        for name in ("ct-protocol.dcm", "xa-protocol.dcm"):
            store_protocols(b, [pydicom.dcmread(tmp_path / name)])
        for example in readme_examples():
            command, status, shown = example.command, example.status, example.answer
            if command.endswith("/dpp/jobs"):  # the jobs as they end
                assert eventually(
                    lambda: all(
                        j["State"] not in ("Pending", "Running") for j in a.get_json("/dpp/jobs")
                    ),
                    20,
                )
            args = [arg.replace(doc_examples.MAKE_RUN_URL, a.url) for arg in shlex.split(command)]
            result = subprocess.run(
                [*args, "--max-time", "60", "-w", "\n%{http_code}"],
                capture_output=True,
                text=True,
                timeout=90,
            )
            body, _, code = result.stdout.rpartition("\n")
            if int(code) != status:
                problems.append(f"{command}\n    HTTP {code}, README shows {status}: {body[:300]}")
            elif shown is not None:
                problems += [
                    f"{command}\n    {p}"
                    for p in doc_examples.differences(shown, json.loads(body), VARIES)
                ]
        for uid in (doc_examples.CT_UID, doc_examples.XA_UID):  # both came over, as sent
            sent = b.get(f"/dpp/protocols/{uid}/file")
            assert a.get(f"/dpp/protocols/{uid}/file") == sent
    assert not problems, "\n".join(problems)


def test_a_pushes_protocols_to_a_scanner_as_stored(sites, tmp_path: Path) -> None:
    """POST /dpp/modalities/{id}/store to DCMTK's storescp declared a moment ago: each protocol
    arrives as A serves it; an unknown UID is a failure of its own."""
    a, _ = sites
    pushed = [make_protocol(seed, "CT" if seed % 2 else "XA") for seed in (90, 91)]
    store_protocols(a, pushed)
    uids = [str(ds.SOPInstanceUID) for ds in pushed]
    with storescp(tmp_path, profile=True, aet="ROOM3_CT") as (port, received):
        entry = {"AET": "ROOM3_CT", "Host": "127.0.0.1", "Port": port}
        a.request("PUT", "/modalities/room3", json.dumps(entry).encode())
        code, answer = call(
            a, "/dpp/modalities/room3/store", {"SOPInstanceUIDs": [*uids, "1.2.3.4"]}
        )
        assert code == 200, answer
        assert [(r["SOPInstanceUID"], r["Status"], r["Error"]) for r in answer["Results"]] == [
            (uids[0], "0x0000", None),
            (uids[1], "0x0000", None),
            ("1.2.3.4", None, "not stored here"),
        ]
        files = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in received.iterdir()}
        assert sorted(files) == sorted(uids)
        for uid, path in files.items():
            assert pydicom.dcmread(path) == pydicom.dcmread(io.BytesIO(a_file(a, uid)))
    assert "DPP C-STORE of 3 protocols to room3 (ROOM3_CT@127.0.0.1" in a.log()


def test_an_asynchronous_push_is_a_job_with_each_outcome(sites) -> None:
    a, _ = sites
    pushed = [make_protocol(seed, "CT") for seed in (94, 95, 96)]
    store_protocols(a, pushed)
    uids = [str(ds.SOPInstanceUID) for ds in pushed]
    with collecting_storescp("ROOM4_CT") as (port, received):
        entry = {"AET": "ROOM4_CT", "Host": "127.0.0.1", "Port": port}
        a.request("PUT", "/modalities/room4", json.dumps(entry).encode())
        body = {"SOPInstanceUIDs": uids, "Asynchronous": True}
        code, answer = call(a, "/dpp/modalities/room4/store", body)
        assert code == 200, answer
        assert eventually(lambda: a.get_json(answer["Path"])["State"] == "Success", 60)
    done = a.get_json(answer["Path"])
    assert (done["Method"], done["Modality"], done["Completed"]) == ("C-STORE", "room4", 3)
    assert [r["SOPInstanceUID"] for r in done["Result"]["Results"]] == uids
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(uids)
