"""Cross-site requests: another web site cannot change the library through a visitor's browser.

A page on any other site can make a browser send "simple" requests (POST
with ``text/plain``, ``application/x-www-form-urlencoded`` or
``multipart/form-data``, no preflight) to Orthanc, with the visitor's
credentials. Here: requests carrying the headers browsers add
(``Sec-Fetch-Site``, ``Origin``) or the body types they can send freely are
refused on every route that changes something, scripts and the library page
keep working; then real headless Chromium opens a page of another origin that
tries uploads, a delete, a find and a retrieve, with and without Orthanc's
authentication, and the library is unchanged afterwards.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dpp_tools.samples import make_protocol, to_bytes
from tests.bare_archive import BareArchive
from tests.orthanc_server import OrthancServer, free_port
from tests.waiting import eventually

#: The protocols the module's Orthanc holds, and one only the other archive holds.
HELD_UIDS = ("2.25.7700001", "2.25.7700002")
REMOTE_UID = "2.25.7700009"
#: A protocol nobody holds: what the attacks try to upload.
FOREIGN_UID = "2.25.7700005"


def protocol(seed: int, uid: str) -> pydicom.Dataset:
    ds = make_protocol(seed, "CT")
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds


@pytest.fixture(scope="module")
def archive() -> Iterator[BareArchive]:
    """Another DPP archive in Orthanc's modality list: what a find or retrieve would reach."""
    with BareArchive([protocol(9, REMOTE_UID)], ae_title="OTHER_DPP") as other:
        yield other


def started(folder: Path, archive: BareArchive, **config: Any) -> OrthancServer:
    orthanc = OrthancServer(folder, config=config)
    orthanc.config["DicomModalities"]["other"] = archive.modality()
    orthanc.start()
    for seed, uid in enumerate(HELD_UIDS, start=1):
        assert orthanc.post("/dpp/protocols", to_bytes(protocol(seed, uid)))["Stored"] == 1
    return orthanc


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, archive: BareArchive
) -> Iterator[OrthancServer]:
    orthanc = started(tmp_path_factory.mktemp("orthanc"), archive)
    yield orthanc
    orthanc.stop()


