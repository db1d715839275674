"""The /dpp REST routes, on an in-memory Orthanc."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dpp_tools.samples import make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.config import Normalization
from orthanc_dpp.index import ProtocolIndex
from orthanc_dpp.library import ProtocolLibrary
from orthanc_dpp.limits import DatasetLimits
from orthanc_dpp.rest import DppRestApi, Request, Response, split_upload
from tests.fake_orthanc import FakeOrthancApi


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
    return rest.protocols(Request("POST", headers={"content-type": content_type}, body=data))


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
    deleted = body(rest.protocol(Request("DELETE"), uid))
    assert deleted == {"Deleted": uid, "OrthancID": summary["OrthancID"]}
    assert api.files == {}
    missing = rest.protocol(Request("GET"), uid)
    assert missing.status == 404
    assert uid in body(missing)["Error"]
    assert rest.protocol_file(Request("GET"), uid).status == 404


def test_methods_not_served_answer_405(rest: DppRestApi) -> None:
    assert rest.status(Request("POST")).allowed == "GET"
    assert rest.protocols(Request("PUT")).allowed == "GET,POST"
    assert rest.protocol(Request("POST"), "1.2").allowed == "GET,DELETE"
    assert rest.protocol_file(Request("DELETE"), "1.2").allowed == "GET"


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


def test_upload_limits_answer_413(api: FakeOrthancApi, index: ProtocolIndex) -> None:
    rest = DppRestApi(
        ProtocolLibrary(api, Normalization()),
        index,
        status=dict,
        on_stored=lambda stored: index.put(stored.orthanc_id, stored.dataset),
        on_deleted=index.remove,
        limits=DatasetLimits(maximum_size=1 << 20),
        maximum_upload=2 << 20,
    )
    too_big = upload(rest, bytes(3 << 20))
    assert too_big.status == 413
    assert body(too_big)["Error"] == "upload larger than MaximumUploadSize (2097152 bytes)"
    bomb = upload(rest, deflated_bomb_file(64 << 20))
    assert bomb.status == 413
    (failure,) = body(bomb)["Files"]
    assert failure["Error"].startswith("Dataset inflates to more than MaximumDatasetSize")
    assert len(index) == 0
    assert upload(rest, to_bytes(make_protocol(78, "CT"))).status == 200
