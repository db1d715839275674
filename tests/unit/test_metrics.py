"""The plugin's metrics: counting, the handlers that count, publishing through Orthanc."""

from __future__ import annotations

import logging
import re
import threading
from types import SimpleNamespace

import pytest
from pydicom.uid import generate_uid
from pynetdicom import evt

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper, parse_unknown_callers
from orthanc_dpp.dicom.modalities import ModalityRegistry
from orthanc_dpp.dicom.scp import handlers as scp
from orthanc_dpp.dicom.scp.get import GetHandler
from orthanc_dpp.dicom.scp.move import MoveHandler
from orthanc_dpp.metrics import METRICS, PREFIX, REFUSALS, Metrics
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.orthanc import adapter
from orthanc_dpp.orthanc.publisher import MetricsPublisher
from orthanc_dpp.rest.http import Request
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.storage.library import ProtocolLibrary
from tests import dicom_client
from tests.datasets import identifier_for
from tests.doc_examples import DOCS, doc_section
from tests.fake_orthanc import FakeOrthancApi
from tests.fake_orthanc_module import FakeOrthancModule
from tests.scp_harness import Harness, add_protocols, c_get, find_event, nobody, universal
from tests.scp_harness import handler as find_handler
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("restore_loggers")  # install() takes over the loggers


def value(metrics: Metrics, name: str, protocols: int = 0) -> float:
    return metrics.snapshot(protocols)[PREFIX + name]


# --- counting ---------------------------------------------------------------------------


def test_outcomes_are_counted_by_final_status() -> None:
    metrics = Metrics()
    metrics.dimse_status("c_store", dimse_status.SUCCESS)
    metrics.dimse_status("c_store", dimse_status.DUPLICATE_SOP_INSTANCE)
    metrics.dimse_status("c_move", dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES)
    metrics.dimse_status("c_get", dimse_status.CANCEL)
    metrics.dimse("c_find", "refused")
    assert value(metrics, "c_store_success_total") == 1
    assert value(metrics, "c_store_failure_total") == 1
    assert value(metrics, "c_move_warning_total") == 1
    assert value(metrics, "c_get_cancel_total") == 1
    assert value(metrics, "c_find_refused_total") == 1


def test_refusals_are_counted_by_kind() -> None:
    metrics = Metrics()
    for kind in ("rejected", "busy", "busy", "connection", "evicted", "aborted"):
        metrics.refusal(kind)
    values = metrics.snapshot(0)
    assert {name: values[PREFIX + name] for name, _ in REFUSALS.values()} == {
        "association_requests_rejected_total": 1,
        "association_requests_busy_total": 2,
        "connections_refused_total": 1,
        "connections_evicted_total": 1,
        "association_aborts_total": 1,
    }
    with pytest.raises(ValueError, match="no refusal of kind 'stranger'"):
        metrics.refusal("stranger")
    disabled = Metrics(enabled=False)
    disabled.refusal("rejected")
    assert disabled.snapshot(0)[PREFIX + "association_requests_rejected_total"] == 0


def test_an_outcome_a_service_cannot_have_is_an_error() -> None:
    with pytest.raises(ValueError, match="c_echo has no outcome 'warning'"):
        Metrics().dimse("c_echo", "warning")


def test_find_times_count_sum_maximum_and_a_recent_maximum_that_restarts() -> None:
    metrics = Metrics()
    for seconds in (0.5, 2.0, 1.0):
        metrics.find_timed(seconds)
    first = metrics.snapshot(7)
    assert first[PREFIX + "c_find_seconds_count"] == 3
    assert first[PREFIX + "c_find_seconds_sum"] == 3.5
    assert first[PREFIX + "c_find_seconds_max"] == 2.0
    assert first[PREFIX + "c_find_recent_max_seconds"] == 2.0
    assert first[PREFIX + "protocols"] == 7
    second = metrics.snapshot(7)
    assert second[PREFIX + "c_find_recent_max_seconds"] == 0.0
    assert second[PREFIX + "c_find_seconds_max"] == 2.0


def test_store_times_add_up_with_orthancs_share() -> None:
    metrics = Metrics()
    metrics.store_timed(0.010, 0.004)
    metrics.store_timed(0.020, 0.005)
    values = metrics.snapshot(0)
    assert values[PREFIX + "c_store_seconds_count"] == 2
    assert values[PREFIX + "c_store_seconds_sum"] == pytest.approx(0.030)
    assert values[PREFIX + "c_store_orthanc_seconds_sum"] == pytest.approx(0.009)
    Metrics(enabled=False).store_timed(1.0, 1.0)  # off: nothing counted, no error