def send(
    server: OrthancServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with exactly these headers (and Host), as curl would send it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request(method, path, body, headers or {})
        answer = connection.getresponse()
        data = answer.read()
    finally:
        connection.close()
    return answer.status, json.loads(data) if data else None


def listed(server: OrthancServer) -> list[str]:
    return [p["SOPInstanceUID"] for p in server.get_json("/dpp/protocols?limit=1000")["Protocols"]]


UPLOAD = to_bytes(protocol(5, FOREIGN_UID))
JSON = {"Content-Type": "application/json"}
#: Every route that changes something, with a body of the type it reads.
MUTATING = [
    ("POST", "/dpp/protocols", UPLOAD, {"Content-Type": "application/dicom"}),
    ("DELETE", f"/dpp/protocols/{HELD_UIDS[0]}", None, {}),
    ("POST", "/dpp/modalities/other/find", b'{"ProtocolName": "*"}', JSON),
    (
        "POST",
        "/dpp/modalities/other/retrieve",
        b'{"SOPInstanceUIDs": ["%s"]}' % REMOTE_UID.encode(),
        JSON,
    ),
    ("POST", "/dpp/jobs/no-such-job/cancel", None, {}),
]
#: What browsers say about a request another site's page makes.
FOREIGN = {
    "cross-site": {"Sec-Fetch-Site": "cross-site", "Origin": "http://attacker.example"},
    "same-site": {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"},
    "foreign Origin only": {"Origin": "http://attacker.example"},
    "Origin of another port": {"Origin": "http://127.0.0.1:1"},
    "Origin null": {"Origin": "null"},
}


@pytest.mark.parametrize("browser", FOREIGN, ids=list(FOREIGN))
@pytest.mark.parametrize(
    ("method", "path", "body", "headers"), MUTATING, ids=[f"{m} {p}" for m, p, *_ in MUTATING]
)
def test_requests_a_browser_marks_as_foreign_are_refused_with_403(
    server: OrthancServer,
    archive: BareArchive,
    browser: str,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> None:
    before = listed(server)
    status, answer = send(server, method, path, body, {**headers, **FOREIGN[browser]})
    assert status == 403, answer
    assert answer["HttpStatus"] == 403
    assert "another web site" in answer["Error"], answer
    assert listed(server) == before
    assert archive.identifiers == []  # no find or retrieve reached the other archive
    assert server.wait_for_log(f"Refused {method} {path}")


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/dpp/protocols", "text/plain", UPLOAD),
        ("/dpp/protocols", "application/x-www-form-urlencoded", UPLOAD),
        ("/dpp/protocols", "application/json", UPLOAD),
        ("/dpp/protocols", None, UPLOAD),
        ("/dpp/modalities/other/find", "text/plain", b"{}"),
        ("/dpp/modalities/other/find", "application/x-www-form-urlencoded", b"{}"),
        ("/dpp/modalities/other/retrieve", "text/plain", b'{"SOPInstanceUIDs": ["2.25.1"]}'),
        ("/dpp/modalities/other/retrieve", "application/dicom", b'{"SOPInstanceUIDs": ["2.25.1"]}'),
    ],
)
def test_bodies_of_a_type_the_route_does_not_read_are_refused_with_415(
    server: OrthancServer, archive: BareArchive, path: str, content_type: str | None, body: bytes
) -> None:
    before = listed(server)
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, answer = send(server, "POST", path, body, headers)
    assert status == 415, answer
    assert answer["HttpStatus"] == 415
    wanted = "application/json" if "/modalities/" in path else "application/dicom"
    assert wanted in answer["Error"], answer
    assert listed(server) == before
    assert archive.identifiers == []


def form_data(data: bytes, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = "dpp-test-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="p.dcm"\r\n'
            f"Content-Type: {part_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_form_data_uploads_store_nothing(server: OrthancServer) -> None:
    """Orthanc takes multipart/form-data apart itself and hands the plugin each part with
    the part's headers only: no Origin, no Sec-Fetch-Site. A browser sends such a body to
    any site without asking, so no part of one is stored, whoever sent it."""
    before = listed(server)
    for headers in ({}, FOREIGN["cross-site"]):
        body, content_type = form_data(UPLOAD)
        answer = send(
            server, "POST", "/dpp/protocols", body, {"Content-Type": content_type, **headers}
        )
        assert answer == (200, None)  # Orthanc's own answer to a form, whatever the plugin said
    assert listed(server) == before
    assert server.wait_for_log("Refused POST /dpp/protocols: a part of a multipart/form-data")


def test_scripts_and_same_origin_pages_keep_working(
    server: OrthancServer, archive: BareArchive
) -> None:
    own = f"http://127.0.0.1:{server.http_port}"
    ways = [
        {},  # curl, scripts, other programs: no browser headers
        {"Sec-Fetch-Site": "same-origin", "Origin": own},  # the library page
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": own},  # a browser without Sec-Fetch-Site
        {"Origin": own.upper()},  # host names are not case-sensitive
        # Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site decides.
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://pacs.example"},
    ]
    uid = FOREIGN_UID
    for number, headers in enumerate(ways):
        typed = {"Content-Type": "application/dicom", **headers}
        status, answer = send(server, "POST", "/dpp/protocols", UPLOAD, typed)
        assert (status, answer["Stored"]) == (200, 1), (headers, answer)
        status, answer = send(server, "DELETE", f"/dpp/protocols/{uid}", None, headers)
        assert (status, answer["Deleted"]) == (200, uid), (headers, answer)
        find = {"Content-Type": "application/json; charset=utf-8", **headers}
        status, answer = send(server, "POST", "/dpp/modalities/other/find", b"{}", find)
        assert (status, answer["Count"]) == (200, 1), (headers, answer)
        status, answer = send(server, "POST", "/dpp/jobs/no-such-job/cancel", None, headers)
        assert status == 404, (headers, answer)  # reached the route
        assert len(archive.identifiers) == number + 1
    status, answer = send(server, "POST", "/dpp/modalities/other/find", None, {})
    assert status == 200, answer  # find's body is optional: no body, no type needed
    multipart = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + UPLOAD + b"\r\n--b--\r\n"
    related = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    status, answer = send(server, "POST", "/dpp/protocols", multipart, related)
    assert (status, answer["Stored"]) == (200, 1), answer
    assert send(server, "DELETE", f"/dpp/protocols/{uid}")[0] == 200
    archive.identifiers.clear()


# -- a real browser on a page of another origin -------------------------------------------

WAIT_MS = 60_000

#: The attacker's page: every request a page may send to another site without asking,
#: then a real form POST (multipart/form-data with a file) into a hidden frame.
ATTACK_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Nothing to see</title></head><body>
<iframe name="sink" id="sink"></iframe>
<form id="upload-form" method="post" enctype="multipart/form-data" target="sink">
  <input type="file" name="file" id="file">
</form>
<form id="top-form" method="post" enctype="multipart/form-data">
  <input type="file" name="file" id="top-file">
</form>
<form id="urlencoded-form" method="post" target="sink">
  <input type="hidden" name="file" value="DICM">
</form>
<script>
const orthanc = __ORTHANC__;
const data = Uint8Array.from(atob(__UPLOAD__), c => c.charCodeAt(0));
const retrieve = JSON.stringify({SOPInstanceUIDs: [__REMOTE_UID__]});
const quiet = {mode: 'no-cors', credentials: 'include'};
function post(path, type, body) {
  return fetch(orthanc + path, {...quiet, method: 'POST', headers: {'Content-Type': type}, body});
}
function formData() {
  const form = new FormData();
  form.append('file', new Blob([data], {type: 'application/dicom'}), 'p.dcm');
  return fetch(orthanc + '/dpp/protocols', {...quiet, method: 'POST', body: form});
}
function submitted(form, path) {
  return new Promise(resolve => {
    const sink = document.getElementById('sink');
    sink.addEventListener('load', () => resolve('loaded'), {once: true});
    form.action = orthanc + path;
    form.submit();
  });
}
const attempts = {
  'upload text/plain': () => post('/dpp/protocols', 'text/plain', data),
  'upload form-urlencoded': () => post('/dpp/protocols', 'application/x-www-form-urlencoded', data),
  'upload multipart/form-data': formData,
  'delete': () => fetch(orthanc + '/dpp/protocols/' + __VICTIM__,
                        {method: 'DELETE', credentials: 'include'}),
  'find': () => post('/dpp/modalities/other/find', 'text/plain', '{}'),
  'retrieve': () => post('/dpp/modalities/other/retrieve', 'text/plain', retrieve),
  'retrieve form-urlencoded': () =>
      post('/dpp/modalities/other/retrieve', 'application/x-www-form-urlencoded', retrieve),
  'form upload': () => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([data], 'p.dcm', {type: 'application/dicom'}));
    document.getElementById('file').files = transfer.files;
    return submitted(document.getElementById('upload-form'), '/dpp/protocols');
  },
  'form urlencoded upload': () =>
      submitted(document.getElementById('urlencoded-form'), '/dpp/protocols'),
};
/* Last, by the test: a form POST that navigates the whole tab to Orthanc. */
window.topUpload = () => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([data], 'p.dcm', {type: 'application/dicom'}));
  const form = document.getElementById('top-form');
  document.getElementById('top-file').files = transfer.files;
  form.action = orthanc + '/dpp/protocols';
  form.submit();
};
window.outcomes = {};
(async () => {
  for (const [name, attempt] of Object.entries(attempts)) {
    try {
      const answer = await attempt();
      window.outcomes[name] = typeof answer === 'string' ? answer : answer.type;
    } catch (error) {
      window.outcomes[name] = 'failed: ' + error;
    }
  }
  window.attemptsDone = true;
})();
</script></body></html>
"""


class AttackerSite:
    """A small web site on its own port: the page of another origin."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> AttackerSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def attack_page(orthanc: OrthancServer) -> str:
    values = {
        "__ORTHANC__": json.dumps(orthanc.url),
        "__UPLOAD__": json.dumps(base64.b64encode(UPLOAD).decode()),
        "__REMOTE_UID__": json.dumps(REMOTE_UID),
        "__VICTIM__": json.dumps(HELD_UIDS[0]),
    }
    page = ATTACK_PAGE
    for name, value in values.items():
        page = page.replace(name, value)
    return page


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from tests.browser import CHROMIUM, CHROMIUM_ARGS, playwright_api

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def attack(
    chromium: Any, orthanc: OrthancServer, page_host: str, login: str = ""
) -> dict[str, str]:
    """Open Orthanc's library page (``login``: "user:password@" to log in), then the
    attacker's page; what the attacker's page saw of each attempt."""
    from playwright.sync_api import expect

    browser_context = chromium.new_context()
    try:
        tab = browser_context.new_page()
        tab.set_default_timeout(WAIT_MS)
        if login:  # the browser keeps the credentials for Orthanc's later requests
            tab.goto(f"http://{login}{orthanc.url.removeprefix('http://')}/dpp/status")
        tab.goto(f"{orthanc.url}/dpp/ui/index.html")
        expect(tab.locator("#listener-state-value")).to_have_text("running")
        with AttackerSite(attack_page(orthanc)) as site:
            tab.goto(f"http://{page_host}:{site.port}/")
            tab.wait_for_function("window.attemptsDone === true", timeout=WAIT_MS)
            outcomes: dict[str, str] = tab.evaluate("window.outcomes")
            with tab.expect_navigation(url=f"{orthanc.url}/dpp/protocols"):
                tab.evaluate("window.topUpload()")
            outcomes["top-level form upload"] = "navigated"
    finally:
        browser_context.close()
    return outcomes


