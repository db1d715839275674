"""The /dpp REST routes, on an in-memory Orthanc."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import struct
import zlib

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dpp_tools.samples import make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE
from orthanc_dpp.rest.http import Request, Response
from orthanc_dpp.rest.protocols import DppRestApi, split_upload
from orthanc_dpp.rest.routes import (
    ACTIVITY,
    LIBRARY_PAGE,
    PROTOCOL,
    PROTOCOL_DIFF,
    PROTOCOL_FILE,
    PROTOCOL_TREE,
    PROTOCOL_VERSIONS,
    PROTOCOLS,
    STATUS,
    Route,
    protocol_routes,
)
from orthanc_dpp.storage.approved_content import ApprovedContent
from orthanc_dpp.storage.decoding import DatasetLimits
from orthanc_dpp.storage.library import ProtocolLibrary, Stored
from tests.datasets import LOST_PREDECESSOR, version_chain
from tests.fake_orthanc import FakeOrthancApi, rest_api


@pytest.fixture
def api() -> FakeOrthancApi:
    return FakeOrthancApi()


@pytest.fixture
def index() -> ProtocolIndex:
    return ProtocolIndex()


@pytest.fixture
def rest(api: FakeOrthancApi, index: ProtocolIndex) -> DppRestApi:
    library = ProtocolLibrary(api, Normalization())
    return DppRestApi(
        library,
        index,
        status=lambda: {"Listener": {"State": "running"}},
        on_stored=lambda stored: index.put(stored.orthanc_id, stored.dataset),
        on_deleted=index.remove,
    )


def body(response: Response) -> dict:
    assert response.content_type == "application/json"
    return json.loads(response.body)


def upload(rest: DppRestApi, data: bytes, content_type: str = "application/dicom") -> Response:
    return rest.upload(Request("POST", headers={"content-type": content_type}, body=data))


def multipart(files: list[tuple[str, bytes]], kind: str = "related") -> tuple[str, bytes]:
    boundary = "dpp-test-boundary"
    chunks = []
    for name, data in files:
        disposition = f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        chunks.append(
            f"--{boundary}\r\n{disposition}Content-Type: application/dicom\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    payload = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return f"multipart/{kind}; type=application/dicom; boundary={boundary}", payload


def test_upload_one_file(rest: DppRestApi, index: ProtocolIndex) -> None:
    ds = make_protocol(1, "CT")
    response = upload(rest, to_bytes(ds))
    assert response.status == 200
    answer = body(response)
    assert answer["Stored"] == 1 and answer["Failed"] == 0
    (file,) = answer["Files"]
    assert file["Stored"] is True
    assert file["SOPInstanceUID"] == ds.SOPInstanceUID
    assert file["Status"] == "Success"
    assert file["AddedByNormalization"][:3] == [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ]
    assert index.get(ds.SOPInstanceUID) is not None


@pytest.mark.parametrize("kind", ["related", "form-data"])
def test_upload_several_files_with_one_bad(rest: DppRestApi, kind: str) -> None:
    good = [make_protocol(10 + i, "XA") for i in range(2)]
    files = [(f"p{i}.dcm", to_bytes(ds)) for i, ds in enumerate(good)]
    files.append(("image.dcm", to_bytes(make_non_dpp(3))))
    files.append(("junk.txt", b"not dicom"))
    content_type, payload = multipart(files, kind)
    response = upload(rest, payload, content_type)
    answer = body(response)
    assert response.status == 400
    assert (answer["Stored"], answer["Failed"]) == (2, 2)
    by_name = {f["File"]: f for f in answer["Files"]}
    assert by_name["p0.dcm"]["Stored"] and by_name["p1.dcm"]["Stored"]
    assert by_name["image.dcm"]["HttpStatus"] == 415
    assert "is not a Defined Procedure Protocol" in by_name["image.dcm"]["Error"]
    assert by_name["junk.txt"]["HttpStatus"] == 400
    assert "not a DICOM Part 10 file" in by_name["junk.txt"]["Error"]


def test_upload_errors_carry_the_specific_status(rest: DppRestApi) -> None:
    assert upload(rest, to_bytes(make_non_dpp(1))).status == 415
    assert upload(rest, b"").status == 400
    bad = upload(rest, b"--x--", "multipart/related; boundary=")
    assert bad.status == 400
    assert body(bad)["Error"]


def test_duplicate_upload_is_reported(rest: DppRestApi) -> None:
    data = to_bytes(make_protocol(5, "CT"))
    upload(rest, data)
    answer = body(upload(rest, data))
    assert answer["Files"][0]["Status"] == "AlreadyStored"


def test_list_is_paged_and_validated(rest: DppRestApi) -> None:
    for seed in range(7):
        upload(rest, to_bytes(make_protocol(100 + seed, "CT")))
    first = body(rest.protocols(Request("GET", get={"limit": "5"})))
    second = body(rest.protocols(Request("GET", get={"offset": "5", "limit": "5"})))
    assert first["Total"] == 7 and len(first["Protocols"]) == 5 and len(second["Protocols"]) == 2
    uids = [p["SOPInstanceUID"] for p in first["Protocols"] + second["Protocols"]]
    assert len(set(uids)) == 7
    assert {"SOPInstanceUID", "SOPClassUID", "ProtocolName", "OrthancID"} <= set(
        first["Protocols"][0]
    )
    bad = rest.protocols(Request("GET", get={"limit": "lots"}))
    assert bad.status == 400
    assert body(bad)["Error"] == "query parameter 'limit' must be a whole number, got 'lots'"
    assert rest.protocols(Request("GET", get={"limit": "5000"})).status == 400


def test_summary_file_and_delete(rest: DppRestApi, api: FakeOrthancApi) -> None:
    ds = make_protocol(42, "CT")
    upload(rest, to_bytes(ds))
    uid = ds.SOPInstanceUID
    summary = body(rest.protocol(Request("GET"), uid))
    assert summary["SOPInstanceUID"] == uid
    assert summary["ProtocolName"] == ds.ProtocolName
    file = rest.protocol_file(Request("GET"), uid)
    assert file.content_type == "application/dicom"
    assert file.headers["Content-Disposition"] == f'attachment; filename="{uid}.dcm"'
    assert pydicom.dcmread(io.BytesIO(file.body)) == pydicom.dcmread(io.BytesIO(to_bytes(ds)))
    by_orthanc_id = body(rest.protocol(Request("GET"), summary["OrthancID"]))
    assert by_orthanc_id["SOPInstanceUID"] == uid
    deleted = body(rest.delete_protocol(Request("DELETE"), uid))
    assert deleted == {"Deleted": uid, "OrthancID": summary["OrthancID"]}
    assert api.files == {}
    missing = rest.protocol(Request("GET"), uid)
    assert missing.status == 404
    assert uid in body(missing)["Error"]
    assert rest.protocol_file(Request("GET"), uid).status == 404


def route(rest: DppRestApi, uri: str) -> Route:
    """The route of ``uri`` in the table built from ``rest`` (it answers 405 for the handlers)."""
    return next(r for r in protocol_routes(rest) if r.uri == uri)


def test_methods_not_served_answer_405(rest: DppRestApi) -> None:
    assert route(rest, STATUS).answer(Request("POST")).allowed == "GET"
    assert route(rest, PROTOCOLS).answer(Request("PUT")).allowed == "GET,POST"
    assert route(rest, PROTOCOL).answer(Request("POST"), "1.2").allowed == "GET,DELETE"
    assert route(rest, PROTOCOL_FILE).answer(Request("DELETE"), "1.2").allowed == "GET"


# -- search, tree, activity, the library page -------------------------------------------------


@pytest.fixture
def library(rest: DppRestApi) -> list[pydicom.Dataset]:
    """Four protocols: CT and XA of seeds 1 to 4 (see the expectations below)."""
    stored = [make_protocol(seed, "CT" if seed % 2 else "XA") for seed in (1, 2, 3, 4)]
    for ds in stored:
        assert upload(rest, to_bytes(ds)).status == 200
    return stored


def found(rest: DppRestApi, **query: str) -> list[str]:
    response = rest.protocols(Request("GET", get=query))
    assert response.status == 200, response.body
    answer = body(response)
    assert answer["Total"] == len(answer["Protocols"]) or "limit" in query
    return [p["ProtocolName"] for p in answer["Protocols"]]


def test_search_parameters_match_parts_of_values_in_any_case(
    rest: DppRestApi, library: list[pydicom.Dataset]
) -> None:
    assert found(rest, name="chest") == ["CT Adult Chest w IV"]
    assert found(rest, modality="xa") == [
        "XA Adulte Angio Thorax v3",
        "XA Adult Angio Abdomen Follow-up",
    ]
    assert found(rest, modality="X") == []  # a modality is a code: equal, not a part
    assert found(rest, manufacturer="uih") == ["CT Erwachsene Hals mit KM Low Dose"]
    # Models of the Model Specification Sequence count, not only the creator's.
    assert found(rest, model="NAEOTOM") == ["CT Adult Chest w IV"]
    assert found(rest, code="rpid39") == ["CT Erwachsene Hals mit KM Low Dose"]
    assert found(rest, code="Visceral Arteries") == ["XA Adult Angio Abdomen Follow-up"]
    assert found(rest, date="20170417") == ["CT Adult Chest w IV"]
    assert found(rest, date="20180101-20211231") == [
        "CT Erwachsene Hals mit KM Low Dose",
        "XA Adult Angio Abdomen Follow-up",
    ]
    assert found(rest, date="-20171231") == ["CT Adult Chest w IV"]
    assert found(rest, date="20230101-") == ["XA Adulte Angio Thorax v3"]
    assert found(rest, modality="CT", manufacturer="siemens") == ["CT Adult Chest w IV"]
    assert found(rest, name="") == [ds.ProtocolName for ds in library]


def test_search_pages_count_the_matches(rest: DppRestApi, library: list[pydicom.Dataset]) -> None:
    answer = body(rest.protocols(Request("GET", get={"manufacturer": "SIEMENS", "limit": "1"})))
    assert answer["Total"] == 3 and len(answer["Protocols"]) == 1
    second = body(
        rest.protocols(Request("GET", get={"manufacturer": "SIEMENS", "offset": "1", "limit": "1"}))
    )
    assert second["Total"] == 3
    assert second["Protocols"][0]["ProtocolName"] != answer["Protocols"][0]["ProtocolName"]


def test_search_values_are_percent_decoded(
    rest: DppRestApi, library: list[pydicom.Dataset]
) -> None:
    # As Orthanc 1.10 hands them to plugins: still percent-encoded.
    assert found(rest, name="Angio%20Thorax") == ["XA Adulte Angio Thorax v3"]


@pytest.mark.parametrize(
    ("query", "parameter", "message"),
    [
        ({"colour": "red"}, "colour", "unknown query parameter 'colour'"),
        ({"date": "2017"}, "date", "query parameter 'date' must be a date YYYYMMDD"),
        ({"date": "20171332"}, "date", "query parameter 'date' must be a date YYYYMMDD"),
        ({"date": "-"}, "date", "query parameter 'date' must name at least one end"),
        ({"date": "20200101-20190101"}, "date", "range that ends before it starts"),
        ({"name": "x" * 257}, "name", "query parameter 'name' is longer than 256 characters"),
        ({"offset": "-1"}, "offset", "query parameter 'offset' must be between 0"),
    ],
)
def test_bad_search_parameters_answer_400_naming_them(
    rest: DppRestApi, query: dict[str, str], parameter: str, message: str
) -> None:
    response = rest.protocols(Request("GET", get=query))
    assert response.status == 400
    answer = body(response)
    assert answer["Parameter"] == parameter
    assert message in answer["Error"]
    assert answer["HttpStatus"] == 400


def test_tree_names_every_attribute_of_the_protocol_as_received(rest: DppRestApi) -> None:
    ds = make_protocol(1, "CT")
    upload(rest, to_bytes(ds))
    answer = body(rest.protocol_tree(Request("GET"), ds.SOPInstanceUID))
    assert answer["SOPInstanceUID"] == ds.SOPInstanceUID
    nodes = {node["Keyword"]: node for node in answer["Attributes"]}
    # Normalization added a patient to the stored copy; the tree shows the protocol as sent.
    assert "PatientID" not in nodes
    assert [node["Keyword"] for node in answer["Attributes"]] == [e.keyword for e in ds]
    assert nodes["ProtocolName"] == {
        "Tag": "0018,1030",
        "Keyword": "ProtocolName",
        "Name": "Protocol Name",
        "VR": "LO",
        "Value": "CT Adult Chest w IV",
    }
    elements = nodes["AcquisitionProtocolElementSpecificationSequence"]["Items"]
    assert len(elements) == len(ds.AcquisitionProtocolElementSpecificationSequence)
    constraints = {n["Keyword"]: n for n in elements[0]}["ParametersSpecificationSequence"]
    first = {n["Keyword"]: n for n in constraints["Items"][0]}
    assert first["SelectorAttribute"]["Value"] == "ProtocolElementName (0018,9922)"
    value = {n["Keyword"]: n for n in first["ConstraintValueSequence"]["Items"][0]}
    assert value["SelectorLOValue"]["Value"] == "Topogram AP"
    missing = rest.protocol_tree(Request("GET"), "1.2.3")
    assert missing.status == 404 and "1.2.3" in body(missing)["Error"]
    assert route(rest, PROTOCOL_TREE).answer(Request("DELETE"), ds.SOPInstanceUID).allowed == "GET"


def test_tree_describes_binary_values_and_cuts_long_texts() -> None:
    from orthanc_dpp.rest.dataset_tree import MAXIMUM_TEXT, dataset_tree

    ds = pydicom.Dataset()
    ds.add_new(0x00091010, "OB", b"\x00" * 10)  # private, binary
    ds.PatientComments = "x" * (MAXIMUM_TEXT + 10)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    nodes = {node["Tag"]: node for node in dataset_tree(ds)}
    assert nodes["0009,1010"]["Length"] == 10 and "Value" not in nodes["0009,1010"]
    assert nodes["0010,4000"]["Truncated"] is True
    assert len(nodes["0010,4000"]["Value"]) == MAXIMUM_TEXT
    assert nodes["0008,0008"]["Value"] == "ORIGINAL\\PRIMARY"


def test_activity_keeps_the_recent_log_lines_newest_first() -> None:
    import logging

    from orthanc_dpp.rest.activity import MAXIMUM_MESSAGE, ActivityLog

    activity = ActivityLog(capacity=3)
    logger = logging.getLogger("orthanc_dpp.test_activity")
    logger.addHandler(activity)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("not kept: below INFO")
        for number in range(4):
            logger.info("event %d", number)
        logger.error("first line\nTraceback (most recent call last): secret")
        logger.warning("y" * (MAXIMUM_MESSAGE + 50))
    finally:
        logger.removeHandler(activity)
    events = activity.as_json()["Events"]
    assert activity.as_json()["Capacity"] == 3
    assert [e["Message"][:10] for e in events] == ["y" * 10, "first line", "event 3"]
    assert events[1]["Message"] == "first line" and events[1]["Level"] == "ERROR"
    assert len(events[0]["Message"]) == MAXIMUM_MESSAGE
    assert events[2]["Source"] == "orthanc_dpp.test_activity"
    assert events[2]["Time"].endswith("Z")


def test_activity_route_and_uploads_are_recorded(rest: DppRestApi) -> None:
    import logging

    logger = logging.getLogger("orthanc_dpp")
    logger.addHandler(rest.activity)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        ds = make_protocol(9, "XA")
        upload(rest, to_bytes(ds))
        upload(rest, to_bytes(make_non_dpp(1)))
    finally:
        logger.removeHandler(rest.activity)
        logger.setLevel(level)
    events = body(rest.recent_activity(Request("GET")))["Events"]
    assert events[0]["Level"] == "ERROR" and "refused" in events[0]["Message"]
    assert events[1]["Message"] == f"Upload of body stored: {ds.SOPInstanceUID} (Success)"
    assert route(rest, ACTIVITY).answer(Request("POST")).allowed == "GET"


def test_library_page_files_with_types_and_security_headers(rest: DppRestApi) -> None:
    page = rest.library_page(Request("GET"), "")
    assert page.status == 200 and page.content_type == "text/html; charset=utf-8"
    assert page.body == rest.library_page(Request("GET"), "index.html").body
    assert b'<script src="library.js"' in page.body
    script = rest.library_page(Request("GET"), "library.js")
    assert script.content_type.startswith("text/javascript")
    assert b"innerHTML" not in script.body  # DICOM strings go in as text only
    assert rest.library_page(Request("GET"), "library.css").content_type.startswith("text/css")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("../rest.py", "rest.py", "explorer-extension.js", "INDEX.HTML"):
        missing = rest.library_page(Request("GET"), name)
        assert missing.status == 404, name
    assert route(rest, LIBRARY_PAGE).answer(Request("POST"), "").allowed == "GET"


def test_status_route(rest: DppRestApi) -> None:
    assert body(rest.status(Request("GET"))) == {"Listener": {"State": "running"}}


def test_split_upload_single_body() -> None:
    assert split_upload("application/dicom", b"abc") == [("body", b"abc")]


def deflated_bomb_file(inflated: int) -> bytes:
    """A Part 10 file in Deflated Explicit VR Little Endian whose dataset inflates hugely."""
    data = to_bytes(make_protocol(77, "CT"), DeflatedExplicitVRLittleEndian)
    (group_length,) = struct.unpack_from("<L", data, 140)
    end = 144 + group_length
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, inflated))
    zeros = bytes(1 << 20)
    body += b"".join(packer.compress(zeros) for _ in range(inflated >> 20)) + packer.flush()
    return data[:end] + body


def test_upload_limits_answer_413() -> None:
    rest, _, index = rest_api(limits=DatasetLimits(maximum_size=1 << 20), maximum_upload=2 << 20)
    too_big = upload(rest, bytes(3 << 20))
    assert too_big.status == 413
    assert body(too_big)["Error"] == "upload larger than MaximumUploadSize (2097152 bytes)"
    bomb = upload(rest, deflated_bomb_file(64 << 20))
    assert bomb.status == 413
    (failure,) = body(bomb)["Files"]
    assert failure["Error"].startswith("Dataset inflates to more than MaximumDatasetSize")
    assert len(index) == 0
    assert upload(rest, to_bytes(make_protocol(78, "CT"))).status == 200


def test_uploads_while_the_index_loads_are_refused_with_retry_after(api, index) -> None:
    loaded = False
    rest = DppRestApi(
        ProtocolLibrary(api, Normalization(), ready=lambda: loaded),
        index,
        status=lambda: {},
        on_stored=lambda stored: index.put(stored.orthanc_id, stored.dataset),
        on_deleted=index.remove,
    )
    response = upload(rest, to_bytes(make_protocol(1, "CT")))
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    (file,) = body(response)["Files"]
    assert file["Stored"] is False and file["HttpStatus"] == 503
    assert file["Error"].startswith("protocol index is loading: retry in a few seconds")
    assert not api.files
    loaded = True
    assert upload(rest, to_bytes(make_protocol(1, "CT"))).status == 200


class Approving:
    """The handlers with approvals bound to their protocols' content, as the adapter wires them."""

    def __init__(self) -> None:
        self.api, self.index = FakeOrthancApi(), ProtocolIndex()
        self.content = ApprovedContent(self.api, self.index)
        library = ProtocolLibrary(self.api, Normalization(), stored_as=self._stored_as)
        self.rest = DppRestApi(
            library,
            self.index,
            status=dict,
            on_stored=self._on_stored,
            on_deleted=self.index.remove,
            content=self.content,
            ae_title="DPP_TEST",
            software_version="9.9",
        )

    def _stored_as(self, uid: str) -> str | None:
        entry = self.index.get(uid)
        return None if entry is None else entry.orthanc_id

    def _on_stored(self, stored: Stored) -> None:
        self.index.put(stored.orthanc_id, stored.dataset)
        entry = self.index.get_by_orthanc_id(stored.orthanc_id)
        if entry is not None and entry.sop_class_uid == PROTOCOL_APPROVAL_STORAGE:
            self.content.bind(entry)

    def post(self, uid: str, payload: object, headers: dict[str, str] | None = None) -> Response:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = Request("POST", headers={"content-type": "application/json", **(headers or {})})
        return self.rest.approve(dataclasses.replace(request, body=data), uid)

    def state(self, uid: str) -> str:
        return body(self.rest.protocol(Request("GET"), uid))["ApprovalState"]

    def listed(self, **query: str) -> Response:
        return self.rest.protocols(Request("GET", get=query))


