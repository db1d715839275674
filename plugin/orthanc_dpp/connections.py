"""Deadlines and limits for the connections the DPP listener accepts.

pynetdicom 3.0 reads each PDU with blocking ``recv`` calls on accepted
sockets that have no timeout, before ``MaximumAssociations`` and its own
ACSE and network timers can act: a peer that sends a PDU header and goes
silent (or a half-open connection) keeps an association thread, and its
slot, forever, and when the ACSE timer fires the association thread then
waits for its reader forever too. Twelve such connections locked every
modality out and kept Orthanc from stopping.

:class:`ConnectionGuard` bounds all of that from outside pynetdicom:

- every accepted socket gets a timeout, so a peer silent in the middle of
  a PDU is dropped (``AcseTimeout`` until the association is established,
  ``NetworkTimeout`` after);
- a connection that has not established an association within
  ``AcseTimeout`` is shut down by a watchdog thread (shutting a socket down
  wakes a reader blocked on it);
- connections are limited per remote address, and those still without an
  accepted association in total; over a limit the connection is answered
  with an A-ASSOCIATE-RJ "local limit exceeded" (transient, so modalities
  retry) and closed, before pynetdicom makes an association (and a thread)
  for it (:meth:`ConnectionGuard.verify`). When every waiting place is
  taken, the oldest connection that has waited more than
  :data:`EVICTION_AGE` seconds without an association is dropped for the
  newcomer: silent connections cannot keep a modality out until AcseTimeout;
- associations are admitted when their A-ASSOCIATE-RQ arrives
  (:meth:`ConnectionGuard.on_requested`): a caller without any right is
  rejected permanently; beyond ``MaximumAssociations`` accepted
  associations, or beyond ``UnknownCallersMaximumAssociations`` for callers
  not declared in ``DicomModalities``, transiently ("local limit
  exceeded"). Pending connections never count against these, so strangers
  cannot take the slots kept for declared modalities;
- a PDU announcing more bytes than the listener accepts (``MaximumPduSize``
  for P-DATA, :data:`MAXIMUM_OTHER_PDU` for the rest) is answered with an
  A-ABORT and the connection closed, before any of it is read; so is a
  DIMSE message that passes a limit as soon as the P-DATA-TF that passes
  it arrives (:class:`MessageMeter`): a dataset of more than
  ``MaximumDatasetSize``, a command set of more than
  :data:`MAXIMUM_COMMAND_SIZE`, more fragments than
  :meth:`ConnectionGuard.maximum_fragments` (pynetdicom would otherwise
  collect a message of any size in memory), or a message while
  :data:`MAXIMUM_PENDING_MESSAGES` complete ones wait to be served;
- an A-ASSOCIATE-RQ proposing more than :data:`MAXIMUM_PRESENTATION_CONTEXTS`
  presentation contexts or :data:`MAXIMUM_TRANSFER_SYNTAXES` transfer
  syntaxes is aborted before pynetdicom decodes it (seconds of CPU each);
- what pynetdicom's state machine fails on (an A-ABORT with an invalid
  source, a command set it cannot decode...) is answered with an A-ABORT
  and the connection closed and reported closed, instead of ending its
  reader thread with an uncaught exception and an open socket;
- a connection closed before its association was made ends its
  association thread at once (pynetdicom's would wait AcseTimeout for the
  request, holding a MaximumAssociations slot);
- :meth:`ConnectionGuard.close_all` shuts every socket so that the listener
  stops within seconds whatever the peers do.

The associations the plugin requests itself (queries and retrieves of
another archive, C-MOVE destinations) get the same socket timeouts and PDU
and dataset limits from a guard of their own (:func:`requester_guard`):
pynetdicom clears a requester's socket timeout once connected, so a peer
stalling mid-PDU would otherwise hold the calling thread forever.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Final

from pynetdicom import evt
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ

from orthanc_dpp import pynetdicom_private as private
from orthanc_dpp.access import Caller

log = logging.getLogger("orthanc_dpp.listener")

#: Largest PDU other than P-DATA-TF accepted (an A-ASSOCIATE-RQ with many
#: presentation contexts and user identity is a few KiB).
MAXIMUM_OTHER_PDU = 1 << 20
#: Largest command set accepted, in bytes. A DIMSE command set is a few
#: hundred bytes (the longest the listener is sent, a C-MOVE-RQ or a C-STORE-RQ
#: with its UIDs and Move Originator, stays under 300).
MAXIMUM_COMMAND_SIZE = 16 << 10
#: Fragments allowed per DIMSE message: one per this many bytes of
#: ``MaximumDatasetSize`` (peers send fragments of kilobytes, up to the
#: maximum PDU size), and never fewer than :data:`MINIMUM_FRAGMENTS`.
BYTES_PER_FRAGMENT = 256
MINIMUM_FRAGMENTS = 4096
#: Complete DIMSE messages a peer may have waiting while the listener serves
#: one. Without an Asynchronous Operations Window a peer waits for each
#: answer (PS3.7 D.3.3.3), so a handful is already generous; pynetdicom
#: would queue any number, each up to ``MaximumDatasetSize``.
MAXIMUM_PENDING_MESSAGES = 16
P_DATA_TF = 0x04
A_ASSOCIATE_RQ = 0x01
#: Presentation contexts an A-ASSOCIATE-RQ may propose: their IDs are the odd
#: numbers 1 to 255 (PS3.8 9.3.2.2).
MAXIMUM_PRESENTATION_CONTEXTS = 128
#: Transfer syntaxes an A-ASSOCIATE-RQ may propose in all (a modality proposing
#: every transfer syntax for 128 contexts stays far below). pynetdicom spends
#: about 0.1 ms on each: an unbounded request of 1 MiB took seconds of CPU.
MAXIMUM_TRANSFER_SYNTAXES = 8192
#: The PDU types pynetdicom reads a body for (PS3.8 9.3.1).
PDU_TYPES = frozenset(range(0x01, 0x08))
#: Bytes of the PDU header: type, reserved, length (PS3.8 9.3).
PDU_HEADER = 6
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

Judge = Callable[[str, str], Caller]


class PduTooLarge(OSError):
    """The peer announced a PDU larger than the listener accepts."""


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


def _shut(sock: socket.socket | None) -> None:
    """Shut a socket down from any thread: a reader blocked on it returns at once."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class MessageMeter:
    """What pynetdicom holds of the DIMSE message being received, counted from its PDVs.

    pynetdicom 3.0 appends every command fragment to the message's command
    set and every data fragment to its dataset, without any limit, until the
    message is complete: after the last data fragment, or after the last
    command fragment of a command without a dataset (CommandDataSetType
    0x0101); the PDVs that follow in the same P-DATA-TF are dropped. The
    meter follows the same rules on each P-DATA-TF body before pynetdicom
    sees it, so the listener can refuse the PDU that would pass a limit.
    """

    def __init__(self, maximum_dataset: int, maximum_command: int, maximum_fragments: int) -> None:
        self.maximum_dataset = maximum_dataset  # 0: no limit
        self.maximum_command = maximum_command
        self.maximum_fragments = maximum_fragments
        self._reset()

    def _reset(self) -> None:
        self.command = bytearray()
        self.data = 0
        self.fragments = 0

    def feed(self, body: bytes | bytearray) -> str | None:
        """Count one P-DATA-TF body (PS3.8 9.3.5.1); the limit it passes, or None.

        Each PDV item is a 4-byte length, a context ID and a message control
        header whose bit 0 says command (1) or data (0) and bit 1 says last
        fragment, then the fragment.
        """
        position = 0
        while position + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, position)
            control = body[position + 5]
            fragment = body[position + 6 : position + 4 + item_length]
            position += 4 + item_length
            self.fragments += 1
            if self.fragments > self.maximum_fragments:
                return f"a message in more than {self.maximum_fragments} fragments"
            if control & 0x01:
                self.command += fragment
                if len(self.command) > self.maximum_command:
                    return f"a command set of more than {self.maximum_command} bytes"
                if control & 0x02 and not _has_dataset(self.command):
                    self._reset()
                    return None
            else:
                self.data += len(fragment)
                if self.maximum_dataset and self.data > self.maximum_dataset:
                    return (
                        f"a dataset of more than {self.maximum_dataset} bytes (MaximumDatasetSize)"
                    )
                if control & 0x02:
                    self._reset()
                    return None
        return None


