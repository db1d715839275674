"""The file meta of an uploaded Part 10 file: the inflation check reads what pydicom reads.

A group length that ended inside the Transfer Syntax UID value made the
check see "not deflated" while pydicom, which reads the whole group 0002,
inflated the dataset in one call (1 MiB became 1 GiB); a group length of 0,
or a few bytes short, made the check itself raise (HTTP 500).
"""

from __future__ import annotations

import io
import json
import zlib

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom.uid import DeflatedExplicitVRLittleEndian

from orthanc_dpp.model import dimse_status
from orthanc_dpp.rest.http import Request
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.storage.decoding import DatasetLimits, LimitExceeded, Malformed, check_part10
from orthanc_dpp.storage.library import StoreError
from orthanc_dpp.storage.part10 import read_part10
from tests.fake_orthanc import rest_api
from tests.part10_faults import (
    DEFLATED,
    PLAIN,
    damaged_files,
    deflated_bomb,
    lying_about_syntax,
    meta_end,
    refused_files,
    transfer_syntax_value,
    with_group_length,
)

LIMITS = DatasetLimits()  # MaximumDatasetSize 16 MiB


def upload(rest: DppRestApi, data: bytes) -> tuple[int, dict]:
    answer = rest.upload(Request("POST", headers={"content-type": "application/dicom"}, body=data))
    assert answer.content_type == "application/json"
    return answer.status, json.loads(answer.body)


def test_group_length_inside_the_transfer_syntax_with_a_bomb_behind_is_413() -> None:
    bomb = lying_about_syntax(deflated_bomb(5100, 64 << 20))
    assert len(bomb) < 200_000
    rest, api, index = rest_api(limits=LIMITS)
    code, answer = upload(rest, bomb)
    assert code == 413
    (failure,) = answer["Files"]
    assert failure["HttpStatus"] == 413
    assert failure["Error"] == ("Dataset inflates to more than MaximumDatasetSize (16777216 bytes)")
    assert len(index) == 0
    assert not api.files


def test_group_length_inside_the_transfer_syntax_without_a_bomb_is_400() -> None:
    lying = lying_about_syntax(DEFLATED)
    rest, api, index = rest_api(limits=LIMITS)
    code, answer = upload(rest, lying)
    assert code == 400
    assert not api.files
    true = meta_end(DEFLATED) - 144
    told = transfer_syntax_value(DEFLATED) + len("1.2.840.10008.1.2") - 144
    assert answer["Files"][0]["Error"] == (
        f"File Meta Information Group Length (0002,0000) says {told} bytes, "
        f"the file meta elements take {true}"
    )
    assert len(index) == 0


@pytest.mark.parametrize("syntax_file", [PLAIN, DEFLATED], ids=["explicit", "deflated"])
@pytest.mark.parametrize("shortfall", [None, 3, 1], ids=["zero", "3 short", "1 short"])
def test_group_length_zero_or_short_is_400(syntax_file: bytes, shortfall: int | None) -> None:
    true = meta_end(syntax_file) - 144
    told = 0 if shortfall is None else true - shortfall
    rest, api, index = rest_api(limits=LIMITS)
    code, answer = upload(rest, with_group_length(syntax_file, told))
    assert code == 400
    assert answer["Files"][0]["Error"] == (
        f"File Meta Information Group Length (0002,0000) says {told} bytes, "
        f"the file meta elements take {true}"
    )
    assert len(index) == 0
    assert not api.files


def test_repeated_transfer_syntax_is_refused() -> None:
    start = PLAIN.index(b"\x02\x00\x10\x00UI")
    length = int.from_bytes(PLAIN[start + 6 : start + 8], "little")
    element = PLAIN[start : start + 8 + length]
    twice = PLAIN[: start + 8 + length] + element + PLAIN[start + 8 + length :]
    twice = with_group_length(twice, meta_end(PLAIN) - 144 + len(element))
    with pytest.raises(Malformed) as refused:
        check_part10(twice, LIMITS)
    assert refused.value.comment == "file meta element (0002,0010) repeated or out of order"
    assert refused.value.http_status == 400
    assert refused.value.status == dimse_status.STORE_CANNOT_UNDERSTAND


