"""README's REST reference, run as written: every curl example against a real Orthanc.

Each example of README's "REST API" section is a ``sh`` block holding one
curl command, followed by "Answer: HTTP nnn" and, when it shows one, a
``json`` block with the answer (or part of it). The examples run in README
order with the real ``curl`` binary, in a folder holding the sample files
README names, with only the address of ``make run`` replaced by the test
server's. Every route and method of the plugin must have an example.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest

from dpp_tools.samples import make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.adapter import ROUTES
from orthanc_dpp.http_messages import Request
from orthanc_dpp.rest import DppRestApi
from tests.orthanc_server import OrthancServer

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
#: Where ``make run`` serves Orthanc's REST API (./orthanc.json).
MAKE_RUN_URL = "http://127.0.0.1:8043"

#: The sample files' SOP Instance UIDs, as README's answers show them.
CT_UID = "2.25.119546327322774435051676743357352962937"
XA_UID = "2.25.198965325642171815000894312853115304275"
APPROVAL_UID = "2.25.19217924375929687950232765645835280542"

#: Fields whose values depend on the machine or the run: only their presence is checked.
VARIES = {"Version", "Platform", "Port", "LoadSeconds", "LastChange"}


@dataclass(frozen=True)
class Example:
    command: str
    status: int
    answer: Any | None  # the JSON README shows, if any
    no_body: bool  # README says the answer has no body

    @property
    def args(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def url(self) -> str:
        return next(a for a in self.args if a.startswith(MAKE_RUN_URL))

    @property
    def method(self) -> str:
        args = self.args
        if "-X" in args:
            return args[args.index("-X") + 1]
        sends = {"-F", "--data-binary", "-d", "--data"}
        return "POST" if sends & set(args) else "GET"


def rest_section() -> str:
    start = README.index("## REST API\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def examples() -> list[Example]:
    """The examples of README's REST section, in order."""
    text = rest_section()
    fences = list(re.finditer(r"```(\w*)\n(.*?)```", text, re.S))
    found = []
    for number, fence in enumerate(fences):
        if fence.group(1) != "sh":
            continue
        command = fence.group(2).strip()
        assert "\n" not in command and command.startswith("curl "), command
        following = fences[number + 1] if number + 1 < len(fences) else None
        prose = text[fence.end() : following.start() if following else len(text)]
        status = re.search(r"Answer: HTTP (\d{3})", prose)
        assert status, f"no 'Answer: HTTP nnn' after {command}"
        answer = None
        if following is not None and following.group(1) == "json":
            answer = json.loads(following.group(2))
        found.append(Example(command, int(status.group(1)), answer, "no body" in prose))
    return found


EXAMPLES = examples()


# -- coverage: every route and method has an example --------------------------------------


class _NoIndex:
    def get(self, uid: str) -> None:
        return None

    def get_by_orthanc_id(self, orthanc_id: str) -> None:
        return None


def served_methods(handler_name: str, groups: int) -> set[str]:
    """The methods a route serves, from the 405 answer its handler gives to another one."""
    api = DppRestApi(None, _NoIndex(), dict, print, print)
    answer = getattr(api, handler_name)(Request("PATCH"), *["x"] * groups)
    assert answer.status == 405 and answer.allowed
    return set(answer.allowed.split(","))


def test_every_route_and_method_has_an_example() -> None:
    assert len(EXAMPLES) >= len(ROUTES)
    for uri, handler_name in ROUTES.items():
        pattern = re.compile(uri)
        covered = {e.method for e in EXAMPLES if pattern.fullmatch(urlparse(e.url).path)}
        missing = served_methods(handler_name, pattern.groups) - covered
        assert not missing, f"README has no example of {sorted(missing)} {uri}"


def test_examples_use_the_address_of_make_run() -> None:
    configuration = (REPO / "orthanc.json").read_text()
    assert re.search(r'"HttpPort"\s*:\s*8043\b', configuration)
    assert re.search(r'"AuthenticationEnabled"\s*:\s*false\b', configuration)
    for example in EXAMPLES:
        assert example.url.startswith(MAKE_RUN_URL + "/dpp/"), example.command


