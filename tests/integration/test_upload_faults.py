"""Lying and malformed Part 10 uploads against the real Orthanc: 4xx, never 5xx, nothing stored.

The reported attack: a file meta whose group length (0002,0000) ends inside
the Transfer Syntax UID value was seen as "not deflated" by the inflation
check, then inflated whole by pydicom (a 1 MiB upload stored as a 1 GiB
protocol); a group length of 0, or a few bytes short, gave HTTP 500. Then a
bounded hypothesis fuzz of the route (tests/part10_faults.py), single files
and multipart, with Orthanc's memory and library checked around it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpp_tools.samples import make_library, to_bytes
from tests.orthanc_server import HttpError, OrthancServer
from tests.part10_faults import (
    DEFLATED,
    PLAIN,
    deflated_bomb,
    lying_about_syntax,
    meta_end,
    refused_files,
    with_group_length,
)
from tests.peers import library_unchanged

BOUNDARY = "dpp-fault-boundary"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    # MaximumDatasetSize keeps its default, 16 MiB.
    with OrthancServer(tmp_path_factory.mktemp("upload-faults")) as server:
        for ds in make_library(4, seed=7300):
            assert server.post("/dpp/protocols", to_bytes(ds))["Stored"] == 1
        yield server


def memory_kb(orthanc: OrthancServer, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of the Orthanc process, in KiB."""
    assert orthanc.process is not None
    status = Path(f"/proc/{orthanc.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))


def instances(orthanc: OrthancServer) -> list[str]:
    return sorted(orthanc.get_json("/instances"))


def post(
    orthanc: OrthancServer, body: bytes, content_type: str, path: str = "/dpp/protocols"
) -> tuple[int, dict[str, Any]]:
    try:
        code, _, answer = orthanc.request("POST", path, body, {"Content-Type": content_type})
    except HttpError as exc:
        return exc.status, exc.json()
    return code, json.loads(answer)


def upload(orthanc: OrthancServer, files: list[bytes]) -> tuple[int, dict[str, Any]]:
    """One file as the body, several as multipart/related."""
    if len(files) == 1:
        return post(orthanc, files[0], "application/dicom")
    parts = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n"
        f'Content-Disposition: attachment; filename="f{n}.dcm"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for n, data in enumerate(files)
    )
    return post(
        orthanc, parts + f"--{BOUNDARY}--\r\n".encode(), f"multipart/related; boundary={BOUNDARY}"
    )


def errors(answer: dict[str, Any]) -> list[str]:
    """The reasons in an answer: the whole upload's, or each file's."""
    if "Files" not in answer:
        return [answer["Error"]]
    return [entry["Error"] for entry in answer["Files"]]


def test_group_length_inside_the_transfer_syntax_with_a_bomb_behind_is_413(orthanc) -> None:
    bomb = lying_about_syntax(deflated_bomb(7390, 64 << 20))  # 64 MiB once inflated
    assert len(bomb) < 200_000
    stored = instances(orthanc)
    peak = memory_kb(orthanc, "VmHWM")
    with library_unchanged(orthanc):
        code, answer = upload(orthanc, [bomb])
    assert code == 413
    assert errors(answer) == ["Dataset inflates to more than MaximumDatasetSize (16777216 bytes)"]
    assert answer["Files"][0]["HttpStatus"] == 413
    assert instances(orthanc) == stored
    # Inflation stopped near 16 MiB: the 64 MiB were never held.
    assert memory_kb(orthanc, "VmHWM") - peak < 48 * 1024
    assert "Upload of body refused: Dataset inflates to more than" in orthanc.log()


@pytest.mark.parametrize("data", [PLAIN, DEFLATED], ids=["explicit", "deflated"])
@pytest.mark.parametrize("shortfall", [None, 3], ids=["zero", "3 short"])
def test_group_length_zero_or_short_is_400(orthanc, data: bytes, shortfall: int | None) -> None:
    true = meta_end(data) - 144
    told = 0 if shortfall is None else true - shortfall
    stored = instances(orthanc)
    with library_unchanged(orthanc):
        code, answer = upload(orthanc, [with_group_length(data, told)])
    assert code == 400
    assert errors(answer) == [
        f"File Meta Information Group Length (0002,0000) says {told} bytes, "
        f"the file meta elements take {true}"
    ]
    assert instances(orthanc) == stored


def test_fuzzed_uploads_are_refused_and_change_nothing(orthanc) -> None:
    stored = instances(orthanc)
    resident = memory_kb(orthanc, "VmRSS")
    answers: list[int] = []

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,  # the same files every run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(files=st.lists(refused_files(), min_size=1, max_size=3))
    def refused(files: list[bytes]) -> None:
        code, answer = upload(orthanc, files)
        answers.append(code)
        assert 400 <= code < 500, answer
        assert all(errors(answer)), answer

    with library_unchanged(orthanc):
        refused()
    assert len(answers) >= 30
    assert instances(orthanc) == stored
    # Generous: nothing was inflated past the 16 MiB limit, nothing kept.
    assert memory_kb(orthanc, "VmRSS") - resident < 256 * 1024


def test_a_bomb_on_orthancs_own_route_is_not_inflated_by_the_hook(orthanc) -> None:
    """POST /instances reaches the received-instance hook (where it is installed).

    Orthanc refuses a lying file meta itself ("Bad file format"); a sound
    Deflated file that inflates past the limit is left by the hook as it is
    (the hook read it whole with pydicom before, then stored it normalized).
    """
    bomb = deflated_bomb(7391, 64 << 20)
    stored = instances(orthanc)
    with library_unchanged(orthanc):
        lying, _ = post(orthanc, lying_about_syntax(bomb), "application/dicom", "/instances")
        post(orthanc, bomb, "application/dicom", "/instances")
    assert lying == 400
    assert instances(orthanc) == stored
    if orthanc.get_json("/dpp/status")["Platform"]["ReceivedInstanceHook"]:
        assert (
            "Received instance left as it is, not read: Dataset inflates to more than "
            "MaximumDatasetSize (16777216 bytes)" in orthanc.log()
        )