def test_command_elements_after_the_meta_are_refused() -> None:
    end = meta_end(PLAIN)
    command = b"\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00"  # (0000,0000) UL, implicit
    with pytest.raises(Malformed, match=r"command elements \(group 0000\)"):
        check_part10(PLAIN[:end] + command + PLAIN[end:], LIMITS)


def test_deflate_garbage_is_400_not_500() -> None:
    head = DEFLATED[: meta_end(DEFLATED)]
    with pytest.raises(Malformed, match="the Deflated dataset cannot be inflated"):
        check_part10(head + b"\xff" * 64, LIMITS)


def test_a_sound_file_passes() -> None:
    for data in (PLAIN, DEFLATED):
        meta = check_part10(data, LIMITS)
        assert meta is not None
        assert meta.end == meta_end(data)
        assert meta.fault is None


def check_then_parse(data: bytes) -> tuple[object, object] | None:
    """What the upload route does before storing; None when it refuses (4xx)."""
    try:
        meta = check_part10(data, LIMITS)
        ds, _ = read_part10(data, LIMITS.maximum_depth)
    except LimitExceeded as exc:
        assert 400 <= exc.http_status < 500
        assert exc.comment
        return None
    except StoreError as exc:
        assert 400 <= exc.http_status < 500
        assert exc.reason
        return None
    return meta, ds


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=damaged_files())
def test_checker_fuzz_refuses_cleanly_or_agrees_with_pydicom(data: bytes) -> None:
    checked = check_then_parse(data)
    if checked is None:
        return
    meta, _ = checked
    assert meta is not None
    # Accepted: the check saw the meta pydicom reads, and bounded what pydicom inflates.
    read = pydicom.dcmread(io.BytesIO(data))
    assert read.file_meta == meta.dataset  # type: ignore[attr-defined]
    if meta.transfer_syntax == DeflatedExplicitVRLittleEndian:  # type: ignore[attr-defined]
        rest = data[meta.end :]  # type: ignore[attr-defined]
        assert len(
            zlib.decompressobj(-zlib.MAX_WBITS).decompress(rest, LIMITS.maximum_size + 1)
        ) <= (LIMITS.maximum_size)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=refused_files())
def test_upload_fuzz_answers_4xx_and_stores_nothing(data: bytes) -> None:
    rest, api, index = rest_api(limits=LIMITS)
    code, answer = upload(rest, data)
    assert 400 <= code < 500, answer
    # An empty body is refused whole; a file, in its entry.
    assert answer["Error"] if "Error" in answer else answer["Files"][0]["Error"]
    assert len(index) == 0
    assert not api.files


def test_multipart_upload_answers_each_malformed_file() -> None:
    boundary = "dpp-fault-boundary"
    files = [
        ("bomb.dcm", lying_about_syntax(deflated_bomb(5101, 64 << 20))),
        ("zero.dcm", with_group_length(PLAIN, 0)),
    ]
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    body += f"--{boundary}--\r\n".encode()
    rest, api, index = rest_api(limits=LIMITS)
    answer = rest.upload(
        Request(
            "POST",
            headers={"content-type": f"multipart/related; boundary={boundary}"},
            body=body,
        )
    )
    assert answer.status == 400  # the files failed for different reasons
    entries = json.loads(answer.body)["Files"]
    assert [(e["File"], e["HttpStatus"]) for e in entries] == [("bomb.dcm", 413), ("zero.dcm", 400)]
    assert entries[1]["Error"].startswith("File Meta Information Group Length (0002,0000) says 0")
    assert len(index) == 0
    assert not api.files