@pytest.fixture
def approving() -> Approving:
    return Approving()


def test_an_approval_posted_is_a_stored_protocol_approval_that_decides_the_state(
    approving: Approving,
) -> None:
    protocol = make_protocol(881, "CT")
    assert upload(approving.rest, to_bytes(protocol)).status == 200
    uid = str(protocol.SOPInstanceUID)
    assert approving.state(uid) == "none"
    basic = "Basic " + base64.b64encode(b"jdoe:secret").decode()
    answer = approving.post(
        uid,
        {"Assertion": "approved", "Comment": "fine", "ExpiresOn": "20991231"},
        {"authorization": basic},
    )
    assert answer.status == 201
    created = body(answer)["SOPInstanceUID"]
    entry = approving.index.get(created)
    assert entry is not None and entry.sop_class_uid == PROTOCOL_APPROVAL_STORAGE
    stored = pydicom.dcmread(io.BytesIO(approving.api.files[entry.orthanc_id]))
    assert stored.ApprovalSubjectSequence[0].ReferencedSOPInstanceUID == uid
    assert stored.ApprovalSubjectSequence[0].ReferencedSOPClassUID == protocol.SOPClassUID
    item = stored.ApprovalSequence[0]
    assert item.AsserterIdentificationSequence[0].PersonName == "jdoe"
    assert item.AssertionExpirationDateTime == "20991231000000+0000"
    assert approving.state(uid) == "approved"
    shown = body(approving.rest.protocol(Request("GET"), uid))
    assert shown["Approved"] is True
    assert shown["Approvals"][0]["Assertions"][0]["Asserter"] == "jdoe"

    assert approving.post(uid, {"Assertion": "rejected"}).status == 201
    assert approving.state(uid) == "rejected"
    rejection = [a for a in approving.index.approvals_of(uid) if a.sop_instance_uid != created]
    asserter = pydicom.dcmread(io.BytesIO(approving.api.files[rejection[0].orthanc_id]))
    device = asserter.ApprovalSequence[0].AsserterIdentificationSequence[0]
    assert (device.ObserverType, device.StationAETitle) == ("DEV", "DPP_TEST")  # no user


