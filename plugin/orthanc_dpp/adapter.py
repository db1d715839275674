"""The one module that talks to Orthanc's ``orthanc`` module.

:func:`install` is called by the entry script with the real ``orthanc``
module (tests may pass a fake with the same API). It parses the
configuration, registers the callbacks and REST routes, and starts the DPP
listener and the index feed when Orthanc reports ORTHANC_STARTED. Nothing
here may raise into Orthanc: an exception while Orthanc loads the script
stops Orthanc, one in a callback fails that request only.

Python plugins 4.0 to 7.1 differ in ways that matter here; all of them are
handled by :class:`RunningPlugin`, which finds out what the running plugin
does (never by its version number). docs/orthanc-versions.md explains each
difference and how it was measured.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pydicom
import pynetdicom
from pynetdicom import evt

from orthanc_dpp import __version__, csrf, library_page, snapshot, tls
from orthanc_dpp.access import AccessPolicy, Gatekeeper
from orthanc_dpp.activity import ActivityLog
from orthanc_dpp.bindings import ApprovedContent
from orthanc_dpp.config import SECTION, ConfigError, Settings, parse_settings
from orthanc_dpp.feed import FreshInstances, IndexFeed, report_duplicate
from orthanc_dpp.get import GetHandler
from orthanc_dpp.http_messages import Request, Response, error
from orthanc_dpp.index import ProtocolIndex
from orthanc_dpp.jobs import Jobs
from orthanc_dpp.library import (
    IndexedSource,
    OrthancError,
    ProtocolLibrary,
    Stored,
    StoreError,
    normalize_received,
)
from orthanc_dpp.limits import DatasetLimits
from orthanc_dpp.listener import DppListener, ListenerSettings
from orthanc_dpp.metrics import METRICS, Metrics
from orthanc_dpp.modalities import ModalityRegistry, matching_options
from orthanc_dpp.move import MoveHandler
from orthanc_dpp.remote_rest import RemoteArchives
from orthanc_dpp.responses import ResponseCache
from orthanc_dpp.rest import DppRestApi
from orthanc_dpp.retrieve import RetrieveOptions
from orthanc_dpp.routes import Route, dpp_routes, invalid_configuration
from orthanc_dpp.scp import (
    EchoHandler,
    FindHandler,
    FindOptions,
    StoreHandler,
    StoreOptions,
)
from orthanc_dpp.scu_association import Caller
from orthanc_dpp.sop import PROTOCOL_APPROVAL_STORAGE

log = logging.getLogger("orthanc_dpp")

#: Seconds between re-reads of Orthanc's modality list (besides the
#: UPDATED_MODALITIES event, which this node's own changes raise).
MODALITY_REFRESH = 30.0


#: Seconds between two publications of the plugin's metrics.
METRICS_INTERVAL = 1.0


#: Every callable handed to Orthanc, kept alive until the interpreter ends.
#: Python plugins 4.3 and later drop their references to REST callbacks
#: while finalizing without holding the interpreter lock; if that released
#: the last reference, the callback would be deallocated without a thread
#: state and Orthanc would crash on every stop (SIGSEGV, measured on 1.12.7
#: and 1.13.0). With this reference the plugin's release only decrements.
_REGISTERED: list[Any] = []


class RunningPlugin:
    """What the running Python plugin offers, found out from the plugin itself.

    - ``releases_interpreter_lock``: whether calls into Orthanc release
      Python's interpreter lock (plugin 4.3+ with ``"Python": {"AllowThreads":
      true}``). Measured once at load by :func:`probe_interpreter_lock`.
    - How ``RestOutput.SendHttpStatus`` takes its body: ``(status, bytes)``
      from plugin 4.3, ``(status, str, size)`` before. A call of the wrong
      shape raises TypeError while parsing its arguments, before anything is
      sent, so the first error answer tries the newer form and remembers
      which one the plugin accepted.
    - Versions of Orthanc and of the Python plugin, read from Orthanc's REST
      API once Orthanc has started (they are not in the ``orthanc`` module).
    """

    BYTES = "status, body (bytes)"
    STR_AND_SIZE = "status, body (str), size"

    def __init__(self, orthanc: ModuleType, *, probe: bool = True) -> None:
        self.orthanc = orthanc
        self.releases_interpreter_lock = probe_interpreter_lock(orthanc) if probe else False
        self.http_status_form: str | None = None
        self.orthanc_version: str | None = None
        self.plugin_version: str | None = None

    def send_http_status(self, output: Any, status: int, body: bytes) -> None:
        """``output.SendHttpStatus`` in whichever form this plugin accepts."""
        if self.http_status_form != self.STR_AND_SIZE:
            try:
                output.SendHttpStatus(status, body)
                self.http_status_form = self.BYTES
                return
            except TypeError:
                if self.http_status_form == self.BYTES:
                    raise
        text = body.decode("utf-8", "replace")
        output.SendHttpStatus(status, text, len(text.encode()))
        self.http_status_form = self.STR_AND_SIZE

    def read_versions(self) -> None:
        """Orthanc's and the Python plugin's versions (worker threads only)."""
        try:
            system = json.loads(self.orthanc.RestApiGet("/system"))
            plugin = json.loads(self.orthanc.RestApiGet("/plugins/python"))
        except Exception as exc:
            log.warning("Cannot read Orthanc's version: %s", exc)
            return
        self.orthanc_version = str(system.get("Version", "")) or None
        self.plugin_version = str(plugin.get("Version", "")) or None

    def describe(self) -> dict[str, Any]:
        return {
            "Orthanc": self.orthanc_version,
            "PythonPlugin": self.plugin_version,
            "Python": sys.version.split()[0],
            "pydicom": pydicom.__version__,
            "pynetdicom": pynetdicom.__version__,
            "InterpreterLockReleasedInCalls": self.releases_interpreter_lock,
            "SendHttpStatus": self.http_status_form or "not used yet",
        }


def probe_interpreter_lock(orthanc: ModuleType) -> bool:
    """True if a call into Orthanc lets other Python threads run meanwhile.

    One call that keeps Orthanc busy for about 0.1 s (compressing 4 MiB of
    random bytes) while a second thread counts. If the plugin keeps the
    interpreter lock during the call, the counter cannot run at all then,
    except for a few milliseconds at either end when Python switches threads;
    if the plugin releases it, the counter runs through the whole call. Only
    counts well inside the call decide, so the answer does not depend on
    timing luck.
    """
    data = os.urandom(4 << 20)
    ticks: list[float] = []
    started, stop = threading.Event(), threading.Event()

    def count() -> None:
        started.set()
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    counter = threading.Thread(target=count, name="dpp-lock-probe", daemon=True)
    counter.start()
    started.wait()
    try:
        begin = time.perf_counter()
        orthanc.BufferCompression(data, orthanc.CompressionType.ZLIB, 0)
        end = time.perf_counter()
    except Exception as exc:
        log.warning("Cannot tell whether calls into Orthanc release the GIL: %s", exc)
        return False
    finally:
        stop.set()
        counter.join()
    margin = 0.02
    return end - begin > 3 * margin and any(begin + margin < t < end - margin for t in ticks)


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped.

    Log messages carry what peers send (AE titles, UIDs, file names, error
    texts); escaped, none of it can start a forged line in Orthanc's log.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OrthancLogHandler(logging.Handler):
    """Send Python log records to Orthanc's log, prefixed so they are findable.

    Closed once the plugin has stopped: nothing may call into Orthanc while
    the Python plugin finalizes.
    """

    def __init__(self, orthanc: ModuleType) -> None:
        super().__init__()
        self.orthanc = orthanc
        self.closed = False

    def close(self) -> None:
        self.closed = True
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        if self.closed:
            return
        try:
            message = "DPP: " + printable(record.getMessage())
            if record.exc_info and record.name.startswith("pynetdicom"):
                # pynetdicom logs a traceback for each malformed PDU a peer
                # sends: one line says it, and a stranger cannot flood the log.
                error = record.exc_info[1]
                message += f" ({type(error).__name__}: {printable(str(error))[:200]})"
            elif record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.ERROR:
                self.orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self.orthanc.LogWarning(message)
            else:
                self.orthanc.LogInfo(message)
        except Exception:  # logging must never break a caller
            pass


def orthanc_error(method: str, uri: str, exc: BaseException) -> OrthancError:
    """``orthanc.OrthancException`` as :class:`OrthancError`, with Orthanc's error code.

    The Python plugin raises it with the arguments (code, description), as
    in ``(14, 'Cannot write to file')``; the code is what tells a full disk
    or a lost database from a bad file.
    """
    code = description = None
    if len(exc.args) == 2 and isinstance(exc.args[0], int) and isinstance(exc.args[1], str):
        code, description = int(exc.args[0]), exc.args[1]
    return OrthancError(method, uri, str(exc), code, description)


class OrthancRestApi:
    """:class:`orthanc_dpp.library.OrthancApi` over the in-process REST API."""

    def __init__(self, orthanc: ModuleType) -> None:
        self.orthanc = orthanc
        self._posting = threading.local()  # .instances: this thread is in post("/instances")

    def posting_instances(self) -> bool:
        """True while this thread is inside this object's ``POST /instances``.

        Orthanc runs its received-instance hook on the thread that stores, so
        the hook can tell a file the library has just normalized (nothing to
        do, no need to read it again) from one arriving by Orthanc's routes.
        """
        return getattr(self._posting, "instances", False)

    def _call(self, method: str, uri: str, *args: Any) -> Any:
        function = getattr(self.orthanc, f"RestApi{method.title()}")
        try:
            return function(uri, *args)
        except self.orthanc.OrthancException as exc:
            raise orthanc_error(method, uri, exc) from exc

    def get(self, uri: str) -> bytes:
        return self._call("GET", uri)

    def stored_file(self, orthanc_id: str) -> bytes:
        """An instance's stored file, as ``GET /instances/{id}/file`` answers it.

        Through ``GetDicomForInstance`` where the plugin has it (the index's
        start-up reads every file: this skips Orthanc's HTTP layer).
        """
        read = getattr(self.orthanc, "GetDicomForInstance", None)
        if read is None:
            return self.get(f"/instances/{orthanc_id}/file")
        try:
            return bytes(read(orthanc_id))
        except self.orthanc.OrthancException as exc:
            raise orthanc_error("GET", f"/instances/{orthanc_id}/file", exc) from exc

    def post(self, uri: str, body: bytes) -> bytes:
        if uri != "/instances":
            return self._call("POST", uri, body)
        self._posting.instances = True
        try:
            return self._call("POST", uri, body)
        finally:
            self._posting.instances = False

    def put(self, uri: str, body: bytes) -> None:
        self._call("PUT", uri, body)

    def delete(self, uri: str) -> None:
        self._call("DELETE", uri)


class GlobalPropertySnapshots:
    """:class:`orthanc_dpp.snapshot.SnapshotStore` in an Orthanc global property.

    Global properties live in Orthanc's database, so every node sharing a
    PostgreSQL database starts from the same snapshot.
    """

    def __init__(self, orthanc: ModuleType) -> None:
        self.orthanc = orthanc

    def read(self) -> str:
        return self.orthanc.GetGlobalProperty(snapshot.PROPERTY, "")

    def write(self, text: str) -> None:
        self.orthanc.SetGlobalProperty(snapshot.PROPERTY, text)


class MetricsPublisher:
    """Copies :class:`Metrics` into Orthanc's metrics registry every ``interval`` seconds.

    None of the recorded Python plugins (4.0, 5.0, 7.1) lets a plugin refresh
    its metrics when ``/tools/metrics-prometheus`` is read, so a thread
    publishes them. Every value is published each time, changed or not:
    Orthanc prints the time of the last publication with each value, and a
    Prometheus server stops showing a value whose time no longer moves.
    """

    def __init__(
        self,
        orthanc: ModuleType,
        metrics: Metrics,
        protocols: Callable[[], int],
        interval: float = METRICS_INTERVAL,
    ) -> None:
        self.orthanc = orthanc
        self.metrics = metrics
        self.protocols = protocols
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        """Every metric into Orthanc's registry, once."""
        kinds = {m.name: getattr(self.orthanc.MetricsType, m.kind.value) for m in METRICS}
        for name, value in self.metrics.snapshot(self.protocols()).items():
            self.orthanc.SetMetricsValue(name, float(value), kinds[name])

    def _run(self) -> None:
        reported = ""  # a lasting failure is logged once, not every second
        while not self._stop.is_set():
            try:
                self.publish()
                reported = ""
            except Exception as exc:
                if repr(exc) != reported:
                    reported = repr(exc)
                    log.error("Publishing the DPP metrics failed: %s", traceback.format_exc())
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dpp-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


def _wait_for_python_threads(grace: float) -> None:
    """Wait (boundedly) until every thread Python started has ended.

    Orthanc finalizes the Python interpreter right after ORTHANC_STOPPED; a
    thread still running Python code then (an association thread finishing
    its last response, say) can corrupt the interpreter's memory as it is
    torn down. Threads Orthanc started (Python sees them as dummy threads)
    are not ours to wait for.
    """
    deadline = time.monotonic() + grace
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is current or thread is threading.main_thread():
            continue
        if isinstance(thread, threading._DummyThread):  # started by Orthanc, not by Python
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [
        t.name
        for t in threading.enumerate()
        if t.is_alive()
        and t is not current
        and t is not threading.main_thread()
        and not isinstance(t, threading._DummyThread)
    ]
    if left:
        log.warning("Python threads still running as Orthanc stops: %s", ", ".join(left))


class Plugin:
    """Everything the plugin runs, wired together."""

    def __init__(
        self,
        orthanc: ModuleType,
        configuration: dict[str, Any],
        running: RunningPlugin | None = None,
        activity: ActivityLog | None = None,
    ) -> None:
        self.orthanc = orthanc
        self.activity = activity or ActivityLog()  # recent log lines, for the library page
        self.running = running or RunningPlugin(orthanc, probe=False)
        self.configuration = configuration
        self.received_hook = False
        self.config_errors: list[str] = []
        self.settings: Settings | None = None
        self.limits = DatasetLimits()  # from the settings at start
        self.index = ProtocolIndex()
        self.find_cache = ResponseCache(0)  # sized from the settings at start
        self.fresh = FreshInstances()  # this node's own stores, for the change feed
        self.listener: DppListener | None = None
        self.feed: IndexFeed | None = None
        self.approved_content: ApprovedContent | None = None  # set with valid settings
        # Orthanc's MetricsEnabled (default true): when false, nothing is counted or published.
        self.metrics = Metrics(enabled=configuration.get("MetricsEnabled", True) is not False)
        self.publisher: MetricsPublisher | None = None
        self.jobs = Jobs()  # background retrieves from other archives
        self.api = OrthancRestApi(orthanc)  # the library stores through it; on_received asks it
        try:
            self.settings = parse_settings(configuration, configuration_folder(orthanc))
        except ConfigError as exc:
            self.config_errors = exc.errors
            for message in exc.errors:
                log.error("Configuration error, DPP listener not started: %s", message)
            return
        settings = self.settings
        # One SOP Instance UID, one protocol; Orthanc's OverwriteInstances
        # says whether a newcomer replaces the stored one.
        overwrite = configuration.get("OverwriteInstances") is True
        self.index.newest_wins = overwrite
        fresh = self.fresh
        api = self.api
        self.library = ProtocolLibrary(
            api,
            settings.normalization,
            stored_as=self._stored_as,
            overwrite=overwrite,
            fresh=fresh,
            # Nothing is stored before the index knows what is stored already
            # (with Enabled false there is no index to wait for).
            ready=lambda: not settings.enabled or bool(self.feed and self.feed.ready),
        )
        self.approved_content = ApprovedContent(api, self.index)
        self.feed = IndexFeed(
            self.library,
            self.index,
            poll_interval=settings.change_poll_interval,
            reconcile_interval=settings.reconcile_interval,
            on_tick=self.refresh_modalities,
            snapshots=GlobalPropertySnapshots(orthanc),
            snapshot_interval=settings.snapshot_interval,
            fresh=fresh,
            fast_load=settings.fast_index_load,
            read_file=api.stored_file,
        )
        # Peers and move destinations: Orthanc's own modality list, re-read
        # on UPDATED_MODALITIES and every MODALITY_REFRESH seconds.
        self.modalities = ModalityRegistry()
        self._modalities_due = 0.0
        policy = AccessPolicy.from_orthanc(
            configuration,
            settings.unknown_callers,
            unknown_may_store=settings.unknown_callers_may_store,
        )
        gate = Gatekeeper(self.modalities, policy)
        limits = self.limits = DatasetLimits(
            maximum_size=settings.maximum_dataset_size,
            maximum_depth=settings.maximum_nesting_depth,
            maximum_values=settings.maximum_values_per_key,
        )
        client_tls = tls_client_context(settings)
        self.find_cache.max_bytes = settings.find_response_cache_size << 20
        source = IndexedSource(self.index, self.library)
        retrieve_options = RetrieveOptions(
            report_missing=settings.report_missing_instances,
            pending_interval=settings.pending_response_interval,
        )
        handlers: dict[Any, Callable[..., Any]] = {
            evt.EVT_C_ECHO: EchoHandler(gate, self.metrics),
            evt.EVT_C_STORE: StoreHandler(
                self.library,
                gate,
                self.on_stored,
                limits,
                self.metrics,
                StoreOptions(approval_storers=settings.approval_storers),
            ),
            evt.EVT_C_FIND: FindHandler(
                self.index,
                gate,
                FindOptions(
                    max_results=settings.maximum_find_results,
                    time_limit=settings.find_time_limit,
                ),
                is_ready=lambda: bool(self.feed and self.feed.ready),
                limits=limits,
                metrics=self.metrics,
                cache=self.find_cache,
            ),
            evt.EVT_C_GET: GetHandler(
                source, gate, retrieve_options, limits=limits, metrics=self.metrics
            ),
            evt.EVT_C_MOVE: MoveHandler(
                source,
                gate,
                retrieve_options,
                limits=limits,
                tls_context=client_tls,
                metrics=self.metrics,
            ),
        }
        self.listener = DppListener(
            listener_settings(settings), handlers, self.metrics, judge=gate.caller
        )
        if not settings.enabled:
            self.listener.status.state = "disabled"
        self.rest = DppRestApi(
            self.library,
            self.index,
            self.status,
            self.on_stored,
            self.on_deleted,
            limits=limits,
            maximum_upload=settings.maximum_upload_size,
            metrics=self.metrics,
            activity=self.activity,
            content=self.approved_content,
        )
        if self.metrics.enabled:
            self.publisher = MetricsPublisher(orthanc, self.metrics, lambda: len(self.index))
        # This plugin as the SCU of other DPP archives (Orthanc's modalities).
        self.remote = RemoteArchives(
            Caller(
                settings.ae_title,
                acse_timeout=settings.acse_timeout,
                dimse_timeout=settings.dimse_timeout,
                network_timeout=settings.network_timeout,
                maximum_pdu_size=settings.maximum_pdu_size,
                tls_context=client_tls,
                limits=limits,
            ),
            self.modalities,
            self.store_retrieved,
            lambda uid: self.index.get(uid) is not None,
            self.jobs,
            refresh=lambda: self.refresh_modalities(force=True),
        )

    # -- events --------------------------------------------------------------

    def _stored_as(self, sop_instance_uid: str) -> str | None:
        entry = self.index.get(sop_instance_uid)
        return entry.orthanc_id if entry is not None else None

    def on_stored(self, stored: Stored) -> None:
        if stored.dataset is None or not stored.orthanc_id:
            return
        other = self.index.put(stored.orthanc_id, stored.dataset)
        self.fresh.indexed(stored.orthanc_id)
        if other is not None:  # stored through another node meanwhile
            report_duplicate(stored.sop_instance_uid, other, stored.orthanc_id, self.index)
        if stored.sop_class_uid == PROTOCOL_APPROVAL_STORAGE and self.approved_content is not None:
            # What it approves is the content its protocols hold now (bindings.py).
            entry = self.index.get_by_orthanc_id(stored.orthanc_id)
            if entry is not None:
                self.approved_content.bind(entry)

    def store_retrieved(self, ds: pydicom.Dataset, sop_class: str) -> None:
        """A protocol received by C-GET from another archive: stored as a C-STORE would be."""
        self.library.store(ds, context_sop_class=sop_class, on_stored=self.on_stored)

    def on_deleted(self, orthanc_id: str) -> None:
        self.index.remove(orthanc_id)
        if self.approved_content is not None:
            self.approved_content.forget(orthanc_id)

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Orthanc's change callback: only hands work to threads, returns at once."""
        o = self.orthanc
        if change_type == o.ChangeType.ORTHANC_STARTED:
            self.start()
        elif change_type == o.ChangeType.ORTHANC_STOPPED:
            self.stop()
        elif self.feed is None:
            return
        elif change_type == o.ChangeType.NEW_INSTANCE:
            self.feed.wake()
        elif change_type == o.ChangeType.DELETED and level == o.ResourceType.INSTANCE:
            self.feed.forget(resource_id)
        elif change_type == o.ChangeType.UPDATED_MODALITIES:
            self._modalities_due = 0.0  # re-read on the worker thread, now
            self.feed.wake()

    def refresh_modalities(self, force: bool = False) -> None:
        """Re-read ``/modalities?expand`` when due (worker threads only, never a callback)."""
        now = time.monotonic()
        if not force and now < self._modalities_due:
            return
        self._modalities_due = now + MODALITY_REFRESH
        self.modalities.refresh(
            lambda: json.loads(self.library.api.get("/modalities?expand")),
            **matching_options(self.configuration),
        )

    def start(self) -> None:
        if self.settings is None or not self.settings.enabled:
            return
        assert self.feed is not None and self.listener is not None
        listener = self.listener

        def start_listener() -> None:
            self.running.read_versions()
            self.refresh_modalities(force=True)
            listener.start()

        # On a thread: the modality list comes from Orthanc's REST API, which
        # a change callback must not call, and no socket problem may ever
        # hold Orthanc's callback thread.
        threading.Thread(target=start_listener, name="dpp-listener-start").start()
        self.feed.start()
        if self.publisher is not None:
            self.publisher.start()

    def stop(self) -> None:
        """Stop every thread of ours before Orthanc finalizes the Python plugin."""
        self.jobs.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.feed is not None:
            self.feed.stop()
        if self.publisher is not None:
            self.publisher.stop()
        _wait_for_python_threads(grace=5.0)
        log.warning("DPP plugin stopped")
        for name in ("orthanc_dpp", "pynetdicom"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, OrthancLogHandler):
                    handler.close()

    def on_received(self, data: bytes, origin: Any) -> tuple[Any, bytes | None]:
        """Orthanc's received-instance hook: normalize DPP files from any path."""
        actions = self.orthanc.ReceivedInstanceAction
        if self.settings is None or self.api.posting_instances():
            return actions.KEEP_AS_IS, None  # our own stores are normalized already
        try:
            normalized = normalize_received(data, self.settings.normalization, self.limits)
        except StoreError as exc:
            log.error("Received DPP instance not normalized: %s", exc.reason)
            return actions.KEEP_AS_IS, None
        except Exception:
            log.error("Received-instance hook failed: %s", traceback.format_exc())
            return actions.KEEP_AS_IS, None
        if normalized is None:
            return actions.KEEP_AS_IS, None
        return actions.MODIFY, normalized

    def routes(self) -> list[Route]:
        """The ``/dpp`` routes, in registration order; with an invalid configuration, the 503s."""
        if self.settings is None:
            return invalid_configuration(self.config_errors, self.activity, self.status)
        return dpp_routes(self.rest, self.remote)

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.settings
        listener = self.listener.status if self.listener else None
        feed = self.feed
        return {
            "Version": __version__,
            "Platform": {**self.running.describe(), "ReceivedInstanceHook": self.received_hook},
            "Configuration": {"Valid": not self.config_errors, "Errors": self.config_errors},
            "Listener": {
                "State": listener.state if listener else "stopped",
                "Error": listener.error if listener else None,
                "AETitle": s.ae_title if s else None,
                "Port": s.port if s else None,
                "BindAddress": s.bind_address if s else None,
                "AssociationsServed": listener.associations_served if listener else 0,
            },
            "Index": {
                "Ready": bool(feed and feed.ready),
                "LastChange": feed.last_seq if feed else 0,
                "LoadSeconds": feed.load_seconds if feed else None,
                "LoadProgress": feed.load_progress() if feed else None,
                "LastError": feed.last_error if feed else None,
            },
            "FindResponseCache": {
                "Entries": len(self.find_cache),
                "Bytes": self.find_cache.bytes,
                "MaximumBytes": self.find_cache.max_bytes,
                "Hits": self.find_cache.hits,
                "Misses": self.find_cache.misses,
            },
            "Protocols": {
                "Total": len(self.index),
                "BySOPClass": self.index.counts_by_sop_class(),
            },
        }


def configuration_folder(orthanc: ModuleType) -> Path:
    """The folder relative file names of the configuration are taken from."""
    path = Path(os.path.abspath(orthanc.GetConfigurationPath() or "."))
    return path if path.is_dir() else path.parent


def listener_settings(settings: Settings) -> ListenerSettings:
    """The part of the plugin's settings the DPP listener uses."""
    return ListenerSettings(
        ae_title=settings.ae_title,
        port=settings.port,
        bind_address=settings.bind_address,
        check_called_ae_title=settings.check_called_ae_title,
        maximum_associations=settings.maximum_associations,
        maximum_connections_per_address=settings.maximum_connections_per_address,
        unknown_callers_maximum_associations=settings.unknown_callers_maximum_associations,
        acse_timeout=settings.acse_timeout,
        dimse_timeout=settings.dimse_timeout,
        network_timeout=settings.network_timeout,
        maximum_pdu_size=settings.maximum_pdu_size,
        maximum_dataset_size=settings.maximum_dataset_size,
        tls=settings.tls,
    )


def tls_client_context(settings: Settings) -> ssl.SSLContext | None:
    """DICOM TLS for C-MOVE to modalities with ``UseDicomTls``; None when off or broken."""
    if not settings.tls.enabled:
        return None
    try:
        return tls.client_context(settings.tls)
    except (OSError, ValueError) as exc:
        log.error("DICOM TLS for C-MOVE cannot be set up (%s): moves to TLS modalities fail", exc)
        return None


def _answer(running: RunningPlugin, output: Any, response: Response) -> None:
    """Send a :class:`Response` through Orthanc's RestOutput."""
    if response.status == 405 and response.allowed is not None:
        output.SendMethodNotAllowed(response.allowed)
        return
    for name, value in response.headers.items():
        output.SetHttpHeader(name, value)
    if response.status == 200:
        output.AnswerBuffer(response.body, response.content_type)
    else:
        output.SetHttpHeader("Content-Type", response.content_type)
        running.send_http_status(output, response.status, response.body)


def _callback(route: Route, running: RunningPlugin, https: bool) -> Any:
    """An Orthanc REST callback that answers with ``route``.

    Before anything else, :func:`csrf.check` refuses what a page of another
    web site may have made a browser send (403, 415), on every route, with
    the body types the route reads; then :meth:`Route.answer` calls the
    method's handler or answers 405.
    """

    def callback(output: Any, uri: str, **request: Any) -> None:
        try:
            req = Request(
                method=request.get("method", "GET"),
                get=dict(request.get("get", {}) or {}),
                headers={k.lower(): v for k, v in (request.get("headers", {}) or {}).items()},
                body=request.get("body", b"") or b"",
            )
            refusal = csrf.check(
                req.method, req.headers, req.body, route.accepted(req.method), https=https
            )
            if refusal is not None:
                log.warning("Refused %s %s: %s", req.method, uri, refusal.reason)
                _answer(running, output, error(refusal.status, refusal.reason))
                return
            response = route.answer(req, *(request.get("groups", ()) or ()))
        except Exception:
            # The details are for the administrator, not for the caller.
            log.error("REST %s failed: %s", uri, traceback.format_exc())
            response = error(500, "internal error in the DPP plugin; Orthanc's log has the details")
        _answer(running, output, response)

    return callback


def _register(register: Any, callback: Any, *before: Any) -> None:
    """``register(*before, callback)``, keeping ``callback`` alive (see ``_REGISTERED``)."""
    _REGISTERED.append(callback)
    register(*before, callback)


def _install_received_hook(plugin: Plugin) -> None:
    """Orthanc's received-instance hook, where it cannot deadlock.

    Orthanc calls the hook while holding a plugin-wide lock of its own, and
    the Python plugin then waits for the interpreter lock. A plugin thread
    that stores (``RestApiPost /instances``) while holding the interpreter
    lock waits for Orthanc's lock: if the hook is running on another store
    at that moment, neither can go on and Orthanc freezes. So the hook is
    installed only when calls into Orthanc release the interpreter lock,
    unless ``ReceivedInstanceHook`` says otherwise. Our own upload paths
    normalize before storing and do not need it.
    """
    assert plugin.settings is not None
    wanted = plugin.settings.received_instance_hook
    safe = plugin.running.releases_interpreter_lock
    if wanted is False or (wanted == "auto" and not safe):
        if wanted == "auto":
            log.warning(
                "Orthanc's received-instance hook is not installed: this Python plugin keeps "
                'the interpreter lock during calls into Orthanc (set "Python": {"AllowThreads": '
                "true}, Python plugin 4.3 or later), so the hook could freeze Orthanc under "
                "concurrent stores. DPP files without patient/study/series are stored through "
                "the DPP listener and POST /dpp/protocols; Orthanc refuses them on its own "
                "routes and DICOM port"
            )
        return
    if not safe:
        log.warning(
            "ReceivedInstanceHook is true although calls into Orthanc keep the interpreter lock: "
            "concurrent stores can freeze Orthanc"
        )
    _register(plugin.orthanc.RegisterReceivedInstanceCallback, plugin.on_received)
    plugin.received_hook = True


def _extend_orthanc_explorer(orthanc: ModuleType) -> None:
    """Orthanc Explorer's home page gets a button to the protocol library page."""
    try:
        orthanc.ExtendOrthancExplorer(library_page.explorer_extension())
    except Exception as exc:  # the page stays reachable at /dpp/ui/
        log.error("Orthanc Explorer not extended with the protocol library button: %s", exc)


def quiet_pydicom_warnings() -> None:
    """Drop pydicom's warnings about invalid values in this process.

    Peers choose those values (UIDs in an A-ASSOCIATE-RQ, elements of a
    dataset): each distinct one printed two lines to Orthanc's log and
    stayed in the warnings registry for good, so a stranger could grow both
    without limit. What matters of them, the plugin answers in DICOM
    statuses and HTTP errors.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")


def install(orthanc: ModuleType) -> Plugin:
    """Register everything with Orthanc. Called once, while Orthanc loads the script."""
    quiet_pydicom_warnings()
    # Our log lines go to Orthanc's log; pynetdicom's only from WARNING up
    # (it logs every PDU at DEBUG).
    for name, level in (("orthanc_dpp", logging.INFO), ("pynetdicom", logging.WARNING)):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, OrthancLogHandler)]:
            logger.removeHandler(handler)
        logger.addHandler(OrthancLogHandler(orthanc))
        logger.setLevel(level)
        logger.propagate = False

    # The library page's recent activity: the same log lines, kept in memory.
    package_logger = logging.getLogger("orthanc_dpp")
    for old in [h for h in package_logger.handlers if isinstance(h, ActivityLog)]:
        package_logger.removeHandler(old)
    activity = ActivityLog()
    package_logger.addHandler(activity)

    configuration = json.loads(orthanc.GetConfiguration())
    plugin = Plugin(orthanc, configuration, RunningPlugin(orthanc), activity)
    _register(orthanc.RegisterOnChangeCallback, plugin.on_change)
    if plugin.settings is not None:
        _install_received_hook(plugin)
    https = configuration.get("SslEnabled") is True
    for route in plugin.routes():
        _register(orthanc.RegisterRestCallback, _callback(route, plugin.running, https), route.uri)
    _extend_orthanc_explorer(orthanc)
    if plugin.settings is not None:
        log.warning(
            "DPP plugin %s loaded (section %s): AE %s on %s:%d%s",
            __version__,
            SECTION,
            plugin.settings.ae_title,
            plugin.settings.bind_address,
            plugin.settings.port,
            "" if plugin.settings.enabled else " (disabled by Enabled: false)",
        )
    return plugin