def _has_dataset(command: bytes | bytearray) -> bool:
    """Whether a complete command set announces a dataset, as pynetdicom decides it.

    A command set pynetdicom cannot decode ends the association there, so
    it counts as a complete message.
    """
    try:
        value = decode(BytesIO(bytes(command)), True, True).get("CommandDataSetType")
    except Exception:
        return False
    return value is not None and value != 0x0101


def associate_rq_problem(body: bytes | bytearray) -> str | None:
    """What makes an A-ASSOCIATE-RQ body too costly to negotiate, or None.

    Walks the variable items after the 68 fixed bytes (PS3.8 9.3.2) and the
    sub-items of each presentation context item (type 0x20; transfer syntax
    sub-items are type 0x40); a malformed layout is left to pynetdicom.
    """
    contexts = syntaxes = 0
    position = 68
    while position + 4 <= len(body):
        item_type = body[position]
        (length,) = struct.unpack_from(">H", body, position + 2)
        end = position + 4 + length
        if item_type == 0x20:
            contexts += 1
            sub = position + 8  # context ID and three reserved bytes
            while sub + 4 <= min(end, len(body)):
                if body[sub] == 0x40:
                    syntaxes += 1
                sub += 4 + struct.unpack_from(">H", body, sub + 2)[0]
        position = end
    if contexts > MAXIMUM_PRESENTATION_CONTEXTS:
        return (
            f"an A-ASSOCIATE-RQ with {contexts} presentation contexts "
            f"(at most {MAXIMUM_PRESENTATION_CONTEXTS})"
        )
    if syntaxes > MAXIMUM_TRANSFER_SYNTAXES:
        return (
            f"an A-ASSOCIATE-RQ with {syntaxes} transfer syntaxes "
            f"(at most {MAXIMUM_TRANSFER_SYNTAXES})"
        )
    return None


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


