"""Every use of pynetdicom's private API, behind named operations, checked at start-up.

The listener needs a few things pynetdicom 3.0.4 has no public API for:
restarting the network timer when it sends, sending pre-encoded C-STORE
requests without a round trip through its reactor, routing the DPP C-GET
and C-MOVE to the plugin's own sub-operation loop and its C-FIND to the
plugin's own response loop, reading, writing and shutting the raw socket.
Each is done here and nowhere else, so a pynetdicom upgrade has one module
to review, and :func:`check` finds a missing or reshaped
internal once, at start-up, on real pynetdicom objects: the listener then
refuses to start and says why (``/dpp/status``, Orthanc's log) instead of
failing per request (every C-MOVE answering 0xC000) or silently (the
network timer no longer restarted).
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, evt, service_class
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import DimsePrimitiveType
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    ThreadedAssociationServer,
)

#: The pynetdicom release whose internals this module was written against.
WRITTEN_FOR = "3.0.4"

#: The service classes whose C-GET/C-MOVE the plugin serves with its own loop.
_ROUTED_SERVICES = (
    service_class.DefinedProcedureProtocolQueryRetrieveServiceClass,
    service_class.ProtocolApprovalQueryRetrieveServiceClass,
)
_ROUTED = "_orthanc_dpp_routed"
_route_lock = threading.Lock()

#: How long :func:`reactor_paused` waits for the reactor thread to pause.
REACTOR_PAUSE_LIMIT = 5.0


class PynetdicomChanged(RuntimeError):
    """pynetdicom lacks an internal the plugin relies on (or it changed shape)."""


# --- logging -----------------------------------------------------------------------------


def quiet_logging() -> None:
    """Turn off pynetdicom's INFO/DEBUG-level logging work (settings of ``pynetdicom._config``).

    Its standard handlers format every PDU and DIMSE message and pretty-print
    every C-FIND identifier, for records the plugin drops anyway (it passes
    pynetdicom's records on from WARNING up). Applies to associations created
    afterwards.
    """
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


# --- the connection ----------------------------------------------------------------------


def raw_socket(assoc: Association) -> socket.socket | None:
    """The association's TCP (or TLS) socket, None before it has one."""
    transport = assoc.dul.socket
    return None if transport is None else transport.socket


def intercept_reads(
    assoc: Association, wrap: Callable[[Callable[[int], bytearray]], Callable[[int], bytearray]]
) -> None:
    """Route the association's reads through ``wrap(read)``.

    pynetdicom's DUL reads a PDU as its 6-byte header, then exactly the
    length the header announces, through ``AssociationSocket.recv``; a
    wrapper sees both reads and may raise to stop before the body is read.
    """
    transport = assoc.dul.socket
    if transport is not None:
        transport.recv = wrap(transport.recv)  # type: ignore[method-assign,assignment]


def on_state_machine_error(assoc: Association, handle: Callable[[Exception], None]) -> None:
    """Call ``handle(exception)`` when the association's DUL state machine raises.

    pynetdicom 3.0 lets such an exception end its DUL thread uncaught: a PDV
    without a message control header, a command set without a known
    CommandField, an A-ABORT with an invalid source, a PDU not allowed in
    the association's state. No A-ABORT is sent, nobody closes the socket
    (it stays open until garbage-collected) and EVT_CONN_CLOSE never fires,
    so the connection still counts against the peer's limits. Here the DUL
    is stopped as pynetdicom means to, ``handle`` ends the connection, and
    the thread then ends quietly.
    """
    dul = assoc.dul
    machine = dul.state_machine
    action = machine.do_action

    def do_action(event: str) -> None:
        try:
            action(event)
        except Exception as exc:
            dul.kill_dul()
            handle(exc)

    machine.do_action = do_action  # type: ignore[method-assign]


def close_connection(assoc: Association) -> None:
    """Close the association's socket and report it (EVT_CONN_CLOSE), as pynetdicom's aborts do."""
    transport = assoc.dul.socket
    if transport is None:
        return
    transport.close()
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    info = peer.address_info
    evt.trigger(assoc, evt.EVT_CONN_CLOSE, {"address": None if info is None else info.as_tuple})


def wake_acceptor(assoc: Association) -> None:
    """Stop an acceptor thread that waits for an A-ASSOCIATE request which can no longer come.

    When pynetdicom's DUL aborts a connection before any A-ASSOCIATE-RQ was
    decoded (garbage, an undecodable request, a PDU out of turn), it tells
    the association thread nothing: the thread waits AcseTimeout for the
    request anyway, and counts against MaximumAssociations all that time.
    An empty answer is what that wait gets when it times out.
    """
    assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]  # what a timed-out wait returns


