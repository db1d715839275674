"""The REST reference, docs/rest-api.md, run as written: every curl example against a real Orthanc.

Each example of docs/rest-api.md is a ``sh`` block holding one curl command,
followed by "Answer: HTTP nnn" and, when it shows one, a ``json`` block with
the answer (or part of it) (``tests.doc_examples.curl_examples``). The
examples run in the document's order with the real ``curl`` binary, in a
folder holding the sample files it names, with only the address of ``make
run`` replaced by the test server's. Every route and method of the plugin
must have an example.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydicom
import pytest

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.rest.http import Request
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.rest.routes import Route, protocol_routes
from tests.doc_examples import (
    APPROVAL_UID,
    CT_UID,
    DOCS,
    MAKE_RUN_URL,
    XA_UID,
    Example,
    curl_examples,
    differences,
    doc_section,
    write_samples,
)
from tests.orthanc_server import OrthancServer

REPO = Path(__file__).resolve().parents[2]
REST_API = DOCS / "rest-api.md"

#: Fields whose values depend on the machine or the run: only their presence is checked.
VARIES = {"Version", "Platform", "Port", "LoadSeconds", "LastChange"}


def rest_section() -> str:
    return doc_section(REST_API, "REST API")


EXAMPLES = curl_examples(rest_section())


# -- coverage: every route and method has an example --------------------------------------


class _NoIndex:
    def get(self, uid: str) -> None:
        return None

    def get_by_orthanc_id(self, orthanc_id: str) -> None:
        return None


#: The protocol library's routes: docs/rest-api.md shows each of their methods.
ROUTES = protocol_routes(DppRestApi(None, _NoIndex(), dict, print, print))


def served_methods(route: Route, groups: int) -> set[str]:
    """The methods a route serves, from the 405 answer it gives to another one."""
    answer = route.answer(Request("PATCH"), *["x"] * groups)
    assert answer.status == 405 and answer.allowed
    return set(answer.allowed.split(","))


def test_every_route_and_method_has_an_example() -> None:
    assert len(EXAMPLES) >= len(ROUTES)
    for route in ROUTES:
        uri = route.uri
        pattern = re.compile(uri)
        covered = {e.method for e in EXAMPLES if pattern.fullmatch(urlparse(e.url).path)}
        missing = served_methods(route, pattern.groups) - covered
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


def exported_as_stored(saved: Path, orthanc: OrthancServer) -> list[str]:
    """What is wrong with an export: each member must be its protocol's file, byte for byte."""
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        wrong = [
            name
            for name in names
            if archive.read(name) != orthanc.get(f"/dpp/protocols/{name.removesuffix('.dcm')}/file")
        ]
    if not names:
        return [f"{saved.name} is empty"]
    return [f"{saved.name}: {name} is not the stored file" for name in wrong]


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
                found += differences(example.answer, json.loads(body), VARIES)
            except json.JSONDecodeError:
                found.append(f"not JSON: {body[:300]}")
        if "-o" in example.args:
            saved = tmp_path / example.args[example.args.index("-o") + 1]
            if saved.suffix == ".zip":
                found += exported_as_stored(saved, orthanc)
            else:
                uid = urlparse(example.url).path.split("/")[3]
                sent = pydicom.dcmread(tmp_path / "ct-protocol.dcm")
                if sent.SOPInstanceUID != uid or pydicom.dcmread(saved) != sent:
                    found.append(f"{saved.name} is not the protocol {uid} as sent")
        problems += [f"{example.command}\n    {p}" for p in found]
    assert not problems, "\n".join(problems)
    # What the examples leave: the form-data upload stored nothing, the CT protocol is deleted,
    # the approval made over REST stays.
    listing = {p["SOPInstanceUID"]: p for p in orthanc.get_json("/dpp/protocols")["Protocols"]}
    made = [p for uid, p in listing.items() if uid not in (XA_UID, APPROVAL_UID)]
    assert {XA_UID, APPROVAL_UID} <= set(listing)
    assert [p["ApprovalSubjects"] for p in made] == [[CT_UID]]


def test_an_export_imported_again_restores_every_file_byte_for_byte(
    orthanc: OrthancServer,
) -> None:
    """Export, delete everything, upload the zip: the same files, byte for byte, come back."""
    for seed in (70, 71, 72):  # in the default repertoire and Latin-1, CT and XA
        orthanc.post("/dpp/protocols", to_bytes(make_protocol(seed, "CT" if seed % 2 else "XA")))
    status, headers, archive = orthanc.request("GET", "/dpp/export")
    assert (status, headers["Content-Type"]) == (200, "application/zip")
    uids = [p["SOPInstanceUID"] for p in orthanc.get_json("/dpp/protocols")["Protocols"]]
    before = {uid: orthanc.get(f"/dpp/protocols/{uid}/file") for uid in uids}
    with zipfile.ZipFile(io.BytesIO(archive)) as exported:
        assert {n.removesuffix(".dcm"): exported.read(n) for n in exported.namelist()} == before
    for uid in uids:
        orthanc.delete(f"/dpp/protocols/{uid}")
    assert orthanc.get_json("/dpp/protocols")["Total"] == 0
    answer = orthanc.post("/dpp/protocols", archive, "application/zip")
    assert (answer["Stored"], answer["Failed"]) == (len(uids), 0)
    assert {f["Status"] for f in answer["Files"]} == {"Success"}
    assert {uid: orthanc.get(f"/dpp/protocols/{uid}/file") for uid in uids} == before
