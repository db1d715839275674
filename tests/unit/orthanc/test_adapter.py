"""The adapter against fakes of each recorded Python plugin (4.0, 5.0, 7.1)."""

from __future__ import annotations

import io
import re
import socket
import sys
import threading
from typing import Any

import pydicom
import pynetdicom
import pytest
from pydicom import Dataset

from dpp_tools.samples import make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.orthanc import adapter, logs, platform, ports
from orthanc_dpp.rest import protocols as rest
from orthanc_dpp.rest import routes
from orthanc_dpp.rest.activity import ActivityLog
from orthanc_dpp.storage.approved_content import METADATA
from tests import dicom_client
from tests.fake_orthanc_module import (
    VERSIONS,
    FakeOrthancModule,
    FakeOutput,
    recording,
    started_plugin,
)
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("restore_loggers")  # install() takes over the loggers

#: Every route's URI expression (the table of an invalid configuration has the same ones,
#: test_routes checks it, and needs no running plugin).
ROUTE_URIS = [r.uri for r in routes.invalid_configuration([], ActivityLog(), dict)]


@pytest.fixture
def running(version, make_configuration):
    orthanc = FakeOrthancModule(
        make_configuration(), version=version, releases_interpreter_lock=True
    )
    with started_plugin(orthanc) as plugin:
        yield orthanc, plugin


def test_bad_configuration_keeps_orthanc_up_and_is_reported(version, make_configuration) -> None:
    orthanc = FakeOrthancModule(make_configuration(Port="eleven", AETitle=""), version=version)
    plugin = adapter.install(orthanc)
    assert plugin.app is None
    log = orthanc.log_text()
    assert (
        "DPP: Configuration error, DPP listener not started: DefinedProcedureProtocol.Port" in log
    )
    assert "DefinedProcedureProtocol.AETitle" in log
    status = orthanc.call_route("/dpp/status").json()
    assert status["Configuration"]["Valid"] is False
    assert len(status["Configuration"]["Errors"]) == 2
    assert status["Listener"]["State"] == "stopped"
    listing = orthanc.call_route("/dpp/protocols")
    assert listing.status == 503
    assert listing.json()["Error"] == "DPP plugin configuration is invalid"
    # The library page still loads, to show the errors, with the activity that logged them.
    assert orthanc.call_route("/dpp/ui/library.js").status == 200
    events = orthanc.call_route("/dpp/activity").json()["Events"]
    assert any("DefinedProcedureProtocol.Port" in e["Message"] for e in events)
    orthanc.change_callback(orthanc.ChangeType.ORTHANC_STARTED, orthanc.ResourceType.PATIENT, "")
    assert plugin.app is None


def test_started_listener_answers_echo_and_stops(running) -> None:
    orthanc, plugin = running
    assert dicom_client.echo(plugin.app.settings.port, "DPP_UNIT", calling_aet="UNIT_SCU") == 0
    status = orthanc.call_route("/dpp/status").json()
    assert status["Listener"]["State"] == "running"
    assert status["Index"]["Ready"] is True
    orthanc.change_callback(orthanc.ChangeType.ORTHANC_STOPPED, orthanc.ResourceType.PATIENT, "")
    assert plugin.app.listener.status.state == "stopped"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", plugin.app.settings.port)) != 0


def test_port_in_use_is_reported_and_orthanc_continues(version, make_configuration) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        orthanc = FakeOrthancModule(make_configuration(Port=port), version=version)
        plugin = adapter.install(orthanc)
        orthanc.change_callback(
            orthanc.ChangeType.ORTHANC_STARTED, orthanc.ResourceType.PATIENT, ""
        )
        assert eventually(lambda: plugin.app.listener.status.state == "failed")
        status = orthanc.call_route("/dpp/status").json()
        assert status["Listener"]["Error"].startswith(f"cannot listen on 127.0.0.1:{port}")
        assert "DPP: DPP listener not started: cannot listen on" in orthanc.log_text()
        plugin.stop()


def test_received_instance_hook_normalizes_only_dpp(running) -> None:
    orthanc, _ = running
    actions = orthanc.ReceivedInstanceAction
    action, data = orthanc.received_callback(to_bytes(make_protocol(3, "CT")), None)
    assert action == actions.MODIFY
    assert pydicom.dcmread(io.BytesIO(data)).PatientID == "DPP-PROTOCOL-LIBRARY"
    assert orthanc.received_callback(to_bytes(make_non_dpp(1)), None) == (actions.KEEP_AS_IS, None)


