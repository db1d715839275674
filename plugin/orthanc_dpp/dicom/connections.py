"""Deadlines and limits for the connections the DPP listener accepts.

pynetdicom 3.0 reads each PDU with blocking ``recv`` calls on accepted
sockets that have no timeout, before ``MaximumAssociations`` and its own
ACSE and network timers can act: a peer that sends a PDU header and goes
silent (or a half-open connection) keeps an association thread, and its
slot, forever, and when the ACSE timer fires the association thread then
waits for its reader forever too. Twelve such connections locked every
modality out and kept Orthanc from stopping.

:class:`ConnectionGuard` bounds all of that from outside pynetdicom. Which
connections and associations are let in at all, and the watchdog that
drops those without an association after ``AcseTimeout``, are its
:class:`~orthanc_dpp.dicom.admission.Admission` part; here:

- every accepted socket gets a timeout, so a peer silent in the middle of
  a PDU is dropped (``AcseTimeout`` until the association is established,
  ``NetworkTimeout`` after);
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
import struct
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pynetdicom import evt
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ABORT_RQ

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.admission import Admission, Judge, Limits, shut_down

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


class PduTooLarge(OSError):
    """The peer announced a PDU larger than the listener accepts."""


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


def abort_pdu() -> bytes:
    """An A-ABORT-RQ from the service provider, reason "unexpected PDU parameter"."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x06
    return pdu.encode()


class ConnectionGuard(Admission):
    """Admission, plus socket timeouts and PDU and message limits; see the module docstring."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        judge: Judge | None = None,
        requester: bool = False,
    ) -> None:
        """``judge``: see :class:`~orthanc_dpp.dicom.admission.Admission`. ``requester``: the
        guarded associations are the plugin's own requests (see
        :meth:`_make_room`)."""
        super().__init__(limits, clock, judge)
        self.requester = requester
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

    def on_open(self, event: evt.Event) -> None:
        super().on_open(event)
        assoc = event.assoc
        sock = private.raw_socket(assoc)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(self.limits.acse_timeout)
            self._limit_pdus(assoc)
            private.on_state_machine_error(assoc, lambda exc: self._broken(assoc, exc))

    def on_established(self, event: evt.Event) -> None:
        super().on_established(event)
        sock = private.raw_socket(event.assoc)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(self.limits.network_timeout)

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

    def _abort(self, assoc: Any) -> None:
        """An A-ABORT to the peer, then the connection shut down."""
        self._counted("aborted")
        sock = private.raw_socket(assoc)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(abort_pdu())
        shut_down(sock)

    def _refuse_pdu(self, assoc: Any, pdu_type: int, length: int, allowed: int) -> None:
        self.refusal = (
            f"PDU of type 0x{pdu_type:02X} announces {length} bytes, more than the "
            f"{allowed} accepted (MaximumPduSize)"
        )
        log.warning("Aborted the association with %s: %s", self._mark_dropped(assoc), self.refusal)
        self._abort(assoc)
        raise PduTooLarge(f"PDU of {length} bytes refused")


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