def abort_pdu() -> bytes:
    """An A-ABORT-RQ from the service provider, reason "unexpected PDU parameter"."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x06
    return pdu.encode()


class ConnectionGuard:
    """Tracks accepted connections; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        judge: Judge | None = None,
        requester: bool = False,
    ) -> None:
        """``judge(calling_aet, peer_host)`` says who a requestor is (every caller
        counts as declared, with rights, without one). ``requester``: the
        guarded associations are the plugin's own requests (see
        :meth:`_make_room`)."""
        self.limits = limits
        self.clock = clock
        self.judge = judge
        self.requester = requester
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
        #: Why the guard last aborted an association (for a requester's error message).
        self.refusal: str | None = None

    # -- pynetdicom event handlers -------------------------------------------------

    def handlers(self) -> list[tuple[Any, Callable[[evt.Event], None]]]:
        return [
            (evt.EVT_CONN_OPEN, self.on_open),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_CONN_CLOSE, self.on_close),
        ]

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
            _shut(private.raw_socket(evicted.assoc))
            if request is not None:
                with self._lock:
                    self._incoming[id(request)] = (address, now)
            return True
        with self._lock:
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
        with self._lock:
            self._note("association", host, f"{aet}: {reason} (A-ASSOCIATE-RJ {kind})")
        assoc.acse.send_reject(*rejection)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        # As pynetdicom after its own rejections: wait until the RJ is sent
        # and the connection closed (by the peer, or after the DUL's timer).
        assoc.kill()

    def on_open(self, event: evt.Event) -> None:
        assoc = event.assoc
        peer = getattr(event, "address", None)  # set by pynetdicom for EVT_CONN_OPEN
        address = str(peer[0]) if peer else "?"
        sock = private.raw_socket(assoc)
        with self._lock:
            self._connections[id(assoc)] = _Connection(assoc, address, self.clock())
            self._incoming.pop(id(sock), None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(self.limits.acse_timeout)
            self._limit_pdus(assoc)
            private.on_state_machine_error(assoc, lambda exc: self._broken(assoc, exc))

    def on_established(self, event: evt.Event) -> None:
        with self._lock:
            connection = self._connections.get(id(event.assoc))
            if connection is not None:
                connection.established = True
        sock = private.raw_socket(event.assoc)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(self.limits.network_timeout)

    def on_close(self, event: evt.Event) -> None:
        with self._lock:
            connection = self._connections.pop(id(event.assoc), None)
        if connection is not None and not connection.established:
            # No association was made: its thread must not wait AcseTimeout
            # for a request (and hold a MaximumAssociations slot meanwhile).
            private.wake_acceptor(event.assoc)

    # -- PDU size --------------------------------------------------------------------

    def _limit_pdus(self, assoc: Any) -> None:
        """Check each PDU header before pynetdicom reads the PDU's body.

        pynetdicom's reader asks for the 6-byte header, then for exactly the
        length the header announces; the check sits between the two.
        """
        private.intercept_reads(assoc, lambda read: self._checked_reads(assoc, read))

    def _checked_reads(
        self, assoc: Any, read: Callable[[int], bytearray]
    ) -> Callable[[int], bytearray]:
        header: list[bytes] = [b""]  # the header whose body comes next
        meter = MessageMeter(
            self.limits.maximum_dataset_size, MAXIMUM_COMMAND_SIZE, self.maximum_fragments()
        )

        def recv(count: int) -> bytearray:
            if not header[0]:
                data = read(count)
                # pynetdicom reads the body next only for the PDU types it knows.
                if count == PDU_HEADER and len(data) == PDU_HEADER and data[0] in PDU_TYPES:
                    header[0] = bytes(data)
                return data
            pdu_type, _, length = struct.unpack(">BBL", header[0])
            header[0] = b""
            allowed = self.allowed_pdu(pdu_type)
            if count == length and length > allowed:
                self._refuse_pdu(assoc, pdu_type, length, allowed)
            body = read(count)
            if pdu_type == A_ASSOCIATE_RQ:
                problem = associate_rq_problem(body)
                if problem is not None:
                    self._refuse_message(assoc, problem)
            if pdu_type == P_DATA_TF:
                over = meter.feed(body)
                if over is None and self.requester:
                    self._make_room(assoc)
                elif over is None and private.pending_messages(assoc) >= MAXIMUM_PENDING_MESSAGES:
                    over = (
                        f"a further message ({MAXIMUM_PENDING_MESSAGES} DIMSE messages "
                        "already wait to be served)"
                    )
                if over is not None:
                    self._refuse_message(assoc, over)
            return body

        return recv

    def allowed_pdu(self, pdu_type: int) -> int:
        """Largest length accepted in the header of a PDU of ``pdu_type``.

        Without a MaximumPduSize of ours, a P-DATA-TF still cannot carry more
        than one message's worth: a dataset, a command set and some slack.
        """
        limits = self.limits
        if pdu_type != P_DATA_TF:
            return MAXIMUM_OTHER_PDU
        if limits.maximum_pdu_size:
            # PS3.8 D.1: the maximum length bounds the variable field,
            # which is what the header's length counts.
            return limits.maximum_pdu_size
        if limits.maximum_dataset_size:
            return limits.maximum_dataset_size + MAXIMUM_COMMAND_SIZE + MAXIMUM_OTHER_PDU
        return 1 << 32

    def maximum_fragments(self) -> int:
        """Fragments allowed in one DIMSE message (see :data:`BYTES_PER_FRAGMENT`)."""
        return max(MINIMUM_FRAGMENTS, self.limits.maximum_dataset_size // BYTES_PER_FRAGMENT)

    def _make_room(self, assoc: Any) -> None:
        """On the plugin's own association, wait for the queue to drain rather than abort.

        An archive answering a C-FIND sends its responses without waiting,
        as it should; the plugin takes them off the queue at its own pace.
        Not reading further while :data:`MAXIMUM_PENDING_MESSAGES` wait
        leaves the rest in the socket, and TCP holds the archive back; the
        requester's own limits (answers, bytes, time) end what must end.
        """
        deadline = self.clock() + (self.limits.network_timeout or 60.0)
        while (
            private.pending_messages(assoc) >= MAXIMUM_PENDING_MESSAGES
            and assoc.is_alive()
            and self.clock() < deadline
        ):
            time.sleep(0.005)

    def _refuse_message(self, assoc: Any, what: str) -> None:
        self.refusal = f"{what} was being sent"
        log.warning("Aborted the association with %s: %s", self._mark_dropped(assoc), self.refusal)
        self._abort(assoc)
        raise PduTooLarge(f"{what} refused")

    def _broken(self, assoc: Any, exc: Exception) -> None:
        """pynetdicom failed on what the peer sent: abort and close, with one log line."""
        log.warning(
            "Aborted the association with %s: what it sent could not be processed (%s: %s)",
            self._mark_dropped(assoc),
            type(exc).__name__,
            exc,
        )
        self._abort(assoc)
        private.close_connection(assoc)

    def _mark_dropped(self, assoc: Any) -> str:
        """Mark the connection dropped (the watchdog leaves it alone); its address."""
        with self._lock:
            connection = self._connections.get(id(assoc))
            if connection is None:
                return "?"
            connection.dropped = True
            return connection.address

    def _abort(self, assoc: Any) -> None:
        """An A-ABORT to the peer, then the connection shut down."""
        sock = private.raw_socket(assoc)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(abort_pdu())
        _shut(sock)

    def _refuse_pdu(self, assoc: Any, pdu_type: int, length: int, allowed: int) -> None:
        self.refusal = (
            f"PDU of type 0x{pdu_type:02X} announces {length} bytes, more than the "
            f"{allowed} accepted (MaximumPduSize)"
        )
        log.warning("Aborted the association with %s: %s", self._mark_dropped(assoc), self.refusal)
        self._abort(assoc)
        raise PduTooLarge(f"PDU of {length} bytes refused")

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
            _shut(private.raw_socket(connection.assoc))
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
            _shut(private.raw_socket(connection.assoc))
        self._close_lingering(self.clock(), everything=True)
        if self._thread is not None:
            self._thread.join(5)


def set_tcp_nodelay(event: evt.Event) -> None:
    """Send small PDUs at once: pynetdicom leaves Nagle's algorithm on (docs/design.md, fact 7)."""
    sock = private.raw_socket(event.assoc)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def requester_guard(
    acse_timeout: float, network_timeout: float, maximum_pdu_size: int, maximum_dataset_size: int
) -> ConnectionGuard:
    """A guard for one association the plugin requests: bind ``handlers()`` to it.

    The listener's limits apply as they do to accepted connections: socket
    timeouts (``acse_timeout`` until established, ``network_timeout``
    after), the PDU size announced as our maximum, and the size of each
    DIMSE message's data. No watchdog runs (pynetdicom bounds the
    requester's wait for an A-ASSOCIATE-AC with its own ACSE timer) and no
    admission counts apply.
    """
    return ConnectionGuard(
        Limits(
            acse_timeout=acse_timeout,
            network_timeout=network_timeout,
            maximum_pdu_size=maximum_pdu_size,
            per_address=1,
            waiting=1,
            maximum_dataset_size=maximum_dataset_size,
        ),
        requester=True,
    )
