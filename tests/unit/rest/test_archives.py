"""``/dpp/modalities/{id}/find|retrieve|store`` and ``/dpp/jobs`` as plain functions, against a
bare pynetdicom DPP archive on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from pydicom import Dataset

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.dicom.modalities import ModalityRegistry, parse_modalities
from orthanc_dpp.dicom.outbound import Calling
from orthanc_dpp.dicom.scu.jobs import Jobs
from orthanc_dpp.dicom.scu.retrieve import MAXIMUM_UIDS
from orthanc_dpp.rest.archives import RemoteArchives
from orthanc_dpp.rest.http import Request, Response
from orthanc_dpp.rest.routes import FIND, RETRIEVE, remote_routes
from tests.bare_archive import BareArchive
from tests.orthanc_server import free_port
from tests.peers import collecting_storescp
from tests.scp_harness import MemorySource
from tests.waiting import eventually

CALLER = Calling("DPP_REST_UNIT", acse_timeout=5, dimse_timeout=5, network_timeout=5)


class Site:
    """What the REST handlers need of the plugin: a store and a modality list."""

    def __init__(self, archive: BareArchive, jobs: Jobs | None = None) -> None:
        self.stored: dict[str, Dataset] = {}
        self.refreshes = 0
        self.modalities = ModalityRegistry(
            parse_modalities(
                {
                    "site-b": archive.modality(),
                    "gone": {"AET": "GONE", "Host": "127.0.0.1", "Port": free_port()},
                }
            )
        )
        self.jobs = jobs or Jobs()
        self.api = RemoteArchives(
            CALLER,
            self.modalities,
            self.store,
            lambda uid: uid in self.stored,
            self.jobs,
            refresh=self.refresh,
        )

    def store(self, ds: Dataset, sop_class: str) -> None:
        self.stored[str(ds.SOPInstanceUID)] = ds

    def refresh(self) -> None:
        self.refreshes += 1


def post(handler, name: str, body: object) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer: Response = handler(Request("POST", body=raw), name)
    return answer.status, json.loads(answer.body)


@pytest.fixture
def archive() -> Iterator[BareArchive]:
    held = [make_protocol(seed, "CT" if seed % 2 else "XA", charset="") for seed in range(3)]
    with BareArchive(held) as bare:
        yield bare


@pytest.fixture
def site(archive: BareArchive) -> Iterator[Site]:
    site = Site(archive)
    yield site
    site.jobs.stop()


# -- find ----------------------------------------------------------------------------------


def test_find_answers_the_remotes_protocols(site: Site, archive: BareArchive) -> None:
    code, answer = post(site.api.find, "site-b", {"ProtocolName": "", "Limit": 10})
    assert code == 200
    assert answer["Count"] == 3 and answer["Complete"] is True and answer["Limit"] == 10
    names = {a["00080018"]["Value"][0]: a["00181030"]["Value"][0] for a in answer["Answers"]}
    assert names == {uid: ds.ProtocolName for uid, ds in archive.held.items()}
    assert archive.identifiers[0].ProtocolName == ""


def test_find_with_an_empty_body_lists_every_protocol(site: Site) -> None:
    code, answer = post(site.api.find, "site-b", b"")
    assert code == 200 and answer["Count"] == 3


def test_find_limit_cuts_the_answer(site: Site, archive: BareArchive) -> None:
    archive.await_cancel_after = 1
    code, answer = post(site.api.find, "site-b", {"Limit": 1})
    assert code == 200
    assert (answer["Count"], answer["Complete"]) == (1, False)


def test_unknown_modality_is_404_after_a_refresh(site: Site) -> None:
    code, answer = post(site.api.find, "site-c", {})
    assert code == 404
    assert answer["Error"] == "no modality 'site-c' in Orthanc's modality list"
    assert site.refreshes == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"ProtocolNam": "x"}, "bad query key 'ProtocolNam': not a DICOM keyword or tag"),
        ({"Limit": 0}, "Limit must be between 1 and 10000, got 0"),
        ({"Limit": "5"}, "Limit must be a whole number, got '5'"),
        (b"[1]", "the body must be a JSON object"),
        (b"{", "the body is not JSON"),
    ],
)
def test_bad_queries_are_400_naming_the_problem(site: Site, body: object, message: str) -> None:
    code, answer = post(site.api.find, "site-b", body)
    assert code == 400
    assert answer["Error"].startswith(message)


def test_a_refusing_remote_is_502_with_the_status_name(site: Site, archive: BareArchive) -> None:
    archive.find_failure = (0xC000, "Protocol index offline")
    code, answer = post(site.api.find, "site-b", {})
    assert code == 502
    assert answer["DimseStatus"] == "0xC000"
    assert answer["DimseStatusName"] == "Failure: Unable to Process"
    assert answer["ErrorComment"] == "Protocol index offline"
    assert "Protocol index offline" in answer["Error"]


def test_an_unreachable_remote_is_502(site: Site) -> None:
    code, answer = post(site.api.find, "gone", {})
    assert code == 502
    assert "cannot connect" in answer["Error"]


def test_only_post_is_served(site: Site) -> None:
    for route in [r for r in remote_routes(site.api) if r.uri in (FIND, RETRIEVE)]:
        answer = route.answer(Request("GET"), "site-b")
        assert (answer.status, answer.allowed) == (405, "POST")


# -- retrieve ------------------------------------------------------------------------------


def test_synchronous_c_get_stores_and_counts(site: Site, archive: BareArchive) -> None:
    uids = list(archive.held)
    code, answer = post(site.api.retrieve, "site-b", {"SOPInstanceUIDs": uids})
    assert code == 200, answer
    assert answer["Method"] == "C-GET"
    assert (answer["Completed"], answer["Failed"], answer["Warning"]) == (3, 0, 0)
    assert answer["DimseStatusName"] == "Success"
    assert (answer["StoredHere"], answer["MissingHere"]) == (3, [])
    assert {uid: site.stored[uid] for uid in uids} == archive.held


def test_move_to_an_unknown_destination_is_502_naming_the_status(
    site: Site, archive: BareArchive
) -> None:
    body = {"SOPInstanceUIDs": list(archive.held), "Method": "C-MOVE"}
    code, answer = post(site.api.retrieve, "site-b", body)
    assert code == 502
    assert answer["DimseStatusName"] == "Failure: Move destination unknown"
    # The default destination is this plugin's own listener.
    assert archive.callers == ["DPP_REST_UNIT"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "SOPInstanceUIDs must be a non-empty list"),
        ({"SOPInstanceUIDs": "1.2.3"}, "SOPInstanceUIDs must be a non-empty list"),
        ({"SOPInstanceUIDs": ["1.2.x"]}, "SOPInstanceUIDs: not a UID: '1.2.x'"),
        (
            {"SOPInstanceUIDs": ["1.2"] * (MAXIMUM_UIDS + 1)},
            f"at most {MAXIMUM_UIDS} SOPInstanceUIDs per request",
        ),
        ({"SOPInstanceUIDs": ["1.2"], "Method": "C-STORE"}, "Method must be C-GET or C-MOVE"),
        ({"SOPInstanceUIDs": ["1.2"], "Destination": "X"}, "Destination is for Method C-MOVE"),
        (
            {"SOPInstanceUIDs": ["1.2"], "Method": "C-MOVE", "Destination": "A\\B"},
            "Destination must be an AE title",
        ),
        ({"SOPInstanceUIDs": ["1.2"], "Asynchronous": "yes"}, "Asynchronous must be true or"),
        ({"SOPInstanceUIDs": ["1.2"], "Uids": []}, "unknown member(s) Uids"),
    ],
)
def test_bad_retrieve_requests_are_400(site: Site, body: dict, message: str) -> None:
    code, answer = post(site.api.retrieve, "site-b", body)
    assert code == 400
    assert answer["Error"].startswith(message)


# -- jobs ----------------------------------------------------------------------------------


def job_json(site: Site, job_id: str) -> dict:
    answer = site.api.job(Request("GET"), job_id)
    assert answer.status == 200
    return json.loads(answer.body)


def test_asynchronous_retrieve_is_a_job_with_progress(archive: BareArchive) -> None:
    gate = threading.Event()
    archive.pending_gate = gate  # the archive holds back the 2nd protocol until told
    site = Site(archive)
    uids = list(archive.held)
    code, answer = post(
        site.api.retrieve, "site-b", {"SOPInstanceUIDs": uids, "Asynchronous": True}
    )
    assert code == 200
    assert answer["Path"] == f"/dpp/jobs/{answer['ID']}"
    job_id = answer["ID"]
    assert eventually(lambda: job_json(site, job_id)["Completed"] == 1, 10)
    running = job_json(site, job_id)
    assert running["State"] == "Running"
    assert running["Progress"] == 33
    assert (running["Modality"], running["Method"], running["Requested"]) == ("site-b", "C-GET", 3)
    gate.set()
    assert eventually(lambda: job_json(site, job_id)["State"] == "Success", 10)
    done = job_json(site, job_id)
    assert done["Progress"] == 100 and done["Completed"] == 3
    assert done["Result"]["StoredHere"] == 3 and done["Result"]["MissingHere"] == []
    listed = json.loads(site.api.jobs_list(Request("GET")).body)
    assert [job["ID"] for job in listed] == [job_id]
    site.jobs.stop()


def test_a_job_can_be_cancelled(archive: BareArchive) -> None:
    gate = threading.Event()
    archive.pending_gate = gate
    site = Site(archive)
    body = {"SOPInstanceUIDs": list(archive.held), "Asynchronous": True}
    job_id = post(site.api.retrieve, "site-b", body)[1]["ID"]
    assert eventually(lambda: job_json(site, job_id)["Completed"] == 1, 10)
    answer = site.api.job_cancel(Request("POST"), job_id)
    assert answer.status == 200
    gate.set()
    assert eventually(lambda: job_json(site, job_id)["State"] == "Canceled", 10)
    assert job_json(site, job_id)["Result"]["DimseStatus"] == "0xFE00"
    site.jobs.stop()


def test_a_failing_job_shows_the_remotes_status(site: Site, archive: BareArchive) -> None:
    body = {"SOPInstanceUIDs": list(archive.held), "Method": "C-MOVE", "Asynchronous": True}
    job_id = post(site.api.retrieve, "site-b", body)[1]["ID"]
    assert eventually(lambda: job_json(site, job_id)["State"] == "Failure", 10)
    error = job_json(site, job_id)["Error"]
    assert error["DimseStatusName"] == "Failure: Move destination unknown"


def test_jobs_are_bounded(archive: BareArchive) -> None:
    gate = threading.Event()
    archive.pending_gate = gate
    site = Site(archive, Jobs(maximum_running=1))
    body = {"SOPInstanceUIDs": list(archive.held), "Asynchronous": True}
    assert post(site.api.retrieve, "site-b", body)[0] == 200
    code, answer = post(site.api.retrieve, "site-b", body)
    assert code == 503
    assert answer["Error"] == "no background retrieve started: 1 jobs are running (at most 1)"
    gate.set()
    site.jobs.stop()


def test_unknown_job_is_404(site: Site) -> None:
    for handler, method in ((site.api.job, "GET"), (site.api.job_cancel, "POST")):
        answer = handler(Request(method), "nope")
        assert answer.status == 404
        assert json.loads(answer.body)["Error"] == "no DPP job 'nope'"


# -- push (POST /dpp/modalities/{id}/store) ------------------------------------------------


@pytest.fixture
def pushing() -> Iterator[tuple[RemoteArchives, list[Dataset], list[str]]]:
    """The store route over three protocols held here, and a scanner that collects."""
    held = [make_protocol(seed, "CT", charset="") for seed in range(3)]
    source = MemorySource({str(ds.SOPInstanceUID): to_bytes(ds) for ds in held})
    with collecting_storescp("SCANNER") as (port, received):
        modalities = ModalityRegistry(
            parse_modalities(
                {
                    "room3": {"AET": "SCANNER", "Host": "127.0.0.1", "Port": port},
                    "gone": {"AET": "GONE", "Host": "127.0.0.1", "Port": free_port()},
                }
            )
        )
        jobs = Jobs()
        api = RemoteArchives(CALLER, modalities, print, lambda uid: False, jobs, source=source)
        yield api, received, [str(ds.SOPInstanceUID) for ds in held]
        jobs.stop()


def test_push_answers_an_outcome_per_uid(pushing) -> None:
    api, received, uids = pushing
    code, answer = post(api.store_to, "room3", {"SOPInstanceUIDs": [*uids[:2], "1.2.9"]})
    assert code == 200
    assert (answer["Completed"], answer["Failed"], answer["Modality"]) == (2, 1, "room3")
    assert [(r["SOPInstanceUID"], r["Status"], r["Error"]) for r in answer["Results"]] == [
        (uids[0], "0x0000", None),
        (uids[1], "0x0000", None),
        ("1.2.9", None, "not stored here"),
    ]
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(uids[:2])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "SOPInstanceUIDs must be a non-empty list of SOP Instance UIDs"),
        ({"SOPInstanceUIDs": ["x y"]}, "SOPInstanceUIDs: not a UID: 'x y'"),
        ({"SOPInstanceUIDs": ["1.2"], "Asynchronous": "yes"}, "Asynchronous must be true or false"),
        (
            {"SOPInstanceUIDs": ["1.2"], "Method": "C-GET"},
            "unknown member(s) Method (known: Asynchronous, SOPInstanceUIDs)",
        ),
        ({"SOPInstanceUIDs": ["1.2"] * 1001}, "at most 1000 SOPInstanceUIDs per request, got 1001"),
        (b"[", "the body is not JSON: Expecting value: line 1 column 2 (char 1)"),
    ],
)
def test_bad_push_requests_are_400(pushing, body: object, message: str) -> None:
    api, received, _ = pushing
    assert post(api.store_to, "room3", body) == (
        400,
        {"Error": message, "HttpStatus": 400},
    )
    assert received == []


def test_without_a_source_nothing_is_stored_here_to_push(site: Site) -> None:
    code, answer = post(site.api.store_to, "site-b", {"SOPInstanceUIDs": ["1.2.3"]})
    assert (code, answer["Failed"], answer["Results"][0]["Error"]) == (200, 1, "not stored here")


def test_push_to_an_unknown_modality_is_404(pushing) -> None:
    api, _, uids = pushing
    code, answer = post(api.store_to, "room9", {"SOPInstanceUIDs": uids})
    assert (code, answer["Error"]) == (404, "no modality 'room9' in Orthanc's modality list")


def test_push_to_an_unreachable_modality_is_502_with_each_uid(pushing) -> None:
    api, _, uids = pushing
    code, answer = post(api.store_to, "gone", {"SOPInstanceUIDs": uids[:1]})
    assert code == 502
    assert answer["Error"].endswith(": cannot connect (refused or timed out)")
    assert answer["Results"][0]["Error"] == "cannot connect (refused or timed out)"


def test_asynchronous_push_is_a_job_with_each_uids_outcome(pushing) -> None:
    api, received, uids = pushing
    code, answer = post(api.store_to, "room3", {"SOPInstanceUIDs": uids, "Asynchronous": True})
    assert code == 200

    def job() -> dict:
        return json.loads(api.job(Request("GET"), answer["ID"]).body)

    assert eventually(lambda: job()["State"] == "Success", 10)
    done = job()
    assert (done["Method"], done["Modality"], done["Completed"], done["Progress"]) == (
        "C-STORE",
        "room3",
        3,
        100,
    )
    assert [r["Status"] for r in done["Result"]["Results"]] == ["0x0000"] * 3
    assert "StoredHere" not in done["Result"]
    assert len(received) == 3