def test_readme_names_the_sample_files_and_uid_the_examples_use() -> None:
    text = rest_section()
    for name in ("ct-protocol.dcm", "ct-protocol-v2.dcm", "xa-protocol.dcm", "approval.dcm"):
        assert f"`{name}`" in text
    assert "`ct-image.dcm`" in text and "`huge.dcm`" in text and f"`{CT_UID}`" in text


# -- running them -------------------------------------------------------------------------


def write_samples(folder: Path) -> None:
    """The files README's examples name."""

    def save(ds: pydicom.Dataset, uid: str, name: str) -> None:
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        (folder / name).write_bytes(to_bytes(ds))

    save(make_protocol(1, "CT"), CT_UID, "ct-protocol.dcm")
    changed = make_protocol(1, "CT")
    changed.ProtocolName = f"{changed.ProtocolName} v2"
    save(changed, CT_UID, "ct-protocol-v2.dcm")
    save(make_protocol(2, "XA"), XA_UID, "xa-protocol.dcm")
    save(make_protocol(1, "APPROVAL"), APPROVAL_UID, "approval.dcm")
    (folder / "ct-image.dcm").write_bytes(to_bytes(make_non_dpp(1)))
    with (folder / "huge.dcm").open("wb") as huge:
        huge.truncate(64 * 1024 * 1024 + 1)  # "larger than 64 MiB": MaximumUploadSize


def differences(shown: Any, actual: Any, where: str = "answer") -> list[str]:
    """Where ``actual`` differs from what README shows (README may leave fields out)."""
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        found = []
        for key, value in shown.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing")
            elif key not in VARIES:
                found += differences(value, actual[key], f"{where}.{key}")
        return found
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(actual) != len(shown):
            return [f"{where}: expected {len(shown)} items, got {actual!r}"]
        found = []
        for number, (item, real) in enumerate(zip(shown, actual, strict=True)):
            found += differences(item, real, f"{where}[{number}]")
        return found
    return [] if shown == actual else [f"{where}: README shows {shown!r}, got {actual!r}"]


def run(example: Example, server: OrthancServer, folder: Path) -> tuple[int, str]:
    args = [a.replace(MAKE_RUN_URL, server.url) for a in example.args]
    result = subprocess.run(
        [*args, "--max-time", "60", "-w", "\n%{http_code}"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"{example.command}: {result.stderr}"
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fresh Orthanc: the examples start from an empty library."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def test_every_example_answers_as_readme_shows(orthanc: OrthancServer, tmp_path: Path) -> None:
    write_samples(tmp_path)
    problems: list[str] = []
    for example in EXAMPLES:
        code, body = run(example, orthanc, tmp_path)
        found: list[str] = []
        if code != example.status:
            found.append(f"HTTP {code}, README shows {example.status}: {body[:300]}")
        elif example.no_body and body:
            found.append(f"README shows no body, got {body[:300]}")
        elif example.answer is not None:
            try:
                found += differences(example.answer, json.loads(body))
            except json.JSONDecodeError:
                found.append(f"not JSON: {body[:300]}")
        if "-o" in example.args:
            saved = tmp_path / example.args[example.args.index("-o") + 1]
            uid = urlparse(example.url).path.split("/")[3]
            sent = pydicom.dcmread(tmp_path / "ct-protocol.dcm")
            if sent.SOPInstanceUID != uid or pydicom.dcmread(saved) != sent:
                found.append(f"{saved.name} is not the protocol {uid} as sent")
        problems += [f"{example.command}\n    {p}" for p in found]
    assert not problems, "\n".join(problems)
    # What the examples leave: the form-data upload stored nothing, the CT protocol is deleted.
    listing = orthanc.get_json("/dpp/protocols")
    assert {p["SOPInstanceUID"] for p in listing["Protocols"]} == {XA_UID, APPROVAL_UID}