def assert_nothing_changed(
    orthanc: OrthancServer,
    archive: BareArchive,
    before: list[str],
    outcomes: dict[str, str],
    refusals: tuple[str, ...],
) -> None:
    # A stray store would show at once (retrieves here are synchronous); waited for anyway.
    assert not eventually(lambda: listed(orthanc) != before, 2.0), (listed(orthanc), outcomes)
    assert archive.identifiers == [], "a find or retrieve reached the other archive"
    # The attempts reached the plugin (not stopped by the browser alone): it refused them.
    for refusal in refusals:
        assert orthanc.wait_for_log(refusal), (refusal, outcomes)


@pytest.mark.parametrize(
    "page_host",
    ["localhost", "127.0.0.1"],
    ids=["cross-site page (localhost)", "same-site page (127.0.0.1, another port)"],
)
def test_a_page_of_another_origin_changes_nothing(
    chromium: Any, server: OrthancServer, archive: BareArchive, page_host: str
) -> None:
    before = listed(server)
    outcomes = attack(chromium, server, page_host)
    assert len(outcomes) == 10, outcomes
    refusals = (
        "Refused POST /dpp/protocols: a page of another web site",
        "Refused POST /dpp/modalities/other/find: a page of another web site",
        "Refused POST /dpp/modalities/other/retrieve: a page of another web site",
        "Refused POST /dpp/protocols: a part of a multipart/form-data body",
    )
    assert_nothing_changed(server, archive, before, outcomes, refusals)


def test_a_page_of_another_site_changes_nothing_for_a_logged_in_visitor(
    chromium: Any, archive: BareArchive, tmp_path: Path
) -> None:
    orthanc = started(
        tmp_path / "orthanc",
        archive,
        AuthenticationEnabled=True,
        RegisteredUsers={"alice": "wonderland"},
    )
    try:
        before = listed(orthanc)
        outcomes = attack(
            chromium,
            orthanc,
            "localhost",
            login="alice:wonderland@",
        )
        assert len(outcomes) == 10, outcomes
        # Chromium sends the credentials it keeps only with the top-level form POST: the
        # others get Orthanc's 401 before the plugin sees them.
        refusals = ("Refused POST /dpp/protocols: a part of a multipart/form-data body",)
        assert_nothing_changed(orthanc, archive, before, outcomes, refusals)
    finally:
        orthanc.stop()