def test_received_instance_hook_leaves_the_plugins_own_stores_unread(running, monkeypatch) -> None:
    orthanc, _ = running
    actions = orthanc.ReceivedInstanceAction
    read: list[bytes] = []
    real = adapter.normalize_received
    monkeypatch.setattr(
        adapter, "normalize_received", lambda data, *rest: read.append(data) or real(data, *rest)
    )
    ours = orthanc.call_route(
        "/dpp/protocols",
        "POST",
        headers={"Content-Type": "application/dicom"},
        body=to_bytes(make_protocol(12, "CT")),
    )
    assert ours.status == 200
    assert orthanc.received_actions == [actions.KEEP_AS_IS]
    assert read == []  # normalized by the upload already: the hook does not read it again
    # A file stored by Orthanc's own route (another thread, not the library) is read.
    theirs = to_bytes(make_protocol(13, "CT"))
    orthanc.RestApiPost("/instances", theirs)
    assert read == [theirs]
    assert orthanc.received_actions[-1] == actions.MODIFY


def test_uploads_and_deletions_reach_the_index(running) -> None:
    orthanc, plugin = running
    ds = make_protocol(11, "XA")
    stored = orthanc.call_route(
        "/dpp/protocols",
        "POST",
        headers={"Content-Type": "application/dicom"},
        body=to_bytes(ds),
    )
    assert stored.status == 200
    orthanc_id = stored.json()["Files"][0]["OrthancID"]
    assert plugin.app.index.get(ds.SOPInstanceUID).orthanc_id == orthanc_id
    # Deleted through Orthanc itself: the DELETED callback has the worker drop it.
    orthanc.api.delete(f"/instances/{orthanc_id}")
    orthanc.change_callback(orthanc.ChangeType.DELETED, orthanc.ResourceType.INSTANCE, orthanc_id)
    assert eventually(lambda: plugin.app.index.get(ds.SOPInstanceUID) is None)
    missing = orthanc.call_route(f"/dpp/protocols/{ds.SOPInstanceUID}")
    assert missing.status == 404
    assert missing.headers["Content-Type"] == "application/json"


def upload(orthanc: FakeOrthancModule, ds: Dataset) -> Any:
    answer = orthanc.call_route(
        "/dpp/protocols", "POST", headers={"Content-Type": "application/dicom"}, body=to_bytes(ds)
    )
    assert answer.status == 200, answer.body
    return answer.json()["Files"][0]


def test_a_stored_approval_records_the_content_it_approves(running) -> None:
    orthanc, _ = running
    protocol = make_protocol(14, "CT")
    upload(orthanc, protocol)
    approval = make_protocol(15, "APPROVAL")
    approval.ApprovalSubjectSequence[0].ReferencedSOPInstanceUID = protocol.SOPInstanceUID
    item = approval.ApprovalSequence[0]
    item.AssertionCodeSequence[0].CodeValue = "128603"
    item.AssertionExpirationDateTime = ""
    approval_id = upload(orthanc, approval)["OrthancID"]
    assert (approval_id, str(METADATA)) in orthanc.api.metadata  # through RestApiPut
    shown = orthanc.call_route(f"/dpp/protocols/{protocol.SOPInstanceUID}").json()
    assert [a["AppliesToStoredContent"] for a in shown["Approvals"]] == [True]
    assert shown["Approved"] is True


def test_an_approval_posted_is_made_by_the_app_bound_and_decides_the_state(running) -> None:
    orthanc, plugin = running
    protocol = make_protocol(16, "CT")
    upload(orthanc, protocol)
    answer = orthanc.call_route(
        f"/dpp/protocols/{protocol.SOPInstanceUID}/approvals",
        "POST",
        headers={"Content-Type": "application/json"},
        body=b'{"Assertion": "approved"}',
    )
    assert answer.status == 201, answer.body
    created = plugin.app.index.get(answer.json()["SOPInstanceUID"])
    assert (created.orthanc_id, str(METADATA)) in orthanc.api.metadata  # bound, as a C-STORE
    stored = pydicom.dcmread(io.BytesIO(orthanc.api.files[created.orthanc_id]))
    device = stored.ApprovalSequence[0].AsserterIdentificationSequence[0]
    assert device.StationAETitle == plugin.app.settings.ae_title  # no user: the plugin
    shown = orthanc.call_route(f"/dpp/protocols/{protocol.SOPInstanceUID}").json()
    assert shown["ApprovalState"] == "approved"
    refused = orthanc.call_route(
        f"/dpp/protocols/{protocol.SOPInstanceUID}/approvals",
        "POST",
        headers={"Content-Type": "text/plain"},
        body=b'{"Assertion": "approved"}',
    )
    assert refused.status == 415  # csrf: the route reads JSON only


