"""The one module that talks to Orthanc's ``orthanc`` module.

:func:`install` is called by the entry script with the real ``orthanc``
module (tests may pass a fake with the same API). It parses the
configuration, registers the callbacks and REST routes, and starts the DPP
listener and the index feed when Orthanc reports ORTHANC_STARTED. Nothing
here may raise into Orthanc: an exception during loading stops Orthanc
(DESIGN.md fact 9), one in a callback fails that request only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from types import ModuleType
from typing import Any

from pynetdicom import evt

from orthanc_dpp import __version__, snapshot
from orthanc_dpp.access import AccessPolicy
from orthanc_dpp.config import SECTION, ConfigError, Settings, parse_settings
from orthanc_dpp.feed import IndexFeed
from orthanc_dpp.index import ProtocolIndex
from orthanc_dpp.library import (
    IndexedSource,
    OrthancError,
    ProtocolLibrary,
    Stored,
    StoreError,
    normalize_received,
)
from orthanc_dpp.listener import DppListener
from orthanc_dpp.modalities import ModalityRegistry, matching_options
from orthanc_dpp.rest import DppRestApi, Request, Response, error, json_response
from orthanc_dpp.retrieve import make_retrieve_handlers
from orthanc_dpp.scp import Gatekeeper, make_echo_handler, make_find_handler, make_store_handler

log = logging.getLogger("orthanc_dpp")

#: Seconds between re-reads of Orthanc's modality list (besides the
#: UPDATED_MODALITIES event, which this node's own changes raise).
MODALITY_REFRESH = 30.0


class OrthancLogHandler(logging.Handler):
    """Send Python log records to Orthanc's log, prefixed so they are findable."""

    def __init__(self, orthanc: ModuleType) -> None:
        super().__init__()
        self.orthanc = orthanc

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = "DPP: " + self.format(record)
            if record.levelno >= logging.ERROR:
                self.orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self.orthanc.LogWarning(message)
            else:
                self.orthanc.LogInfo(message)
        except Exception:  # logging must never break a caller
            pass


class OrthancRestApi:
    """:class:`orthanc_dpp.library.OrthancApi` over the in-process REST API."""

    def __init__(self, orthanc: ModuleType) -> None:
        self.orthanc = orthanc

    def _call(self, method: str, uri: str, *args: Any) -> Any:
        function = getattr(self.orthanc, f"RestApi{method.title()}")
        try:
            return function(uri, *args)
        except self.orthanc.OrthancException as exc:
            raise OrthancError(method, uri, str(exc)) from exc

    def get(self, uri: str) -> bytes:
        return self._call("GET", uri)

    def post(self, uri: str, body: bytes) -> bytes:
        return self._call("POST", uri, body)

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


