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
from pathlib import Path
from types import ModuleType
from typing import Any

from orthanc_dpp import __version__
from orthanc_dpp.app import DppApp, OrthancFacts, Ports, status_report
from orthanc_dpp.config import SECTION, ConfigError, parse_settings
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model import usage
from orthanc_dpp.orthanc.logs import OrthancLogHandler, quiet_pydicom_warnings
from orthanc_dpp.orthanc.platform import RunningPlugin
from orthanc_dpp.orthanc.ports import GlobalPropertySnapshots, OrthancRestApi
from orthanc_dpp.orthanc.publisher import MetricsPublisher
from orthanc_dpp.rest import csrf
from orthanc_dpp.rest import page as library_page
from orthanc_dpp.rest.activity import ActivityLog
from orthanc_dpp.rest.http import Request, Response, error
from orthanc_dpp.rest.routes import Route, invalid_configuration
from orthanc_dpp.storage.library import StoreError, normalize_received

log = logging.getLogger("orthanc_dpp")

#: Every callable handed to Orthanc, kept alive until the interpreter ends.
#: Python plugins 4.3 and later drop their references to REST callbacks
#: while finalizing without holding the interpreter lock; if that released
#: the last reference, the callback would be deallocated without a thread
#: state and Orthanc would crash on every stop (SIGSEGV, measured on 1.12.7
#: and 1.13.0). With this reference the plugin's release only decrements.
_REGISTERED: list[Any] = []


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
        ports = Ports(
            self.api,
            GlobalPropertySnapshots(orthanc),
            self.activity,
            self.running,
            usage_snapshots=GlobalPropertySnapshots(orthanc, usage.PROPERTY),
        )
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