def register_server(ae: AE, server: ThreadedAssociationServer) -> None:
    """Let ``ae`` know a server made with ``make_server``, as ``start_server`` would.

    ``ThreadedAssociationServer.shutdown`` removes itself from this list.
    """
    ae._servers.append(server)


def restart_network_timer(assoc: Association) -> None:
    """Count something the listener sent as activity on the association.

    pynetdicom restarts its network timer only on data received and checks
    it after a request has been served, so an answer that took longer than
    NetworkTimeout to send was aborted right after it.
    """
    assoc.dul._idle_timer.restart()


# --- sending C-STORE sub-operations ------------------------------------------------------


def accepted_context(
    assoc: Association, sop_class: UID, transfer_syntax: UID
) -> PresentationContext | None:
    """The accepted context an instance goes out on, as ``send_c_store`` picks it.

    Knowing the pick before sending lets the caller refuse a lossy
    conversion first.
    """
    try:
        return assoc._get_valid_context(sop_class, transfer_syntax, "scu")
    except ValueError:
        return None


def encode_request(
    primitive: DimsePrimitiveType, context_id: int, max_pdu: int
) -> tuple[C_STORE_RQ, list[P_DATA]]:
    """A C-STORE request as the message and P-DATA fragments ``send_msg`` would send."""
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.context_id = context_id
    return message, list(message.encode_msg(context_id, max_pdu))


def send_fragments(assoc: Association, fragments: Iterable[P_DATA]) -> None:
    """Queue encoded P-DATA for the association's DUL thread to send."""
    for fragment in fragments:
        assoc.dul.send_pdu(fragment)


def sending_done(assoc: Association) -> bool:
    """Whether the DUL thread has taken everything queued off its queues."""
    dul = assoc.dul
    return dul.to_provider_queue.empty() and dul.event_queue.empty()