def test_associations_open_and_served() -> None:
    metrics = Metrics()
    metrics.association_opened()
    metrics.association_opened()
    metrics.association_closed()
    assert value(metrics, "associations_open") == 1
    assert value(metrics, "associations_served_total") == 2


def test_concurrent_counting_loses_nothing() -> None:
    metrics = Metrics()

    def work() -> None:
        for _ in range(2000):
            metrics.dimse("c_echo", "success")
            metrics.suboperations(1, 2, 0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert value(metrics, "c_echo_success_total") == 16000
    assert value(metrics, "suboperations_failed_total") == 32000


def test_a_disabled_instance_counts_nothing() -> None:
    metrics = Metrics(enabled=False)
    metrics.association_opened()
    metrics.dimse("c_echo", "success")
    metrics.find_timed(1.0)
    metrics.suboperations(1, 1, 1)
    metrics.rest_file(stored=True)
    assert set(metrics.snapshot(0).values()) == {0.0}


def test_every_metric_is_in_the_readme_with_its_type() -> None:
    section = doc_section(DOCS / "operations.md", "Metrics")
    rows = dict(re.findall(r"^\| `(orthanc_dpp_\w+)` \| (\w+) \|", section, re.M))
    assert rows == {m.name: m.kind.value for m in METRICS}


# --- the handlers that count ------------------------------------------------------------


def test_echo_counts_success_and_refusal() -> None:
    metrics = Metrics()
    event = SimpleNamespace(
        assoc=SimpleNamespace(
            requestor=SimpleNamespace(ae_title="SCU", address="127.0.0.1", port=1)
        )
    )
    everyone = Gatekeeper(
        ModalityRegistry(), AccessPolicy.from_orthanc({}, parse_unknown_callers(["Echo"]))
    )
    assert scp.EchoHandler(everyone, metrics)(event).Status == dimse_status.SUCCESS
    assert scp.EchoHandler(nobody(), metrics)(event).Status == dimse_status.UNABLE_TO_PROCESS
    assert value(metrics, "c_echo_success_total") == 1
    assert value(metrics, "c_echo_refused_total") == 1


def test_find_counts_outcomes_and_times_each_request() -> None:
    metrics = Metrics()
    list(find_handler(metrics=metrics)(find_event(universal())))
    closed = SimpleNamespace(is_established=False)
    list(find_handler(metrics=metrics)(find_event(universal(), closed)))
    refused = scp.FindHandler(
        ProtocolIndex(),
        nobody(),
        scp.FindOptions(max_results=0),
        is_ready=lambda: True,
        metrics=metrics,
    )
    list(refused(find_event(universal())))
    assert value(metrics, "c_find_success_total") == 1
    assert value(metrics, "c_find_cancel_total") == 1  # nobody left to answer
    assert value(metrics, "c_find_refused_total") == 1
    assert value(metrics, "c_find_seconds_count") == 3


def test_c_get_counts_its_outcome_and_sub_operations(harness: Harness) -> None:
    metrics = Metrics()
    gate = Gatekeeper(harness.registry, AccessPolicy())
    handlers = {
        evt.EVT_C_GET: GetHandler(harness.source, gate, metrics=metrics),
        evt.EVT_C_MOVE: MoveHandler(harness.source, gate, metrics=metrics),
    }
    for event, handler in handlers.items():
        harness.server.unbind(event, harness.server.get_handlers(event)[0])
        harness.server.bind(event, handler)
    known = add_protocols(harness, [make_protocol(7), make_protocol(8)])
    final = c_get(harness, identifier_for([*known, generate_uid()])).final
    assert final.status == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    assert value(metrics, "c_get_warning_total") == 1
    assert value(metrics, "suboperations_completed_total") == 2
    assert value(metrics, "suboperations_failed_total") == 1
    refused = c_get(harness, identifier_for(known), aet="STRANGER").final
    assert refused.status == dimse_status.NOT_AUTHORIZED
    assert value(metrics, "c_get_refused_total") == 1


def test_rest_uploads_count_stored_and_refused_files() -> None:
    metrics = Metrics()
    index = ProtocolIndex()
    rest = DppRestApi(
        ProtocolLibrary(FakeOrthancApi(), Normalization()),
        index,
        status=dict,
        on_stored=lambda stored: index.put(stored.orthanc_id, stored.dataset),
        on_deleted=index.remove,
        maximum_upload=100_000,
        metrics=metrics,
    )

    def post(body: bytes) -> int:
        request = Request("POST", headers={"content-type": "application/dicom"}, body=body)
        return rest.upload(request).status

    assert post(to_bytes(make_protocol(1))) == 200
    assert post(b"not DICOM") == 400
    assert post(b"\0" * 100_001) == 413  # refused whole
    assert value(metrics, "rest_files_stored_total") == 1
    assert value(metrics, "rest_files_refused_total") == 2


# --- publishing through Orthanc (fakes of each recorded plugin) -------------------------


def start(orthanc: FakeOrthancModule) -> adapter.Plugin:
    plugin = adapter.install(orthanc)
    orthanc.change_callback(orthanc.ChangeType.ORTHANC_STARTED, orthanc.ResourceType.PATIENT, "")
    app = plugin.app
    assert eventually(lambda: app.listener.status.state == "running" and app.feed.ready)
    return plugin


def stop(orthanc: FakeOrthancModule) -> None:
    orthanc.change_callback(orthanc.ChangeType.ORTHANC_STOPPED, orthanc.ResourceType.PATIENT, "")


def echo(plugin: adapter.Plugin) -> None:
    assert dicom_client.echo(plugin.app.settings.port, "DPP_UNIT", calling_aet="UNIT_SCU") == 0


def test_the_adapter_publishes_every_metric_with_its_type(version, make_configuration) -> None:
    orthanc = FakeOrthancModule(
        make_configuration(), version=version, releases_interpreter_lock=True
    )
    plugin = start(orthanc)
    try:
        # The publisher thread runs from ORTHANC_STARTED.
        assert eventually(lambda: PREFIX + "protocols" in orthanc.metrics)
        echo(plugin)
        upload = orthanc.call_route(
            "/dpp/protocols",
            "POST",
            headers={"Content-Type": "application/dicom"},
            body=to_bytes(make_protocol(2)),
        )
        assert upload.status == 200
        assert eventually(lambda: plugin.app.metrics.snapshot(0)[PREFIX + "associations_open"] == 0)
        plugin.publisher.publish()
        published = orthanc.metrics
        assert set(published) == {m.name for m in METRICS}
        for metric in METRICS:
            assert published[metric.name][1] == getattr(orthanc.MetricsType, metric.kind.value)
        assert published[PREFIX + "c_echo_success_total"][0] == 1
        assert published[PREFIX + "associations_served_total"][0] == 1
        assert published[PREFIX + "associations_open"][0] == 0
        assert published[PREFIX + "rest_files_stored_total"][0] == 1
        assert published[PREFIX + "protocols"][0] == 1
        assert published[PREFIX + "c_find_recent_max_seconds"][1] == orthanc.MetricsType.TIMER
    finally:
        stop(orthanc)
    assert plugin.publisher._thread is None  # stopped with Orthanc


def test_metrics_enabled_false_publishes_and_counts_nothing(version, make_configuration) -> None:
    orthanc = FakeOrthancModule(
        {**make_configuration(), "MetricsEnabled": False},
        version=version,
        releases_interpreter_lock=True,
    )
    plugin = start(orthanc)
    try:
        echo(plugin)
        assert plugin.publisher is None
        assert orthanc.metrics == {}
        assert set(plugin.app.metrics.snapshot(0).values()) == {0.0}
    finally:
        stop(orthanc)


def test_a_lasting_publishing_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    orthanc = FakeOrthancModule({})
    calls: list[str] = []

    def refuse(name: str, value: float, kind: object) -> None:
        calls.append(name)
        raise orthanc.OrthancException("registry unavailable")

    orthanc.SetMetricsValue = refuse  # type: ignore[method-assign]
    publisher = MetricsPublisher(orthanc, Metrics(), lambda: 0, interval=0.01)
    with caplog.at_level(logging.ERROR, logger="orthanc_dpp"):
        publisher.start()
        try:
            assert eventually(lambda: len(calls) >= 5)
        finally:
            publisher.stop()
    failures = [r for r in caplog.records if "Publishing the DPP metrics failed" in r.message]
    assert len(failures) == 1
    assert "registry unavailable" in failures[0].message
