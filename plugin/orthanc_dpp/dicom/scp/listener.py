"""The DPP DICOM listener: a pynetdicom AE on its own port inside Orthanc.

Orthanc's own DICOM port refuses the DPP SOP classes (docs/design.md, fact 1), so
the plugin accepts associations itself. This module knows pynetdicom, not
Orthanc: the service handlers are passed in.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom import tls as tls_module
from orthanc_dpp.dicom.access import Standing
from orthanc_dpp.dicom.admission import Limits
from orthanc_dpp.dicom.connections import ConnectionGuard, set_tcp_nodelay
from orthanc_dpp.dicom.scp.routing import route_dpp_services
from orthanc_dpp.dicom.tls import TlsSettings
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model.key_table import MODELS
from orthanc_dpp.model.sop import STORAGE_CLASSES, TRANSFER_SYNTAXES

log = logging.getLogger("orthanc_dpp.listener")

Handler = Callable[..., Any]


def count_sending_as_activity(event: evt.Event) -> None:
    """Restart the association's network timer after each message the listener sends.

    The timeout is meant for a silent peer, not for a busy listener: without
    this, a C-FIND answer or a C-MOVE that took longer than NetworkTimeout
    to send was aborted right after its final response.
    """
    private.restart_network_timer(event.assoc)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's server with the plugin's admission check and TLS handshake.

    ``verify_request`` (socketserver's hook) admits or closes a connection
    before pynetdicom makes an association and a thread for it. With TLS,
    the socket is wrapped without a handshake: pynetdicom's own server would
    shake hands right after ``accept``, on its single accepting thread and
    without a timeout, so one silent peer would stop every other from
    connecting. Here the handshake happens on the association's first read,
    in its own thread, bounded by the socket's timeout.
    """

    guard: ConnectionGuard | None = None
    tls: ssl.SSLContext | None = None
    handshake_timeout: float = 30.0

    def get_request(self) -> tuple[socket.socket, Any]:
        if self.socket is None:
            raise OSError("the listening socket is closed")
        client, address = self.socket.accept()
        client.settimeout(self.handshake_timeout)
        if self.tls is not None:
            client = self.tls.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.guard is None or self.guard.verify(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Close a connection, unless the guard keeps it to answer a refusal."""
        if self.guard is not None and self.guard.holds(request):
            return
        super().shutdown_request(request)


@dataclass(frozen=True)
class ListenerSettings:
    """What the listener takes from the plugin's settings (built by the adapter).

    Its own type, so the listener depends on these values and not on the
    whole configuration section, nor on the module that parses it.
    """

    ae_title: str
    port: int
    bind_address: str
    check_called_ae_title: bool  # Orthanc's DicomCheckCalledAet, for the DPP port
    maximum_associations: int
    maximum_connections_per_address: int
    unknown_callers_maximum_associations: int
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    maximum_pdu_size: int
    maximum_dataset_size: int
    tls: TlsSettings


@dataclass
class ListenerState:
    """What ``/dpp/status`` shows about the listener."""

    state: str = "stopped"  # stopped | running | failed | disabled
    error: str | None = None
    associations_served: int = 0


class DppListener:
    """Owns the pynetdicom AE; :meth:`start` never raises, it records why it failed."""

    def __init__(
        self,
        settings: ListenerSettings,
        handlers: dict[Any, Handler],
        metrics: Metrics | None = None,
        judge: Callable[[str, str], Standing] | None = None,
    ) -> None:
        """``judge(calling_aet, peer_host)``: the standing of an association
        requestor (``access.Gatekeeper.caller``); without it every caller
        counts as declared."""
        self.settings = settings
        self.handlers = handlers
        self.judge = judge
        self.metrics = metrics or Metrics(enabled=False)
        self._established: set[int] = set()  # associations counted open in the metrics
        # Not self._lock: stop() holds that while association threads close.
        self._established_lock = threading.Lock()
        self.status = ListenerState()
        self._server: ThreadedAssociationServer | None = None
        self._guard: ConnectionGuard | None = None
        self._lock = threading.Lock()

    def _make_ae(self) -> AE:
        s = self.settings
        private.quiet_logging()
        ae = AE(ae_title=s.ae_title)
        # MaximumAssociations is enforced by ConnectionGuard.on_requested,
        # which counts accepted associations only; pynetdicom counts every
        # connection's thread, waiting ones included, so strangers holding
        # silent connections would have made it refuse declared modalities.
        # Its check stays as a backstop far above what the guard lets in.
        ae.maximum_associations = 4 * s.maximum_associations
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_pdu_size = s.maximum_pdu_size
        # Like Orthanc's DicomCheckCalledAet: off unless configured. Calling
        # AEs are checked per service in the handlers, where the reason can
        # be reported in a status.
        ae.require_called_aet = s.check_called_ae_title
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for sop_class in STORAGE_CLASSES:
            # scp_role lets a C-GET requester take the storage SCP role.
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for model in MODELS:
            services = {evt.EVT_C_FIND: model.find, evt.EVT_C_GET: model.get}
            services[evt.EVT_C_MOVE] = model.move
            for event, sop_class in services.items():
                if event in self.handlers:
                    ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        return ae

    def _on_open(self, event: evt.Event) -> None:
        set_tcp_nodelay(event)
        self.status.associations_served += 1

    def _on_established(self, event: evt.Event) -> None:
        with self._established_lock:
            self._established.add(id(event.assoc))
        self.metrics.association_opened()

    def _on_close(self, event: evt.Event) -> None:
        with self._established_lock:
            if id(event.assoc) not in self._established:
                return  # never established: not counted
            self._established.discard(id(event.assoc))
        self.metrics.association_closed()

    def start(self) -> bool:
        """Start serving; return False (and log why) if the port cannot be bound."""
        s = self.settings
        with self._lock:
            if self._server is not None:
                return True
            try:
                private.require()
            except private.PynetdicomChanged as exc:
                return self._failed(str(exc))
            route_dpp_services()  # the handlers' own loops for DPP C-FIND, C-GET and C-MOVE
            ae = self._make_ae()
            guard = ConnectionGuard(
                Limits(
                    acse_timeout=s.acse_timeout,
                    network_timeout=s.network_timeout,
                    maximum_pdu_size=s.maximum_pdu_size,
                    maximum_dataset_size=s.maximum_dataset_size,
                    per_address=s.maximum_connections_per_address,
                    waiting=s.maximum_associations,
                    associations=s.maximum_associations,
                    unknown_associations=s.unknown_callers_maximum_associations,
                ),
                judge=self.judge,
            )
            guard.on_refusal = self.metrics.refusal
            handlers: list[Any] = [
                *guard.handlers(),
                (evt.EVT_CONN_OPEN, self._on_open),
                (evt.EVT_ESTABLISHED, self._on_established),
                (evt.EVT_CONN_CLOSE, self._on_close),
                (evt.EVT_DIMSE_SENT, count_sending_as_activity),
            ]
            handlers += list(self.handlers.items())
            try:
                tls = tls_module.server_context(s.tls) if s.tls.enabled else None
            except (OSError, ValueError) as exc:
                return self._failed(f"DICOM TLS cannot be set up: {exc}")
            try:
                server = cast(
                    GuardedServer,
                    ae.make_server(
                        (s.bind_address, s.port),
                        evt_handlers=handlers,
                        server_class=GuardedServer,
                    ),
                )
            except OSError as exc:
                return self._failed(
                    f"cannot listen on {s.bind_address}:{s.port}: {exc.strerror or exc}"
                )
            server.guard, server.tls, server.handshake_timeout = guard, tls, s.acse_timeout
            private.register_server(ae, server)
            threading.Thread(target=server.serve_forever, name="dpp-listener", daemon=True).start()
            self._server = server
            self._guard = guard
            guard.start()
            self.status.state = "running"
            self.status.error = None
            log.warning(
                "DPP listener %s listening on %s:%d%s",
                s.ae_title,
                s.bind_address,
                s.port,
                " with DICOM TLS" if s.tls.enabled else "",
            )
            return True

    def _failed(self, error: str) -> bool:
        self.status.state = "failed"
        self.status.error = error
        log.error("DPP listener not started: %s", error)
        return False

    def stop(self, grace: float = 5.0) -> None:
        """Stop listening, abort open associations, and wait (boundedly) for their threads."""
        with self._lock:
            if self._server is None:
                return
            server, self._server = self._server, None
            server.shutdown()
            associations = list(server.active_associations)
            # A peer holding an idle association open would otherwise keep
            # Orthanc from exiting.
            for assoc in associations:
                if assoc.is_established:
                    log.warning(
                        "Aborting association with %s at shutdown", assoc.requestor.ae_title
                    )
                    assoc.abort(block=False)
            # Connections stalled in the middle of a PDU: their readers wake
            # up when the socket is shut down.
            if self._guard is not None:
                self._guard.close_all()
            deadline = time.monotonic() + grace
            for assoc in associations:
                assoc.join(max(0.0, deadline - time.monotonic()))
            left = [a for a in associations if a.is_alive()]
            if left:
                log.warning("%d association thread(s) still running at shutdown", len(left))
            self.status.state = "stopped"
            log.warning("DPP listener stopped")