def test_an_approval_posted_approves_only_the_content_stored_then(approving: Approving) -> None:
    protocol = make_protocol(882, "CT")
    upload(approving.rest, to_bytes(protocol))
    uid = str(protocol.SOPInstanceUID)
    assert approving.post(uid, {"Assertion": "approved"}).status == 201
    assert approving.state(uid) == "approved"
    changed = copy.deepcopy(protocol)
    changed.ProtocolName = "Changed after approval"
    assert approving.rest.delete_protocol(Request("DELETE"), uid).status == 200
    assert upload(approving.rest, to_bytes(changed)).status == 200  # the UID, other content
    assert approving.state(uid) == "none"


def test_an_approval_that_has_lapsed_is_expired(approving: Approving) -> None:
    protocol = make_protocol(883, "XA")
    upload(approving.rest, to_bytes(protocol))
    uid = str(protocol.SOPInstanceUID)
    assert approving.post(uid, {"Assertion": "approved", "ExpiresOn": "20200101"}).status == 201
    assert approving.state(uid) == "expired"


def test_the_list_filters_on_the_approval_state_and_names_what_approvals_approve(
    approving: Approving,
) -> None:
    protocols = [make_protocol(seed, "CT") for seed in (884, 885, 886)]
    for protocol in protocols:
        upload(approving.rest, to_bytes(protocol))
    ok, bad, untouched = (str(p.SOPInstanceUID) for p in protocols)
    approving.post(ok, {"Assertion": "approved"})
    approving.post(bad, {"Assertion": "rejected"})
    for state, expected in (("approved", ok), ("rejected", bad), ("none", untouched)):
        page = body(approving.listed(approval=state))
        assert [p["SOPInstanceUID"] for p in page["Protocols"]] == [expected]
        assert page["Total"] == 1 and page["Protocols"][0]["ApprovalState"] == state
    assert body(approving.listed(approval="expired"))["Total"] == 0
    everything = body(approving.listed())["Protocols"]
    named = {
        p["Approves"][0]["SOPInstanceUID"]: p["Approves"][0]
        for p in everything
        if p["SOPClassUID"] == PROTOCOL_APPROVAL_STORAGE
    }
    assert set(named) == {ok, bad}
    assert named[ok]["ProtocolName"] == protocols[0].ProtocolName and named[ok]["Stored"]
    refused = approving.listed(approval="maybe")
    assert refused.status == 400 and body(refused)["Parameter"] == "approval"