def test_a_failing_route_answers_500_json(running, monkeypatch) -> None:
    orthanc, _ = running

    def explode(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(rest, "search", explode)  # what GET /dpp/protocols calls
    answer = orthanc.call_route("/dpp/protocols")
    assert answer.status == 500
    assert answer.json()["Error"] == (
        "internal error in the DPP plugin; Orthanc's log has the details"
    )
    assert "boom" not in answer.body.decode()
    assert "REST /dpp/protocols failed" in orthanc.log_text()


@pytest.mark.parametrize(
    "segment",
    [b"\xff", b"\xc3", b"a\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"],
)
def test_route_segments_that_are_not_utf8_match_no_route(segment: bytes) -> None:
    # The Python plugin cannot make a str of them: it would answer 500 itself.
    for uri in (b"/dpp/protocols/" + segment, b"/dpp/jobs/" + segment + b"/cancel"):
        assert not any(re.fullmatch(route.encode(), uri) for route in ROUTE_URIS), uri


@pytest.mark.parametrize("segment", ["1.2.840.10008", "Schädel", "日本", "\U0001f600", "a b%~"])
def test_route_segments_in_utf8_match_their_route(segment: str) -> None:
    uri = f"/dpp/protocols/{segment}/tree".encode()
    matched = [r for r in ROUTE_URIS if re.fullmatch(r.encode(), uri)]
    assert matched == [f"/dpp/protocols/{routes.SEGMENT}/tree"]
    assert re.fullmatch(matched[0].encode(), uri).group(1).decode() == segment  # type: ignore[union-attr]


def test_only_one_change_callback_is_registered(version, make_configuration) -> None:
    orthanc = FakeOrthancModule(make_configuration(), version=version)
    adapter.install(orthanc)  # a second registration would raise (docs/design.md, fact 12)
    assert orthanc.change_callback is not None


# -- differences between plugin versions ------------------------------------------


def test_error_answers_use_the_send_http_status_form_of_the_plugin(running, version) -> None:
    orthanc, _plugin = running
    missing = orthanc.call_route("/dpp/protocols/1.2.3.4")
    assert missing.status == 404
    assert missing.json()["Error"]
    platform = orthanc.call_route("/dpp/status").json()["Platform"]
    expected = "status, body (str), size" if version == "4.0" else "status, body (bytes)"
    assert platform["SendHttpStatus"] == expected
    # The same answer again uses the remembered form at once.
    assert orthanc.call_route("/dpp/protocols/1.2.3.5").status == 404


def test_status_reports_the_versions_of_everything(running, version) -> None:
    orthanc, plugin = running
    assert eventually(lambda: plugin.running.plugin_version is not None)
    platform = orthanc.call_route("/dpp/status").json()["Platform"]
    recorded = recording(version)
    assert platform["Orthanc"] == recorded["system"]["Version"]
    assert platform["PythonPlugin"] == version
    assert platform["Python"] == sys.version.split()[0]
    assert platform["pydicom"] == pydicom.__version__
    assert platform["pynetdicom"] == pynetdicom.__version__
    assert platform["InterpreterLockReleasedInCalls"] is True
    assert platform["ReceivedInstanceHook"] is True


@pytest.mark.parametrize("releases", [True, False])
def test_interpreter_lock_probe_tells_the_two_behaviours_apart(version, releases) -> None:
    orthanc = FakeOrthancModule({}, version=version, releases_interpreter_lock=releases)
    assert platform.probe_interpreter_lock(orthanc) is releases


@pytest.mark.parametrize(
    ("releases", "setting", "installed"),
    [
        (True, "auto", True),
        (False, "auto", False),
        (True, False, False),
        (False, True, True),
    ],
)
def test_received_instance_hook_only_where_it_cannot_deadlock(
    version, releases, setting, installed, make_configuration
) -> None:
    orthanc = FakeOrthancModule(
        make_configuration(ReceivedInstanceHook=setting),
        version=version,
        releases_interpreter_lock=releases,
    )
    plugin = adapter.install(orthanc)
    assert (orthanc.received_callback is not None) is installed
    assert plugin.app.received_hook is installed
    log = orthanc.log_text()
    if setting == "auto" and not installed:
        assert "received-instance hook is not installed" in log
        assert '"AllowThreads": true' in log
    if setting is True and not releases:
        assert "concurrent stores can freeze Orthanc" in log


def test_registered_callbacks_outlive_the_plugin_object(version, make_configuration) -> None:
    orthanc = FakeOrthancModule(make_configuration(), version=version)
    adapter.install(orthanc)
    for callback in [orthanc.change_callback, *orthanc.routes.values()]:
        assert any(callback is kept for kept in adapter._REGISTERED)


def test_stop_detaches_the_orthanc_log_handler(running) -> None:
    orthanc, _plugin = running
    orthanc.change_callback(orthanc.ChangeType.ORTHANC_STOPPED, orthanc.ResourceType.PATIENT, "")
    assert "DPP: DPP plugin stopped" in orthanc.log_text()
    before = len(orthanc.logs)
    import logging

    logging.getLogger("orthanc_dpp").warning("after the stop")
    assert len(orthanc.logs) == before


# -- the fake itself follows the recordings ------------------------------------------


def test_the_fake_refuses_what_each_real_plugin_refused() -> None:
    old = FakeOrthancModule({}, version="4.0")
    new = FakeOrthancModule({}, version="5.0")
    with pytest.raises(TypeError, match="3 arguments expected"):
        FakeOutput(old.shapes).SendHttpStatus(404, b"{}")
    with pytest.raises(TypeError, match="2 arguments expected"):
        FakeOutput(new.shapes).SendHttpStatus(404, "{}", 2)
    with pytest.raises(TypeError, match="never probed"):
        new.LogWarning(42)
    with pytest.raises(AttributeError, match=r"does not exist in Python plugin 4\.0"):
        old.SetCurrentThreadName  # noqa: B018 (new in 5.0)


def test_enumerations_carry_the_recorded_values(version) -> None:
    orthanc = FakeOrthancModule({}, version=version)
    values = recording(version)["surface"]["ChangeType"]["values"]
    assert {member.name: int(member) for member in orthanc.ChangeType} == values


def test_peer_text_cannot_forge_log_lines(running) -> None:
    orthanc, _ = running
    import logging

    logging.getLogger("orthanc_dpp").warning("C-STORE from %s refused", "EVIL\nDPP: forged\x1b[2J")
    (line,) = [m for _, m in orthanc.logs if "EVIL" in m]
    assert line == "DPP: C-STORE from EVIL\\nDPP: forged\\x1b[2J refused"


def test_orthanc_explorer_gets_the_library_button(version, make_configuration) -> None:
    orthanc = FakeOrthancModule(make_configuration(), version=version)
    if "ExtendOrthancExplorer(str)" not in recording(version)["probes"]:
        # The fake refuses calls never probed; install() must survive that refusal.
        adapter.install(orthanc)
        assert "Orthanc Explorer not extended" in orthanc.log_text()
        pytest.skip(f"ExtendOrthancExplorer not yet probed on Python plugin {version}: re-record")
    adapter.install(orthanc)
    (javascript,) = orthanc.explorer_javascript
    assert "../dpp/ui/index.html" in javascript and "#lookup" in javascript
    assert "Orthanc Explorer not extended" not in orthanc.log_text()
    page = orthanc.call_route("/dpp/ui/index.html")
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_activity_route_shows_the_plugin_log(running) -> None:
    orthanc, _ = running
    events = orthanc.call_route("/dpp/activity").json()["Events"]
    assert any(e["Message"].startswith("DPP listener DPP_UNIT listening") for e in events)


class _FileReader:
    """An ``orthanc`` module with ``GetDicomForInstance`` (every recorded plugin has it)."""

    class OrthancException(Exception):
        pass

    def __init__(self, files: dict[str, bytes], direct: bool) -> None:
        self.files = files
        self.rest: list[str] = []
        if direct:
            self.GetDicomForInstance = self._direct

    def _direct(self, orthanc_id: str) -> bytes:
        if orthanc_id not in self.files:
            raise self.OrthancException("Unknown resource")
        return self.files[orthanc_id]

    def RestApiGet(self, uri: str) -> bytes:
        self.rest.append(uri)
        return self._direct(uri.split("/")[2])


@pytest.mark.parametrize("direct", [True, False])
def test_stored_files_are_read_without_rest_where_possible(direct: bool) -> None:
    from orthanc_dpp.storage.library import OrthancError

    module = _FileReader({"id1": b"file one"}, direct)
    api = ports.OrthancRestApi(module)  # type: ignore[arg-type]
    assert api.stored_file("id1") == b"file one"
    assert module.rest == ([] if direct else ["/instances/id1/file"])
    with pytest.raises(OrthancError):
        api.stored_file("gone")  # deleted meanwhile: the feed skips it
    assert all("GetDicomForInstance" in recording(v)["surface"] for v in VERSIONS)


class _FullDisk:
    """An ``orthanc`` module whose storage is full, raising as the real plugin does."""

    class OrthancException(Exception):
        pass

    def RestApiPost(self, uri: str, body: bytes) -> bytes:
        raise self.OrthancException(14, "Cannot write to file")

    def RestApiGet(self, uri: str) -> bytes:
        raise self.OrthancException("a message without a code")


class _Recorder:
    """An ``orthanc`` module whose POST records what the port object says meanwhile."""

    class OrthancException(Exception):
        pass

    def __init__(self) -> None:
        self.api: ports.OrthancRestApi | None = None
        self.seen: list[tuple[str, bool, bool]] = []

    def RestApiPost(self, uri: str, body: bytes) -> bytes:
        assert self.api is not None
        elsewhere: list[bool] = []
        other = threading.Thread(target=lambda: elsewhere.append(self.api.posting_instances()))
        other.start()
        other.join()
        self.seen.append((uri, self.api.posting_instances(), elsewhere[0]))
        return b"{}"


def test_the_port_knows_when_this_thread_posts_instances() -> None:
    """What the received-instance hook asks: only this thread, only ``POST /instances``."""
    module = _Recorder()
    api = module.api = ports.OrthancRestApi(module)  # type: ignore[arg-type]
    assert not api.posting_instances()
    api.post("/instances", b"...")
    api.post("/tools/find", b"{}")
    assert module.seen == [("/instances", True, False), ("/tools/find", False, False)]
    assert not api.posting_instances()


def test_orthanc_error_codes_reach_the_library() -> None:
    """The code of ``OrthancException(code, description)`` is what the library maps."""
    from orthanc_dpp.storage.library import OrthancError

    api = ports.OrthancRestApi(_FullDisk())  # type: ignore[arg-type]
    with pytest.raises(OrthancError) as full:
        api.post("/instances", b"...")
    assert (full.value.code, full.value.description) == (14, "Cannot write to file")
    assert full.value.message == "(14, 'Cannot write to file')"
    with pytest.raises(OrthancError) as other:
        api.get("/instances")
    assert (other.value.code, other.value.description) == (None, "a message without a code")


def test_pynetdicom_tracebacks_become_one_line_in_orthancs_log() -> None:
    # pynetdicom logs a traceback for every malformed PDU: a stranger sending
    # garbage wrote some twenty lines into Orthanc's log per connection.
    import logging

    lines: list[str] = []
    sink = type("Orthanc", (), {"LogError": lines.append, "LogWarning": lines.append})()
    handler = logs.OrthancLogHandler(sink)  # type: ignore[arg-type]
    for name in ("pynetdicom.dul", "orthanc_dpp.listener"):
        try:
            raise KeyError(0)
        except KeyError:
            record = logging.getLogger(name).makeRecord(
                name, logging.ERROR, __file__, 1, "Unable to decode the received PDU data", (), None
            )
            record.exc_info = sys.exc_info()
        handler.emit(record)
    assert lines[0] == "DPP: Unable to decode the received PDU data (KeyError: 0)"
    assert "Traceback (most recent call last)" in lines[1]  # our own errors keep theirs


def test_pydicom_warnings_about_peer_values_are_dropped() -> None:
    # Each distinct invalid UID a peer sent printed two lines to Orthanc's
    # log and stayed in the warnings registry for good.
    import warnings

    from pydicom.valuerep import validate_value

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        logs.quiet_pydicom_warnings()
        for n in range(100):
            validate_value("UI", f"1.2.{n}x", 1)
    assert caught == []
