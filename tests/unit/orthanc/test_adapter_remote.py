"""The routes to other DPP archives through the adapter, on fakes of each recorded plugin.

A protocol retrieved by C-GET must take the plugin's own store path
(normalization, the index) and come back from ``/dpp/protocols/{uid}/file``
exactly as the remote archive sent it.
"""

from __future__ import annotations

import io
import json

import pydicom
import pytest

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.dicom.modalities import parse_modalities
from tests.bare_archive import BareArchive
from tests.fake_orthanc_module import VERSIONS, FakeOrthancModule, started_plugin

pytestmark = pytest.mark.usefixtures("restore_loggers")  # install() takes over the loggers

JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=VERSIONS)
def running(request, make_configuration):
    orthanc = FakeOrthancModule(make_configuration(), version=request.param)
    with started_plugin(orthanc) as plugin:
        yield orthanc, plugin


def test_find_and_c_get_from_another_archive_store_like_a_c_store(running) -> None:
    orthanc, plugin = running
    held = [make_protocol(seed, "CT", charset="") for seed in (21, 22)]
    with BareArchive(held) as archive:
        plugin.app.modalities.replace(parse_modalities({"site-b": archive.modality()}))
        found = orthanc.call_route(
            "/dpp/modalities/site-b/find",
            "POST",
            body=json.dumps({"ProtocolName": ""}).encode(),
            headers=JSON,
        )
        assert found.status == 200, found.body
        uids = [answer["00080018"]["Value"][0] for answer in found.json()["Answers"]]
        assert sorted(uids) == sorted(str(ds.SOPInstanceUID) for ds in held)
        assert archive.callers == ["DPP_UNIT"]  # the plugin's own AE title
        body = json.dumps({"SOPInstanceUIDs": uids}).encode()
        got = orthanc.call_route("/dpp/modalities/site-b/retrieve", "POST", body=body, headers=JSON)
    assert got.status == 200, got.body
    assert got.json()["StoredHere"] == 2
    for ds in held:
        entry = plugin.app.index.get(ds.SOPInstanceUID)
        assert entry is not None
        kept = pydicom.dcmread(io.BytesIO(orthanc.api.files[entry.orthanc_id]))
        assert kept.PatientID == "DPP-PROTOCOL-LIBRARY"  # normalized as a C-STORE would be
        back = orthanc.call_route(f"/dpp/protocols/{ds.SOPInstanceUID}/file")
        assert back.status == 200
        assert pydicom.dcmread(io.BytesIO(back.body)) == pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def test_errors_of_the_remote_routes_are_json(running) -> None:
    orthanc, _ = running
    unknown = orthanc.call_route("/dpp/modalities/nowhere/find", "POST", body=b"{}", headers=JSON)
    assert unknown.status == 404
    assert unknown.headers["Content-Type"] == "application/json"
    assert unknown.json()["Error"] == "no modality 'nowhere' in Orthanc's modality list"
    assert orthanc.call_route("/dpp/jobs/x").status == 404
    assert orthanc.call_route("/dpp/jobs").json() == []
    assert orthanc.call_route("/dpp/modalities/x/retrieve", "GET").allowed == "POST"


def concrete(pattern: str) -> str:
    """A URI the route ``pattern`` serves (each top-level group filled with "x")."""
    uri, depth = "", 0
    for character in pattern:
        if character == "(":
            depth += 1
            if depth == 1:
                uri += "x"
        elif character == ")":
            depth -= 1
        elif depth == 0:
            uri += character
    assert depth == 0 and "\\" not in uri, f"{pattern} is not a plain URI with groups"
    return uri


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_every_route_refuses_changes_a_browser_marks_as_from_another_site(
    running, method: str
) -> None:
    orthanc, plugin = running
    before = len(plugin.app.index)
    for route in plugin.routes():
        uri = concrete(route.uri)
        for browser in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "http://attacker.example", "Host": "127.0.0.1:8042"},
        ):
            answer = orthanc.call_route(uri, method, body=b"{}", headers={**JSON, **browser})
            assert answer.status == 403, (uri, method, browser, answer.body)
            assert "another web site" in answer.json()["Error"]
    assert len(plugin.app.index) == before


def test_routes_that_read_a_body_refuse_other_types(running) -> None:
    orthanc, plugin = running
    for pattern, types in [(r.uri, r.body_types) for r in plugin.routes() if r.body_types]:
        for given in ({"Content-Type": "text/plain"}, {}):
            answer = orthanc.call_route(concrete(pattern), "POST", body=b"{}", headers=given)
            assert answer.status == 415, (pattern, given, answer.body)
            assert " or ".join(types) in answer.json()["Error"]
    # Reading routes are not concerned: a browser may read what Orthanc lets it.
    assert orthanc.call_route("/dpp/jobs", headers={"Sec-Fetch-Site": "cross-site"}).status == 200
