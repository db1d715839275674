"""Zip archives of protocols: ``GET /dpp/export`` and zips sent to ``POST /dpp/protocols``
(``orthanc_dpp.rest.zips`` and its two handlers), on the in-memory Orthanc."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.rest import protocols as protocols_module
from orthanc_dpp.rest.http import Request, Response
from orthanc_dpp.rest.protocols import MAXIMUM_EXPORT, DppRestApi
from orthanc_dpp.rest.zips import ZipRefused, read_zip, write_zip
from tests.fake_orthanc import FakeOrthancApi, rest_api


def export(rest: DppRestApi, **query: str) -> Response:
    return rest.export(Request("GET", get=query))


def upload_zip(rest: DppRestApi, data: bytes) -> Response:
    return rest.upload(Request("POST", headers={"content-type": "application/zip"}, body=data))


def members(response: Response) -> dict[str, bytes]:
    assert (response.status, response.content_type) == (200, "application/zip")
    with zipfile.ZipFile(io.BytesIO(response.body)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def zipped(*files: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def library() -> tuple[DppRestApi, FakeOrthancApi, dict[str, bytes]]:
    """Three CT and two XA protocols stored through the upload, by SOP Instance UID."""
    rest, api, _ = rest_api()
    sent = {}
    for seed in range(5):
        ds = make_protocol(seed, "CT" if seed < 3 else "XA", charset="")
        data = to_bytes(ds)
        assert rest.upload(Request("POST", body=data)).status == 200
        sent[str(ds.SOPInstanceUID)] = data
    return rest, api, sent


def test_export_holds_the_originals_of_what_the_list_shows(library) -> None:
    rest, _, sent = library
    everything = members(export(rest))
    assert everything == {f"{uid}.dcm": data for uid, data in sent.items()}
    listed = json.loads(rest.protocols(Request("GET", get={"modality": "XA"})).body)
    xa = {p["SOPInstanceUID"] for p in listed["Protocols"]}
    assert len(xa) == 2
    assert set(members(export(rest, modality="XA"))) == {f"{uid}.dcm" for uid in xa}
    page = members(export(rest, offset="1", limit="2"))
    assert len(page) == 2 and set(page) < set(everything)


def test_export_refuses_what_the_list_refuses(library) -> None:
    rest, _, _ = library
    answer = export(rest, colour="red")
    assert answer.status == 400
    assert json.loads(answer.body)["Parameter"] == "colour"
    assert export(rest, limit=str(MAXIMUM_EXPORT + 1)).status == 400


def test_export_beyond_the_maximum_is_413(library, monkeypatch) -> None:
    rest, _, _ = library
    monkeypatch.setattr("orthanc_dpp.rest.protocols.MAXIMUM_EXPORT", 4)
    answer = export(rest)
    assert answer.status == 413
    assert json.loads(answer.body) == {
        "Error": "5 protocols match, at most 4 per export: narrow the search, "
        "or page with offset and limit",
        "HttpStatus": 413,
        "Total": 5,
    }
    assert len(members(export(rest, limit="4"))) == 4


def test_a_file_gone_meanwhile_is_left_out(library) -> None:
    rest, api, sent = library
    gone = next(iter(api.files))
    del api.files[gone]
    assert len(members(export(rest))) == len(sent) - 1


def test_an_exported_zip_uploads_byte_for_byte(library) -> None:
    rest, _, sent = library
    archive = export(rest).body
    fresh, _, index = rest_api()
    answer = upload_zip(fresh, archive)
    assert answer.status == 200
    result = json.loads(answer.body)
    assert (result["Stored"], result["Failed"]) == (5, 0)
    assert {f["File"] for f in result["Files"]} == {f"{uid}.dcm" for uid in sent}
    for uid, data in sent.items():
        entry = index.get(uid)
        assert entry is not None
        assert fresh.library.original_bytes(entry.orthanc_id) == data
    again = json.loads(upload_zip(rest, archive).body)
    assert {f["Status"] for f in again["Files"]} == {"AlreadyStored"}


def test_each_member_of_a_zip_has_its_result() -> None:
    fresh, _, index = rest_api()
    good = to_bytes(make_protocol(40, "CT", charset=""))
    data = zipped(("folder/", b""), ("folder/good.dcm", good), ("../notes.txt", b"not DICOM"))
    answer = upload_zip(fresh, data)
    assert answer.status == 400
    result = json.loads(answer.body)
    assert [(f["File"], f["Stored"]) for f in result["Files"]] == [
        ("folder/good.dcm", True),
        ("../notes.txt", False),
    ]
    assert len(index) == 1


def test_zip_bombs_are_refused_before_inflating() -> None:
    rest, _, index = rest_api(maximum_upload=1 << 20)
    bomb = zipped(("a.dcm", bytes(600 << 10)), ("b.dcm", bytes(600 << 10)))
    assert len(bomb) < 10 << 10
    answer = upload_zip(rest, bomb)
    assert (answer.status, json.loads(answer.body)["Error"]) == (
        413,
        "cannot read the upload: the zip's files hold 1228800 bytes once inflated, "
        "more than MaximumUploadSize (1048576 bytes)",
    )
    many = zipped(*((f"{n}.dcm", b"") for n in range(MAXIMUM_EXPORT + 1)))
    answer = upload_zip(rest, many)
    assert answer.status == 413
    assert (
        json.loads(answer.body)["Error"]
        == "cannot read the upload: the zip holds 1001 files, at most 1000"
    )
    assert len(index) == 0


def test_a_member_that_inflates_beyond_its_declared_size_is_refused() -> None:
    data = bytearray(zipped(("a.dcm", bytes(4096))))
    # Shrink the declared size (local header and central directory) to 16 bytes.
    for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(header) + offset
        data[at : at + 4] = (16).to_bytes(4, "little")
    with pytest.raises(ZipRefused) as refused:
        read_zip(bytes(data), 10, 1 << 20)
    assert refused.value.http_status == 400
    assert str(refused.value).startswith("zip member 'a.dcm' cannot be read: Bad CRC-32")


@pytest.mark.parametrize(
    ("data", "start"),
    [
        (b"PK not a zip", "not a readable zip archive: "),
        (zipped(("a.dcm", b"x" * 100))[:60], "not a readable zip archive: "),
    ],
)
def test_unreadable_zips_are_400(data: bytes, start: str) -> None:
    rest, _, _ = rest_api()
    answer = upload_zip(rest, data)
    assert answer.status == 400
    assert json.loads(answer.body)["Error"].startswith(f"cannot read the upload: {start}")


def test_write_then_read_keeps_names_bytes_and_order() -> None:
    files = [("b.dcm", b"\x00\x01" * 50), ("a.dcm", b"")]
    assert read_zip(write_zip(files), 2, 100) == files


def test_the_page_knows_the_export_limit() -> None:
    """The page disables its Export link past the limit the route enforces: the same number."""
    script = Path(protocols_module.__file__).parent / "static" / "library.js"
    assert f"var MAXIMUM_EXPORT = {MAXIMUM_EXPORT};" in script.read_text()