def test_approving_an_unknown_uid_or_an_approval_is_404(approving: Approving) -> None:
    assert approving.post("1.2.3.999", {"Assertion": "approved"}).status == 404
    protocol = make_protocol(887, "CT")
    upload(approving.rest, to_bytes(protocol))
    created = body(approving.post(str(protocol.SOPInstanceUID), {"Assertion": "approved"}))
    answer = approving.post(created["SOPInstanceUID"], {"Assertion": "approved"})
    assert answer.status == 404 and "Protocol Approval" in body(answer)["Error"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        (b"[1]", None),
        ({"Assertion": "perhaps"}, "Assertion"),
        ({"Assertion": "approved", "ExpiresOn": "20271301"}, "ExpiresOn"),
        ({"Assertion": "approved", "Comment": ["a"]}, "Comment"),
        ({"Assertion": "approved", "Approver": "me"}, "Approver"),
    ],
)
def test_a_bad_approval_body_is_400_naming_the_member(
    approving: Approving, payload: object, field: str | None
) -> None:
    protocol = make_protocol(888, "CT")
    upload(approving.rest, to_bytes(protocol))
    answer = approving.post(str(protocol.SOPInstanceUID), payload)
    assert answer.status == 400
    assert body(answer).get("Field", "absent") == (field or "absent")
    assert not approving.index.approvals_of(str(protocol.SOPInstanceUID))