class Plugin:
    """Everything the plugin runs, wired together."""

    def __init__(self, orthanc: ModuleType, configuration: dict[str, Any]) -> None:
        self.orthanc = orthanc
        self.configuration = configuration
        self.config_errors: list[str] = []
        self.settings: Settings | None = None
        self.index = ProtocolIndex()
        self.listener: DppListener | None = None
        self.feed: IndexFeed | None = None
        try:
            self.settings = parse_settings(configuration)
        except ConfigError as exc:
            self.config_errors = exc.errors
            for message in exc.errors:
                log.error("Configuration error, DPP listener not started: %s", message)
            return
        settings = self.settings
        self.library = ProtocolLibrary(OrthancRestApi(orthanc), settings.normalization)
        self.feed = IndexFeed(
            self.library,
            self.index,
            poll_interval=settings.change_poll_interval,
            reconcile_interval=settings.reconcile_interval,
            on_tick=self.refresh_modalities,
            snapshots=GlobalPropertySnapshots(orthanc),
            snapshot_interval=settings.snapshot_interval,
        )
        # Peers and move destinations: Orthanc's own modality list, re-read
        # on UPDATED_MODALITIES and every MODALITY_REFRESH seconds.
        self.modalities = ModalityRegistry()
        self._modalities_due = 0.0
        policy = AccessPolicy.from_orthanc(configuration, settings.unknown_callers)
        gate = Gatekeeper(self.modalities, policy)
        handlers = {
            evt.EVT_C_ECHO: make_echo_handler(gate),
            evt.EVT_C_STORE: make_store_handler(self.library, gate, self.on_stored),
            evt.EVT_C_FIND: make_find_handler(
                self.index,
                gate,
                max_results=settings.maximum_find_results,
                is_ready=lambda: bool(self.feed and self.feed.ready),
            ),
            **make_retrieve_handlers(
                IndexedSource(self.index, self.library),
                self.modalities,
                policy,
                report_missing=settings.report_missing_instances,
                pending_interval=settings.pending_response_interval,
            ),
        }
        self.listener = DppListener(settings, handlers)
        if not settings.enabled:
            self.listener.status.state = "disabled"
        self.rest = DppRestApi(
            self.library, self.index, self.status, self.on_stored, self.on_deleted
        )

    # -- events --------------------------------------------------------------

    def on_stored(self, stored: Stored) -> None:
        if stored.dataset is not None and stored.orthanc_id:
            self.index.put(stored.orthanc_id, stored.dataset)

    def on_deleted(self, orthanc_id: str) -> None:
        self.index.remove(orthanc_id)

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
            self.refresh_modalities(force=True)
            listener.start()

        # On a thread: the modality list comes from Orthanc's REST API, which
        # a change callback must not call, and no socket problem may ever
        # hold Orthanc's callback thread.
        threading.Thread(target=start_listener, name="dpp-listener-start").start()
        self.feed.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.feed is not None:
            self.feed.stop()

    def on_received(self, data: bytes, origin: Any) -> tuple[Any, bytes | None]:
        """Orthanc's received-instance hook: normalize DPP files from any path."""
        actions = self.orthanc.ReceivedInstanceAction
        if self.settings is None:
            return actions.KEEP_AS_IS, None
        try:
            normalized = normalize_received(data, self.settings.normalization)
        except StoreError as exc:
            log.error("Received DPP instance not normalized: %s", exc.reason)
            return actions.KEEP_AS_IS, None
        except Exception:
            log.error("Received-instance hook failed: %s", traceback.format_exc())
            return actions.KEEP_AS_IS, None
        if normalized is None:
            return actions.KEEP_AS_IS, None
        return actions.MODIFY, normalized

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.settings
        listener = self.listener.status if self.listener else None
        feed = self.feed
        return {
            "Version": __version__,
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
                "LastError": feed.last_error if feed else None,
            },
            "Protocols": {
                "Total": len(self.index),
                "BySOPClass": self.index.counts_by_sop_class(),
            },
        }


def _answer(output: Any, response: Response) -> None:
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
        # Python plugin 4.0 takes the body as str plus its length; only our
        # JSON error bodies go this way.
        text = response.body.decode("utf-8", "replace")
        output.SendHttpStatus(response.status, text, len(text.encode()))


def _route(plugin: Plugin, handler_name: str) -> Any:
    """An Orthanc REST callback that calls ``plugin.rest.<handler_name>``."""

    def callback(output: Any, uri: str, **request: Any) -> None:
        try:
            if plugin.settings is None:
                if handler_name != "status":
                    _answer(
                        output,
                        error(
                            503, "DPP plugin configuration is invalid", Errors=plugin.config_errors
                        ),
                    )
                    return
                _answer(output, json_response(200, plugin.status()))
                return
            req = Request(
                method=request.get("method", "GET"),
                get=dict(request.get("get", {}) or {}),
                headers={k.lower(): v for k, v in (request.get("headers", {}) or {}).items()},
                body=request.get("body", b"") or b"",
            )
            groups = request.get("groups", ()) or ()
            response = getattr(plugin.rest, handler_name)(req, *groups)
        except Exception as exc:
            log.error("REST %s failed: %s", uri, traceback.format_exc())
            response = error(500, f"internal error: {exc}")
        _answer(output, response)

    return callback


ROUTES = {
    "/dpp/status": "status",
    "/dpp/protocols": "protocols",
    "/dpp/protocols/([^/]+)": "protocol",
    "/dpp/protocols/([^/]+)/file": "protocol_file",
}


def install(orthanc: ModuleType) -> Plugin:
    """Register everything with Orthanc. Called once, while Orthanc loads the script."""
    # Our log lines go to Orthanc's log; pynetdicom's only from WARNING up
    # (it logs every PDU at DEBUG).
    for name, level in (("orthanc_dpp", logging.INFO), ("pynetdicom", logging.WARNING)):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, OrthancLogHandler)]:
            logger.removeHandler(handler)
        logger.addHandler(OrthancLogHandler(orthanc))
        logger.setLevel(level)
        logger.propagate = False

    configuration = json.loads(orthanc.GetConfiguration())
    plugin = Plugin(orthanc, configuration)
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    orthanc.RegisterReceivedInstanceCallback(plugin.on_received)
    for uri, name in ROUTES.items():
        orthanc.RegisterRestCallback(uri, _route(plugin, name))
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
