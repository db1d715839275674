"""Which connections and associations the DPP listener lets in, and the watchdog.

pynetdicom 3.0 makes an association (and a thread) for every accepted
connection and counts ``MaximumAssociations`` over all of them, waiting or
not: silent peers could take every slot, strangers those kept for declared
modalities. :class:`Admission` decides instead, before pynetdicom acts
(:class:`~orthanc_dpp.dicom.connections.ConnectionGuard` adds the socket and PDU
limits to it):

- connections are limited per remote address, and those still without an
  accepted association in total; over a limit the connection is answered
  with an A-ASSOCIATE-RJ "local limit exceeded" (transient, so modalities
  retry) and closed, before pynetdicom makes an association (and a thread)
  for it (:meth:`Admission.verify`). When every waiting place is
  taken, the oldest connection that has waited more than
  :data:`EVICTION_AGE` seconds without an association is dropped for the
  newcomer: silent connections cannot keep a modality out until AcseTimeout;
- associations are admitted when their A-ASSOCIATE-RQ arrives
  (:meth:`Admission.on_requested`): a caller without any right is
  rejected permanently; beyond ``MaximumAssociations`` accepted
  associations, or beyond ``UnknownCallersMaximumAssociations`` for callers
  not declared in ``DicomModalities``, transiently ("local limit
  exceeded"). Pending connections never count against these, so strangers
  cannot take the slots kept for declared modalities;
- a connection that has not established an association within
  ``AcseTimeout`` is shut down by a watchdog thread (shutting a socket down
  wakes a reader blocked on it);
- a connection closed before its association was made ends its
  association thread at once (pynetdicom's would wait AcseTimeout for the
  request, holding a MaximumAssociations slot);
- refusals are logged at most every :data:`REFUSAL_LOG_INTERVAL` seconds
  per address and kind, with their count: a peer that keeps knocking
  cannot flood the log.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RJ

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.access import Standing

log = logging.getLogger("orthanc_dpp.listener")

#: Seconds between sweeps of the watchdog thread.
SWEEP_INTERVAL = 0.25
#: Seconds between two log lines about refusals from one address.
REFUSAL_LOG_INTERVAL = 10.0
#: Addresses whose refusals are counted at once (memory stays bounded).
MAXIMUM_REFUSING_ADDRESSES = 1024
#: Seconds a connection may wait for its association before a newcomer may
#: take its place when every waiting place is taken (a modality sends its
#: A-ASSOCIATE-RQ within milliseconds of connecting).
EVICTION_AGE = 2.0
#: Seconds a connection admitted by ``verify`` is counted before its
#: association thread has opened it (normally a fraction of a millisecond).
INCOMING_AGE = 5.0

#: A-ASSOCIATE-RJ (PS3.8 9.3.4) result, source and reason: rejected-transient,
#: service-provider (presentation), local-limit-exceeded. A modality retries.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
#: rejected-permanent, service-user, calling-AE-title-not-recognized.
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
#: rejected-permanent, service-user, no-reason-given.
PERMANENTLY_REFUSED = (0x01, 0x01, 0x01)

#: Seconds a connection refused before its association stays open to be
#: answered with an A-ASSOCIATE-RJ and closed by its peer, and how many may
#: at once (beyond, they are closed without an answer).
LINGER = 5.0
MAXIMUM_LINGERING = 64

#: Log line of each kind of refusal, with its count, address and reason.
_REFUSAL_LINES: Final = {
    "connection": "Refused %d connection(s) from %s: %s",
    "association": "Rejected %d association request(s) from %s: %s",
    "evicted": "Dropped %d waiting connection(s) from %s to make room for a new connection: %s",
}

Judge = Callable[[str, str], Standing]


@dataclass
class Limits:
    """What the guard enforces (from the plugin's settings)."""

    acse_timeout: float
    network_timeout: float
    maximum_pdu_size: int  # 0: no limit of our own for P-DATA
    per_address: int
    waiting: int  # connections without an accepted association, at once
    maximum_dataset_size: int = 0  # 0: no limit on one DIMSE message's data
    associations: int = 0  # accepted associations at once; 0: no limit of ours
    unknown_associations: int = 0  # of which from undeclared callers; 0: no own limit


@dataclass
class _Connection:
    assoc: Any
    address: str
    opened: float
    established: bool = False
    dropped: bool = False
    admitted: bool = False  # its A-ASSOCIATE-RQ was let through
    declared: bool = False  # ... from a caller declared in DicomModalities


@dataclass
class _Refusals:
    count: int = 0
    logged_at: float = field(default=-REFUSAL_LOG_INTERVAL)


def shut_down(sock: socket.socket | None) -> None:
    """Shut a socket down from any thread: a reader blocked on it returns at once."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = result, source, reason
    return pdu.encode()


@dataclass
class _Refused:
    """A connection refused before its association, waiting for its A-ASSOCIATE-RQ.

    The A-ASSOCIATE-RJ answers the request: sent (with a FIN) before the
    requestor has even sent it, it raced pynetdicom's requestor, which
    then took the closed connection for an abort (several refusals in
    sixty on loopback); and closing with the request arriving after would
    answer it with a reset that can destroy the RJ unread.
    """

    sock: socket.socket
    deadline: float
    answered: bool = False

    def step(self) -> bool:
        """Read what the peer sent, answer its request once; whether the connection is done."""
        try:
            for _ in range(16):  # bounded: a peer streaming data is cut off at its deadline
                data = self.sock.recv(65536)
                if not data:
                    return True
                if not self.answered:
                    self.answered = True
                    self.sock.send(reject_pdu(*LOCAL_LIMIT_EXCEEDED))
                    self.sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return False


class Admission:
    """Tracks accepted connections, admits them and their associations; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        judge: Judge | None = None,
    ) -> None:
        """``judge(calling_aet, peer_host)`` says who a requestor is (every caller
        counts as declared, with rights, without one)."""
        self.limits = limits
        self.clock = clock
        self.judge = judge
        self._connections: dict[int, _Connection] = {}
        # Admitted by verify, not yet opened by their association thread
        # (id of the socket -> address, time): counted, or a burst of
        # connections would pass the limits before the first one is opened.
        self._incoming: dict[int, tuple[str, float]] = {}
        self._refusals: dict[str, _Refusals] = {}
        self._lingering: list[_Refused] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Told of each refusal by its kind (``metrics.REFUSALS``): the listener's
        #: counters; the log lines of :meth:`_note` are rate-limited, these are not.
        self.on_refusal: Callable[[str], None] | None = None

    # -- admission -------------------------------------------------------------------

    def verify(self, request: Any, client_address: Any) -> bool:
        """``socketserver``'s ``verify_request``: admit a new connection or close it.

        Called on the server thread before pynetdicom makes an association
        (and a thread) for the connection, so a refused one costs nothing
        but its A-ASSOCIATE-RJ. Connections whose association was accepted
        count only against the per-address limit: the associations
        themselves are limited in :meth:`on_requested`.
        """
        address = str(client_address[0]) if client_address else "?"
        evicted: _Connection | None = None
        with self._lock:
            self._prune()
            now = self.clock()
            self._incoming = {k: v for k, v in self._incoming.items() if now - v[1] < INCOMING_AGE}
            live = [c for c in self._connections.values() if not c.dropped]
            same = sum(1 for c in live if c.address == address)
            same += sum(1 for a, _ in self._incoming.values() if a == address)
            waiting = [c for c in live if not c.admitted]
            stale = [c for c in waiting if now - c.opened > EVICTION_AGE]
            if same >= self.limits.per_address:
                reason = (
                    f"{same} connections from {address} already open "
                    f"(MaximumConnectionsPerAddress {self.limits.per_address})"
                )
            elif len(waiting) + len(self._incoming) < self.limits.waiting:
                if request is not None:
                    self._incoming[id(request)] = (address, now)
                return True
            elif stale:
                evicted = min(stale, key=lambda c: c.opened)
                evicted.dropped = True
                self._counted("evicted")
                self._note(
                    "evicted",
                    evicted.address,
                    f"no association after {now - evicted.opened:.0f} s, "
                    f"{len(waiting)} connections waiting (limit {self.limits.waiting}: "
                    "MaximumAssociations)",
                )
            else:
                reason = (
                    f"{len(waiting)} connections waiting for an association "
                    f"(limit {self.limits.waiting}: MaximumAssociations)"
                )
        if evicted is not None:
            shut_down(private.raw_socket(evicted.assoc))
            if request is not None:
                with self._lock:
                    self._incoming[id(request)] = (address, now)
            return True
        with self._lock:
            self._counted("connection")
            self._note("connection", address, reason)
            # A plain connection gets its A-ASSOCIATE-RJ from the watchdog
            # (see _Refused); a TLS one would first need the handshake the
            # refusal saves, so it is closed (by socketserver) at once.
            plain = isinstance(request, socket.socket) and not isinstance(request, ssl.SSLSocket)
            if plain and len(self._lingering) < MAXIMUM_LINGERING:
                with contextlib.suppress(OSError):
                    request.setblocking(False)
                    self._lingering.append(_Refused(request, self.clock() + LINGER))
        return False

    def holds(self, sock: Any) -> bool:
        """Whether a refused connection is the guard's to answer and close."""
        with self._lock:
            return any(r.sock is sock for r in self._lingering)

    def admit(self, assoc: Any, declared: bool) -> str | None:
        """Count ``assoc`` among the accepted associations, or say why it may not be.

        Only associations let through here count, so connections still
        waiting for theirs (or refused) never take a slot; callers not
        declared in the modality list share ``unknown_associations`` of them.
        """
        limits = self.limits
        with self._lock:
            self._prune()
            admitted = [c for c in self._connections.values() if c.admitted and not c.dropped]
            if limits.associations and len(admitted) >= limits.associations:
                return (
                    f"{len(admitted)} associations open (MaximumAssociations {limits.associations})"
                )
            unknown = sum(1 for c in admitted if not c.declared)
            share = limits.unknown_associations
            if not declared and share and unknown >= share:
                return (
                    f"{unknown} associations of callers not in DicomModalities open "
                    f"(UnknownCallersMaximumAssociations {share})"
                )
            connection = self._connections.get(id(assoc))
            if connection is not None:
                connection.admitted, connection.declared = True, declared
        return None

    def on_requested(self, event: evt.Event) -> None:
        """Accept the A-ASSOCIATE-RQ for negotiation, or answer it with an A-ASSOCIATE-RJ.

        A caller without any right is rejected permanently (it would be
        refused every service anyway); a caller over its limit transiently.
        pynetdicom skips its negotiation after a rejection sent from this
        event, and its own checks (``CheckCalledAETitle``) follow.
        """
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        aet = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        host = str(assoc.requestor.address)
        declared = True
        rejection = LOCAL_LIMIT_EXCEEDED
        try:
            caller = self.judge(aet, host) if self.judge else None
        except Exception:
            # Not fail-open: counted among the unknown callers, the
            # services judge every request again anyway.
            log.exception("Cannot judge the association request of %s from %s", aet, host)
            caller, declared = None, False
        if caller is not None and not caller.rights:
            reason = caller.reason
            rejection = PERMANENTLY_REFUSED if caller.declared else CALLING_AE_NOT_RECOGNIZED
        else:
            refusal = self.admit(assoc, caller.declared if caller is not None else declared)
            if refusal is None:
                return
            reason = refusal
        kind = "transient" if rejection == LOCAL_LIMIT_EXCEEDED else "permanent"
        self._counted("busy" if rejection == LOCAL_LIMIT_EXCEEDED else "rejected")
        with self._lock:
            self._note("association", host, f"{aet}: {reason} (A-ASSOCIATE-RJ {kind})")
        assoc.acse.send_reject(*rejection)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        # As pynetdicom after its own rejections: wait until the RJ is sent
        # and the connection closed (by the peer, or after the DUL's timer).
        assoc.kill()

    def on_open(self, event: evt.Event) -> None:
        """Track the connection from now on (it no longer counts as incoming)."""
        assoc = event.assoc
        peer = getattr(event, "address", None)  # set by pynetdicom for EVT_CONN_OPEN
        address = str(peer[0]) if peer else "?"
        sock = private.raw_socket(assoc)
        with self._lock:
            self._connections[id(assoc)] = _Connection(assoc, address, self.clock())
            self._incoming.pop(id(sock), None)

    def on_established(self, event: evt.Event) -> None:
        """The connection has its association: the watchdog leaves it alone."""
        with self._lock:
            connection = self._connections.get(id(event.assoc))
            if connection is not None:
                connection.established = True

    def on_close(self, event: evt.Event) -> None:
        with self._lock:
            connection = self._connections.pop(id(event.assoc), None)
        if connection is not None and not connection.established:
            # No association was made: its thread must not wait AcseTimeout
            # for a request (and hold a MaximumAssociations slot meanwhile).
            private.wake_acceptor(event.assoc)

    def _mark_dropped(self, assoc: Any) -> str:
        """Mark the connection dropped (the watchdog leaves it alone); its address."""
        with self._lock:
            connection = self._connections.get(id(assoc))
            if connection is None:
                return "?"
            connection.dropped = True
            return connection.address

    # -- the watchdog ----------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dpp-connection-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            self.sweep()

    def sweep(self) -> list[str]:
        """Drop connections without an association after AcseTimeout; return their addresses.

        Also answers refused connections whose A-ASSOCIATE-RQ has arrived,
        and closes them when their peer has, or their :data:`LINGER` time is over.
        """
        now = self.clock()
        self._close_lingering(now)
        late: list[_Connection] = []
        with self._lock:
            self._prune()
            for connection in self._connections.values():
                overdue = now - connection.opened > self.limits.acse_timeout
                if not connection.established and not connection.dropped and overdue:
                    connection.dropped = True
                    late.append(connection)
        for connection in late:
            log.warning(
                "Dropped the connection from %s: no association within AcseTimeout (%g s)",
                connection.address,
                self.limits.acse_timeout,
            )
            shut_down(private.raw_socket(connection.assoc))
        return [c.address for c in late]

    def _close_lingering(self, now: float, everything: bool = False) -> None:
        with self._lock:
            lingering, self._lingering = self._lingering, []
        kept = []
        for refused in lingering:
            if refused.step() or everything or now >= refused.deadline:
                refused.sock.close()
            else:
                kept.append(refused)
        with self._lock:
            self._lingering += kept

    def _prune(self) -> None:
        """Forget connections whose association thread has ended (lock held)."""
        for key in [k for k, c in self._connections.items() if not c.assoc.is_alive()]:
            connection = self._connections[key]
            # A thread not started yet is not alive either: keep fresh ones.
            if connection.dropped or self.clock() - connection.opened > 1.0:
                del self._connections[key]

    def _counted(self, kind: str) -> None:
        """Tell :attr:`on_refusal` of one refusal; counting never fails a refusal."""
        if self.on_refusal is not None:
            try:
                self.on_refusal(kind)
            except Exception:
                log.exception("Cannot count a refusal of kind %s", kind)

    def _note(self, kind: str, address: str, reason: str) -> None:
        """Log refusals of one kind from one address at most every REFUSAL_LOG_INTERVAL s.

        (Lock held.) A peer that keeps knocking gets a count, not a line per knock.
        """
        now = self.clock()
        if len(self._refusals) > MAXIMUM_REFUSING_ADDRESSES:  # many sources: keep it bounded
            self._refusals = {
                a: r
                for a, r in self._refusals.items()
                if now - r.logged_at < REFUSAL_LOG_INTERVAL or r.count
            }
            if len(self._refusals) > MAXIMUM_REFUSING_ADDRESSES:
                self._refusals.clear()
        refusals = self._refusals.setdefault(f"{kind} {address}", _Refusals())
        refusals.count += 1
        if now - refusals.logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(_REFUSAL_LINES[kind], refusals.count, address, reason)
            refusals.count, refusals.logged_at = 0, now

    def open_connections(self) -> int:
        with self._lock:
            self._prune()
            return len(self._connections)

    def close_all(self) -> None:
        """Shut every tracked socket down and stop the watchdog (listener stop)."""
        self._stop.set()
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.dropped = True
            shut_down(private.raw_socket(connection.assoc))
        self._close_lingering(self.clock(), everything=True)
        if self._thread is not None:
            self._thread.join(5)