def wait_until_sent(assoc: Association, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until the DUL thread has sent everything queued.

    Whoever writes to the socket directly calls this first, so that its
    bytes cannot overtake a message pynetdicom still holds.
    """
    deadline = time.monotonic() + timeout
    while not sending_done(assoc):
        if time.monotonic() > deadline or not assoc.is_alive():
            return False
        time.sleep(0.0005)
    return True


def pending_messages(assoc: Association) -> int:
    """Complete DIMSE messages received and not yet taken by the association's reactor."""
    return assoc.dimse.msg_queue.qsize()


def next_response(assoc: Association, timeout: float) -> Any:
    """The next DIMSE message the association received, or ``queue.Empty`` after ``timeout``."""
    return assoc.dimse.msg_queue.get(timeout=timeout)


def stop_waiting(assoc: Association) -> None:
    """Wake a ``send_c_get``/``send_c_find`` loop waiting for the next message, now.

    After an abort, pynetdicom's response loops would wait out DimseTimeout
    for a message that cannot come; an empty entry makes them end as on a
    timeout (no status).
    """
    assoc.dimse.msg_queue.put((None, None))


@contextlib.contextmanager
def dul_polling(assoc: Association, delay: float) -> Iterator[None]:
    """Let ``assoc``'s DUL thread sleep ``delay`` s between polls, then restore it.

    pynetdicom polls its socket and send queue every 1 ms and offers no
    setting for it.
    """
    dul = assoc.dul
    before = dul._run_loop_delay
    dul._run_loop_delay = delay
    try:
        yield
    finally:
        dul._run_loop_delay = before


class _ReactorCheckpoint(threading.Event):
    """pynetdicom's reactor checkpoint, with a pause that the reactor cannot overtake.

    pynetdicom's reactor loop sets ``_is_paused``, waits on this event, then
    clears ``_is_paused`` and takes the next message off the DIMSE queue. A
    thread pausing it clears the event and waits for ``_is_paused``; if the
    reactor had just passed the event (flag still set), the pause is
    believed while the reactor goes on to take whatever arrives next off the
    queue: the response the pausing thread is about to wait for. Under load
    (many threads, one interpreter lock) that window is hit a few times in a
    thousand, and the requester waits out its whole DIMSE timeout for a
    response that did arrive. Here :meth:`clear` returns only once the
    reactor has entered :meth:`wait` after the clear (so it blocks there),
    has ended, or :data:`REACTOR_PAUSE_LIMIT` has passed.
    """

    def __init__(self, reactor: threading.Thread) -> None:
        super().__init__()
        self.set()
        self._reactor = reactor
        self._entries = 0
        self._entered = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self._reactor:
            with self._entered:
                self._entries += 1
                self._entered.notify_all()
        return super().wait(timeout)

    def clear(self) -> None:
        super().clear()
        if threading.current_thread() is self._reactor:
            return  # the reactor pausing itself (a handler sending): nothing to wait for
        deadline = time.monotonic() + REACTOR_PAUSE_LIMIT
        with self._entered:
            seen = self._entries
            while self._entries == seen and self._reactor.is_alive() and not self.is_set():
                if time.monotonic() > deadline:
                    return
                self._entered.wait(0.01)


def steady_reactor_pause(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler for associations this side requests (:class:`_ReactorCheckpoint`).

    Bound before the association's thread reaches its reactor loop, so the
    checkpoint is replaced while nobody waits on it.
    """
    assoc = event.assoc
    if not isinstance(assoc._reactor_checkpoint, _ReactorCheckpoint):
        assoc._reactor_checkpoint = _ReactorCheckpoint(assoc)


@contextlib.contextmanager
def reactor_paused(assoc: Association) -> Iterator[bool]:
    """Keep the reactor of an association this side requested from reading responses.

    ``send_c_store`` pauses it around every message; pausing it once for a
    whole retrieve lets the caller take C-STORE responses off the DIMSE
    queue itself. Yields whether the reactor paused within
    :data:`REACTOR_PAUSE_LIMIT` (it does unless the association is ending).
    """
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + REACTOR_PAUSE_LIMIT
    try:
        while not assoc._is_paused and assoc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0001)
        yield bool(assoc._is_paused)
    finally:
        assoc._reactor_checkpoint.set()


# --- routing DPP C-GET and C-MOVE --------------------------------------------------------

ServeRetrieve = Callable[[Any, Any, PresentationContext, Callable[..., None]], None]


def route_retrieve(serve: ServeRetrieve) -> None:
    """Send the C-GET and C-MOVE requests of the DPP and Protocol Approval models to ``serve``.

    ``serve(service, request, context, stock)`` gets pynetdicom's own
    method as ``stock`` to fall back on. Only those two service classes
    change (pynetdicom's other query/retrieve classes keep their loop);
    idempotent and thread-safe.
    """
    with _route_lock:
        for cls in _ROUTED_SERVICES:
            if getattr(cls, _ROUTED, False):
                continue
            for name in ("_get_scp", "_move_scp"):
                stock = getattr(cls, name)

                def routed(
                    self: Any, req: Any, context: PresentationContext, stock: Any = stock
                ) -> None:
                    serve(self, req, context, stock.__get__(self))

                routed.__name__ = name
                setattr(cls, name, routed)
            setattr(cls, _ROUTED, True)


# --- routing DPP C-FIND -----------------------------------------------------------------

_FIND_ROUTED = "_orthanc_dpp_find_routed"


def route_find(serve: ServeRetrieve) -> None:
    """Send the C-FIND requests of the DPP and Protocol Approval models to ``serve``.

    ``serve(service, request, context, stock)`` as for :func:`route_retrieve`;
    the other query/retrieve classes keep pynetdicom's loop. Idempotent and
    thread-safe.
    """
    with _route_lock:
        for cls in _ROUTED_SERVICES:
            if getattr(cls, _FIND_ROUTED, False):
                continue
            stock = cls._c_find_scp

            def find(self: Any, req: Any, context: PresentationContext, stock: Any = stock) -> None:
                serve(self, req, context, stock.__get__(self))

            find.__name__ = "_c_find_scp"
            cls._c_find_scp = find  # type: ignore[method-assign]
            setattr(cls, _FIND_ROUTED, True)


# --- the start-up check ------------------------------------------------------------------


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _wraps_sockets(assoc: Association) -> bool:
    with socket.socket() as sock:
        transport = AssociationSocket(assoc, client_socket=sock)
        return transport.socket is sock and _parameters(transport.recv) == ["nr_bytes"]


def check() -> list[str]:
    """What is missing or changed among the internals above, checked on real objects.

    An empty list means every operation of this module will work.
    """
    problems: list[str] = []

    def expect(what: str, test: Callable[[], bool]) -> None:
        try:
            ok = test()
        except Exception as exc:
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
            return
        if not ok:
            problems.append(what)

    expect(
        "pynetdicom._config logging settings",
        lambda: all(
            hasattr(pynetdicom_config, name)
            for name in ("LOG_HANDLER_LEVEL", "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS")
        ),
    )
    ae = AE()
    expect("AE._servers list", lambda: isinstance(ae._servers, list))
    try:
        assoc = Association(ae, "requestor")
    except Exception as exc:
        problems.append(f"Association(ae, 'requestor'): {type(exc).__name__}: {exc}")
        return problems
    dul = assoc.dul
    expect("DULServiceProvider._idle_timer.restart", lambda: callable(dul._idle_timer.restart))
    expect(
        "DULServiceProvider._run_loop_delay (seconds)",
        lambda: isinstance(dul._run_loop_delay, float),
    )
    expect("DULServiceProvider.send_pdu", lambda: callable(dul.send_pdu))
    expect("DULServiceProvider.to_user_queue", lambda: callable(dul.to_user_queue.put))
    expect(
        "DULServiceProvider send queues",
        lambda: callable(dul.to_provider_queue.empty) and callable(dul.event_queue.empty),
    )
    expect("DULServiceProvider.socket", lambda: hasattr(dul, "socket"))
    expect(
        "DULServiceProvider.state_machine.do_action(event) and .kill_dul()",
        lambda: _parameters(dul.state_machine.do_action) == ["event"] and callable(dul.kill_dul),
    )
    expect(
        "Association.requestor.address_info and AddressInformation.as_tuple",
        lambda: (
            hasattr(assoc.requestor, "address_info")
            and isinstance(getattr(AddressInformation, "as_tuple", None), property)
        ),
    )
    expect(
        "DIMSEServiceProvider.msg_queue",
        lambda: callable(assoc.dimse.msg_queue.get) and assoc.dimse.msg_queue.qsize() == 0,
    )
    expect(
        "Association._reactor_checkpoint event",
        lambda: isinstance(assoc._reactor_checkpoint, threading.Event),
    )
    expect("Association._is_paused flag", lambda: isinstance(assoc._is_paused, bool))
    expect(
        "Association._get_valid_context(ab_syntax, tr_syntax, role, ...)",
        lambda: (
            _parameters(Association._get_valid_context)[:4]
            == ["self", "ab_syntax", "tr_syntax", "role"]
        ),
    )
    expect(
        "C_STORE_RQ.encode_msg(context_id, max_pdu_length)",
        lambda: _parameters(C_STORE_RQ.encode_msg)[1:3] == ["context_id", "max_pdu_length"],
    )
    expect("C_STORE_RQ.primitive_to_message", lambda: callable(C_STORE_RQ.primitive_to_message))
    expect("AssociationSocket.recv(nr_bytes) and .socket", lambda: _wraps_sockets(assoc))
    for cls in _ROUTED_SERVICES:
        for name in ("_get_scp", "_move_scp", "_c_find_scp"):
            expect(f"{cls.__name__}.{name}(req, context)", _takes_request_and_context(cls, name))
    expect(
        "ServiceClass.validate_status(status, rsp) and .is_cancelled(msg_id)",
        lambda: (
            _parameters(service_class.ServiceClass.validate_status)[1:3] == ["status", "rsp"]
            and _parameters(service_class.ServiceClass.is_cancelled)[1:2] == ["msg_id"]
        ),
    )
    return problems


def _takes_request_and_context(cls: type, name: str) -> Callable[[], bool]:
    return lambda: _parameters(getattr(cls, name))[1:3] == ["req", "context"]


def require() -> None:
    """Raise :class:`PynetdicomChanged` naming every problem :func:`check` finds."""
    problems = check()
    if problems:
        import pynetdicom

        raise PynetdicomChanged(
            f"pynetdicom {pynetdicom.__version__} lacks internals the plugin relies on "
            f"(written for {WRITTEN_FOR}): " + "; ".join(problems)
        )