@pytest.mark.parametrize(
    ("authorization", "user"),
    [
        ("Basic " + base64.b64encode(b"alice:pa:ss").decode(), "alice"),
        ("basic " + base64.b64encode("Zoë:x".encode()).decode(), "Zoë"),
        ("Bearer abc.def", None),
        ("Basic not-base64!", None),
        ("Basic " + base64.b64encode(b":nouser").decode(), None),
        ("", None),
    ],
)
def test_the_asserter_is_the_basic_user_orthanc_authenticated(
    approving: Approving, authorization: str, user: str | None
) -> None:
    protocol = make_protocol(889, "CT")
    upload(approving.rest, to_bytes(protocol))
    headers = {"authorization": authorization} if authorization else {}
    answer = approving.post(str(protocol.SOPInstanceUID), {"Assertion": "approved"}, headers)
    entry = approving.index.get(body(answer)["SOPInstanceUID"])
    assert entry is not None
    stored = pydicom.dcmread(io.BytesIO(approving.api.files[entry.orthanc_id]))
    asserter = stored.ApprovalSequence[0].AsserterIdentificationSequence[0]
    assert asserter.get("PersonName") == user
    assert asserter.ObserverType == ("PSN" if user else "DEV")


def test_diff_of_two_stored_versions_compares_them_as_received(
    rest: DppRestApi, api: FakeOrthancApi
) -> None:
    first, second = version_chain(2, 2)
    for ds in (first, second):
        upload(rest, to_bytes(ds))
    a, b = str(first.SOPInstanceUID), str(second.SOPInstanceUID)
    answer = rest.protocol_diff(Request("GET"), a, b)
    assert answer.status == 200
    # Normalization gave both a patient, study and series: not a difference.
    assert body(answer) == {
        "Differences": [
            {
                "Path": "AcquisitionProtocolElementSpecificationSequence[0]"
                ".ParametersSpecificationSequence[2].ConstraintValueSequence[0].SelectorDSValue",
                "Tag": "00720072",
                "Keyword": "SelectorDSValue",
                "A": {"vr": "DS", "Value": [100.0]},
                "B": {"vr": "DS", "Value": [110.0]},
            }
        ]
    }
    orthanc_id = body(rest.protocol(Request("GET"), b))["OrthancID"]
    assert body(rest.protocol_diff(Request("GET"), a, a)) == {"Differences": []}
    assert body(rest.protocol_diff(Request("GET"), b, orthanc_id)) == {"Differences": []}
    assert route(rest, PROTOCOL_DIFF).answer(Request("POST"), a, b).allowed == "GET"
    del api.files[orthanc_id]  # indexed, but its file is gone
    unreadable = rest.protocol_diff(Request("GET"), a, b)
    assert unreadable.status == 404 and orthanc_id in body(unreadable)["Error"]


