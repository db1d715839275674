"""The one module that talks to Orthanc's ``orthanc`` module.

:func:`install` is called by the entry script with the real ``orthanc``
module (tests may pass a fake with the same API). It parses the
configuration, builds the :class:`~orthanc_dpp.app.DppApp` (the composition
root) with the ports that reach Orthanc, registers the callbacks and REST
routes, and hands Orthanc's events to the app. Nothing here may raise into
Orthanc: an exception while Orthanc loads the script stops Orthanc, one in a
callback fails that request only.

What differs between Python plugins is found out by
:class:`~orthanc_dpp.orthanc.platform.RunningPlugin`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from orthanc_dpp import __version__, csrf, library_page, snapshot
from orthanc_dpp.activity import ActivityLog
from orthanc_dpp.app import DppApp, OrthancFacts, Ports, status_report
from orthanc_dpp.config import SECTION, ConfigError, parse_settings
from orthanc_dpp.http_messages import Request, Response, error
from orthanc_dpp.library import (
    OrthancError,
    StoreError,
    normalize_received,
)
from orthanc_dpp.metrics import METRICS, Metrics
from orthanc_dpp.orthanc.platform import RunningPlugin
from orthanc_dpp.routes import Route, invalid_configuration

log = logging.getLogger("orthanc_dpp")

#: Seconds between two publications of the plugin's metrics.
METRICS_INTERVAL = 1.0


#: Every callable handed to Orthanc, kept alive until the interpreter ends.
#: Python plugins 4.3 and later drop their references to REST callbacks
#: while finalizing without holding the interpreter lock; if that released
#: the last reference, the callback would be deallocated without a thread
#: state and Orthanc would crash on every stop (SIGSEGV, measured on 1.12.7
#: and 1.13.0). With this reference the plugin's release only decrements.
_REGISTERED: list[Any] = []


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
    """The Orthanc side of the plugin: its glue around one :class:`DppApp`.

    ``app`` is None when the configuration is invalid: then only the routes
    of :func:`invalid_configuration` answer, and Orthanc's events do nothing.
    """

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
        self.facts = OrthancFacts.from_configuration(configuration)
        self.config_errors: list[str] = []
        self.app: DppApp | None = None
        self.publisher: MetricsPublisher | None = None
        self.api = OrthancRestApi(orthanc)  # the library stores through it; on_received asks it
        try:
            settings = parse_settings(configuration, configuration_folder(orthanc))
        except ConfigError as exc:
            self.config_errors = exc.errors
            for message in exc.errors:
                log.error("Configuration error, DPP listener not started: %s", message)
            return
        ports = Ports(self.api, GlobalPropertySnapshots(orthanc), self.activity, self.running)
        app = self.app = DppApp(
            settings, self.facts, ports, Metrics(enabled=self.facts.metrics_enabled)
        )
        if app.metrics.enabled:
            self.publisher = MetricsPublisher(orthanc, app.metrics, lambda: len(app.index))

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Orthanc's change callback: only hands work to threads, returns at once."""
        o = self.orthanc
        if change_type == o.ChangeType.ORTHANC_STARTED:
            self.start()
        elif change_type == o.ChangeType.ORTHANC_STOPPED:
            self.stop()
        elif self.app is None:
            return
        elif change_type == o.ChangeType.NEW_INSTANCE:
            self.app.new_instance()
        elif change_type == o.ChangeType.DELETED and level == o.ResourceType.INSTANCE:
            self.app.deleted(resource_id)
        elif change_type == o.ChangeType.UPDATED_MODALITIES:
            self.app.modalities_changed()

    def start(self) -> None:
        if self.app is not None and self.app.started() and self.publisher is not None:
            self.publisher.start()

    def stop(self) -> None:
        """Stop every thread of ours before Orthanc finalizes the Python plugin."""
        if self.app is not None:
            self.app.stopped()
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
        if self.app is None or self.api.posting_instances():
            return actions.KEEP_AS_IS, None  # our own stores are normalized already
        try:
            normalized = normalize_received(data, self.app.settings.normalization, self.app.limits)
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
        if self.app is None:
            return invalid_configuration(self.config_errors, self.activity, self.status)
        return self.app.routes()

    def status(self) -> dict[str, Any]:
        """``/dpp/status`` of an invalid configuration (a valid one has ``DppApp.status``)."""
        if self.app is not None:
            return self.app.status()
        return status_report(None, self.config_errors, self.running, False)


def configuration_folder(orthanc: ModuleType) -> Path:
    """The folder relative file names of the configuration are taken from."""
    path = Path(os.path.abspath(orthanc.GetConfigurationPath() or "."))
    return path if path.is_dir() else path.parent


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


def _install_received_hook(plugin: Plugin, app: DppApp) -> None:
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
    wanted = app.settings.received_instance_hook
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
    app.received_hook = True


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
    app = plugin.app
    if app is not None:
        _install_received_hook(plugin, app)
    for route in plugin.routes():
        _register(
            orthanc.RegisterRestCallback,
            _callback(route, plugin.running, plugin.facts.https),
            route.uri,
        )
    _extend_orthanc_explorer(orthanc)
    if app is not None:
        log.warning(
            "DPP plugin %s loaded (section %s): AE %s on %s:%d%s",
            __version__,
            SECTION,
            app.settings.ae_title,
            app.settings.bind_address,
            app.settings.port,
            "" if app.settings.enabled else " (disabled by Enabled: false)",
        )
    return plugin
