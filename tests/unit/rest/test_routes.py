"""The ``/dpp`` route table: each route's methods, body types and 405 text, in order."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from orthanc_dpp.dicom.modalities import ModalityRegistry
from orthanc_dpp.dicom.outbound import Calling
from orthanc_dpp.dicom.scu.jobs import Jobs
from orthanc_dpp.orthanc import adapter
from orthanc_dpp.rest.activity import ActivityLog
from orthanc_dpp.rest.archives import RemoteArchives
from orthanc_dpp.rest.http import Request, Response
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.rest.routes import LIBRARY_PAGE, SEGMENT, Route, dpp_routes, invalid_configuration
from tests.fake_orthanc import rest_api
from tests.fake_orthanc_module import FakeOrthancModule

#: Every method a client may send; Orthanc hands each to the route.
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
UPLOAD = ("application/dicom", "multipart/related", "application/zip")
JSON_BODY = ("application/json",)


@pytest.fixture
def owners() -> tuple[DppRestApi, RemoteArchives]:
    rest, _, _ = rest_api()
    remote = RemoteArchives(
        Calling("DPP_ROUTES"), ModalityRegistry(), print, lambda uid: False, Jobs()
    )
    return rest, remote


def test_the_table_names_each_methods_handler_in_registration_order(owners) -> None:
    api, remote = owners
    table = [(r.uri, dict(r.methods), r.body_types, r.allowed) for r in dpp_routes(api, remote)]
    assert table == [
        ("/dpp/status", {"GET": api.status}, (), "GET"),
        ("/dpp/protocols", {"GET": api.protocols, "POST": api.upload}, UPLOAD, "GET,POST"),
        (
            f"/dpp/protocols/{SEGMENT}",
            {"GET": api.protocol, "DELETE": api.delete_protocol},
            (),
            "GET,DELETE",
        ),
        (f"/dpp/protocols/{SEGMENT}/file", {"GET": api.protocol_file}, (), "GET"),
        (f"/dpp/protocols/{SEGMENT}/tree", {"GET": api.protocol_tree}, (), "GET"),
        (f"/dpp/protocols/{SEGMENT}/approvals", {"POST": api.approve}, JSON_BODY, "POST"),
        (
            f"/dpp/protocols/{SEGMENT}/diff/{SEGMENT}",
            {"GET": api.protocol_diff},
            (),
            "GET",
        ),
        (f"/dpp/protocols/{SEGMENT}/versions", {"GET": api.protocol_versions}, (), "GET"),
        ("/dpp/export", {"GET": api.export}, (), "GET"),
        ("/dpp/activity", {"GET": api.recent_activity}, (), "GET"),
        (LIBRARY_PAGE, {"GET": api.library_page}, (), "GET"),
        (f"/dpp/modalities/{SEGMENT}/find", {"POST": remote.find}, JSON_BODY, "POST"),
        (f"/dpp/modalities/{SEGMENT}/retrieve", {"POST": remote.retrieve}, JSON_BODY, "POST"),
        (f"/dpp/modalities/{SEGMENT}/store", {"POST": remote.store_to}, JSON_BODY, "POST"),
        ("/dpp/jobs", {"GET": remote.jobs_list}, (), "GET"),
        (f"/dpp/jobs/{SEGMENT}", {"GET": remote.job}, (), "GET"),
        (f"/dpp/jobs/{SEGMENT}/cancel", {"POST": remote.job_cancel}, (), "POST"),
    ]


def test_the_library_page_takes_any_file_name_even_an_empty_one() -> None:
    page = re.compile(LIBRARY_PAGE.encode())
    assert page.fullmatch(b"/dpp/ui/") and page.fullmatch("/dpp/ui/Schädel.js".encode())
    assert not page.fullmatch(b"/dpp/ui/a/b") and not page.fullmatch(b"/dpp/ui/\xff")


def test_every_method_not_served_is_405_with_the_methods_served(owners) -> None:
    for route in dpp_routes(*owners):
        groups = ["x"] * re.compile(route.uri).groups
        for method in set(METHODS) - set(route.methods):
            answer = route.answer(Request(method), *groups)
            assert (answer.status, answer.body, answer.allowed) == (405, b"", route.allowed)


def test_a_served_method_calls_its_handler_with_the_groups() -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []

    def handler(name: str) -> Callable[..., Response]:
        def handle(request: Request, *groups: str) -> Response:
            calls.append((name, groups))
            return Response(200, name.encode())

        return handle

    route = Route("/x/([^/]+)", {"GET": handler("get"), "DELETE": handler("delete")})
    assert route.answer(Request("DELETE"), "a").body == b"delete"
    assert route.answer(Request("GET"), "b").body == b"get"
    assert calls == [("delete", ("a",)), ("get", ("b",))]
    fallback = Route("/y", {}, fallback=handler("any"))
    assert fallback.answer(Request("PUT")).body == b"any"


def test_only_post_reads_a_body() -> None:
    route = Route("/x", {}, JSON_BODY)
    assert route.accepted("POST") == JSON_BODY
    assert [route.accepted(m) for m in METHODS if m != "POST"] == [()] * 5


def test_an_invalid_configuration_keeps_every_uri_and_body_type(owners) -> None:
    errors = ["DefinedProcedureProtocol.Port: not a number"]
    invalid = invalid_configuration(errors, ActivityLog(), lambda: {"Valid": False})
    assert [(r.uri, r.body_types) for r in invalid] == [
        (r.uri, r.body_types) for r in dpp_routes(*owners)
    ]
    shown = ("/dpp/status", "/dpp/activity", "/dpp/ui/")
    for route in invalid:
        groups = ["x"] * re.compile(route.uri).groups
        if route.uri.startswith(shown):
            continue
        for method in METHODS:
            answer = route.answer(Request(method), *groups)
            assert answer.status == 503, (route.uri, method)
            assert json.loads(answer.body) == {
                "Error": "DPP plugin configuration is invalid",
                "HttpStatus": 503,
                "Errors": errors,
            }


def test_an_invalid_configuration_still_shows_status_activity_and_page() -> None:
    invalid = invalid_configuration([], ActivityLog(), lambda: {"Valid": False})
    route = {r.uri: r for r in invalid}
    status, activity, page = route["/dpp/status"], route["/dpp/activity"], route[LIBRARY_PAGE]
    for method in METHODS:  # the status answers every method, as it always did
        answer = status.answer(Request(method))
        assert (answer.status, json.loads(answer.body)) == (200, {"Valid": False})
    assert activity.answer(Request("GET")).status == 200
    assert page.answer(Request("GET"), "library.js").status == 200
    assert activity.answer(Request("POST")).allowed == "GET"
    assert page.answer(Request("POST"), "").allowed == "GET"


@pytest.mark.usefixtures("restore_loggers")
def test_the_adapter_registers_the_table_in_its_order(make_configuration) -> None:
    orthanc = FakeOrthancModule(make_configuration())
    plugin = adapter.install(orthanc)
    assert list(orthanc.routes) == [r.uri for r in plugin.routes()]
    bad = FakeOrthancModule(make_configuration(Port="eleven"))
    adapter.install(bad)
    assert list(bad.routes) == list(orthanc.routes)