def test_diff_of_unknown_protocols_names_them(rest: DppRestApi) -> None:
    ds = make_protocol(3, "XA")
    upload(rest, to_bytes(ds))
    one = rest.protocol_diff(Request("GET"), ds.SOPInstanceUID, "1.2.3")
    assert one.status == 404
    assert body(one)["Unknown"] == ["1.2.3"] and "'1.2.3'" in body(one)["Error"]
    both = body(rest.protocol_diff(Request("GET"), "9.8", "9.9"))
    assert both["Unknown"] == ["9.8", "9.9"]
    assert both["Error"] == "no protocol with SOP Instance UID or Orthanc ID '9.8' and '9.9'"


def test_versions_of_a_stored_chain(rest: DppRestApi) -> None:
    chain = version_chain(5, 3, "XA")
    for ds in chain:
        upload(rest, to_bytes(ds))
    uids = [str(ds.SOPInstanceUID) for ds in chain]
    answer = body(rest.protocol_versions(Request("GET"), uids[1]))
    assert [(v["SOPInstanceUID"], v["Stored"]) for v in answer["Predecessors"]] == [
        (uids[0], True),
        (LOST_PREDECESSOR, False),
    ]
    assert [v["SOPInstanceUID"] for v in answer["Successors"]] == [uids[2]]
    assert answer["Successors"][0]["ProtocolName"] == chain[2].ProtocolName
    rest.delete_protocol(Request("DELETE"), uids[2])
    assert body(rest.protocol_versions(Request("GET"), uids[1]))["Successors"] == []
    missing = rest.protocol_versions(Request("GET"), uids[2])
    assert missing.status == 404 and uids[2] in body(missing)["Error"]
    assert route(rest, PROTOCOL_VERSIONS).answer(Request("PUT"), uids[0]).allowed == "GET"
