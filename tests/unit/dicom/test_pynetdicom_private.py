"""pynetdicom's private API, on real pynetdicom objects.

These tests fail when the installed pynetdicom no longer has an internal
the plugin uses, or when it behaves differently from what the plugin
expects; the start-up check must then name it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt, service_class
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.model.sop import CT_DPP_STORAGE, XA_DPP_STORAGE
from tests.orthanc_server import free_port


@pytest.fixture
def established() -> Iterator[Association]:
    """A real association to a pynetdicom SCP accepting CT DPP in implicit VR only."""
    scp = AE(ae_title="SCP")
    scp.add_supported_context(CT_DPP_STORAGE, [ImplicitVRLittleEndian])
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    scu = AE(ae_title="SCU")
    scu.add_requested_context(CT_DPP_STORAGE, [ExplicitVRLittleEndian])
    scu.add_requested_context(CT_DPP_STORAGE, [ImplicitVRLittleEndian])
    scu.add_requested_context(XA_DPP_STORAGE, [ExplicitVRLittleEndian])
    # Raw pynetdicom, not tests.dicom_client: these tests pin pynetdicom's own behaviour.
    assoc = scu.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()
        server.shutdown()


def test_the_installed_pynetdicom_has_every_internal() -> None:
    assert private.check() == []
    private.require()  # does not raise


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "named"),
    [
        (
            Association,
            "_get_valid_context",
            lambda self, syntax: None,
            "Association._get_valid_context",
        ),
        (C_STORE_RQ, "encode_msg", lambda self, max_pdu: iter(()), "C_STORE_RQ.encode_msg"),
        (AssociationSocket, "recv", lambda self, size, flags: b"", "AssociationSocket.recv"),
        (
            service_class.DefinedProcedureProtocolQueryRetrieveServiceClass,
            "_move_scp",
            None,
            "DefinedProcedureProtocolQueryRetrieveServiceClass._move_scp",
        ),
    ],
)
def test_a_changed_internal_is_named(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, replacement: Any, named: str
) -> None:
    if replacement is None:
        monkeypatch.setattr(owner, name, None)
    else:
        monkeypatch.setattr(owner, name, replacement)
    problems = private.check()
    assert len(problems) == 1 and problems[0].startswith(named), problems
    with pytest.raises(private.PynetdicomChanged, match=named.replace(".", r"\.")):
        private.require()


def test_a_missing_instance_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attribute pynetdicom sets in __init__ that a new release might drop."""
    from pynetdicom.dul import DULServiceProvider

    real_init: Callable[..., None] = DULServiceProvider.__init__

    def init_without(name: str) -> Callable[..., None]:
        def init(self: Any, *args: Any) -> None:
            real_init(self, *args)
            delattr(self, name)

        return init

    monkeypatch.setattr(DULServiceProvider, "__init__", init_without("_run_loop_delay"))
    assert [p.split(":")[0] for p in private.check()] == [
        "DULServiceProvider._run_loop_delay (seconds)"
    ]
    # One the Association itself needs while it is made: named, not raised.
    monkeypatch.setattr(DULServiceProvider, "__init__", init_without("_idle_timer"))
    (problem,) = private.check()
    assert problem.startswith("Association(ae, 'requestor')") and "_idle_timer" in problem


def test_accepted_context_is_pynetdicoms_choice(established: Association) -> None:
    # Explicit VR was offered but only implicit accepted: the conversion is chosen.
    cx = private.accepted_context(established, CT_DPP_STORAGE, ExplicitVRLittleEndian)
    assert cx is not None and cx.transfer_syntax[0] == ImplicitVRLittleEndian
    assert private.accepted_context(established, CT_DPP_STORAGE, ExplicitVRBigEndian) is None
    assert private.accepted_context(established, XA_DPP_STORAGE, ExplicitVRLittleEndian) is None


def test_dul_polling_is_restored_even_after_an_error(established: Association) -> None:
    before = established.dul._run_loop_delay
    with pytest.raises(RuntimeError), private.dul_polling(established, 0.0002):
        assert established.dul._run_loop_delay == 0.0002
        raise RuntimeError("sub-operation failed")
    assert established.dul._run_loop_delay == before


def test_reactor_paused_pauses_and_resumes(established: Association) -> None:
    with private.reactor_paused(established) as paused:
        assert paused and established._is_paused
    assert established._reactor_checkpoint.is_set()  # the reactor runs again


def test_restart_network_timer_makes_the_association_look_active() -> None:
    ae = AE()
    ae.network_timeout = 0.05
    assoc = Association(ae, "requestor")
    assoc.dul._idle_timer.timeout = 0.05
    assoc.dul._idle_timer.start()
    time.sleep(0.08)
    assert assoc.dul.idle_timer_expired()
    private.restart_network_timer(assoc)
    assert not assoc.dul.idle_timer_expired()


def test_raw_socket_and_intercepted_reads() -> None:
    assoc = Association(AE(), "acceptor")
    assert private.raw_socket(assoc) is None
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)
        assert private.raw_socket(assoc) is ours
        seen: list[int] = []

        def wrap(read: Callable[[int], bytearray]) -> Callable[[int], bytearray]:
            def counted(count: int) -> bytearray:
                seen.append(count)
                return read(count)

            return counted

        private.intercept_reads(assoc, wrap)
        theirs.sendall(b"\x07\x00\x00\x00\x00\x04")
        assert bytes(assoc.dul.socket.recv(6)) == b"\x07\x00\x00\x00\x00\x04"
        assert seen == [6]


def test_route_retrieve_is_idempotent() -> None:
    cls = service_class.DefinedProcedureProtocolQueryRetrieveServiceClass
    from orthanc_dpp.dicom.scp.routing import route_dpp_services

    route_dpp_services()
    routed = cls._move_scp
    route_dpp_services()
    assert cls._move_scp is routed and routed.__name__ == "_move_scp"


# -- pausing the reactor of a requested association --------------------------------------


class _Window:
    """Holds a reactor just after it passed its checkpoint, as a busy interpreter may.

    pynetdicom's reactor sets ``_is_paused``, waits on its checkpoint, clears
    the flag and reads the DIMSE queue without blocking. A thread switch right
    after the wait leaves the flag set while the reactor is about to read;
    if the requester, which blocks on the same queue, is slow to be scheduled
    when the response lands, the reactor takes it. This widens both instants
    (``hold`` for the reactor, ``lag`` for the requester), once, so the race
    happens on every run.
    """

    def __init__(self, hold: float = 0.2, lag: float = 0.5) -> None:
        self.hold = hold
        self.lag = lag
        self.armed = False
        self.inside = threading.Event()

    def after_wait(self) -> None:
        if self.armed:
            self.armed = False
            self.inside.set()
            time.sleep(self.hold)


def _echo_through_the_window(checkpoint_class: type) -> Any:
    """C-ECHO sent while the requester's reactor is held in the window; its status."""
    window = _Window()
    steady = checkpoint_class is private._ReactorCheckpoint

    class Held(checkpoint_class):  # type: ignore[misc, valid-type]
        reactor: Any = None

        def wait(self, timeout: float | None = None) -> bool:
            passed = bool(super().wait(timeout))
            if threading.current_thread() is self.reactor:
                window.after_wait()
            return passed

    def install(event: evt.Event) -> None:
        assoc = event.assoc
        checkpoint = Held(assoc) if steady else Held()
        checkpoint.set()
        checkpoint.reactor = assoc
        assoc._reactor_checkpoint = checkpoint
        read = assoc.dimse.get_msg

        def lagging(block: bool = False) -> Any:
            if block:  # the requester, not the reactor
                time.sleep(window.lag)
            return read(block)

        assoc.dimse.get_msg = lagging

    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    scu = AE(ae_title="SCU")
    scu.dimse_timeout = 3
    scu.add_requested_context(Verification)
    # Raw pynetdicom, not tests.dicom_client: these tests pin pynetdicom's own behaviour.
    assoc = scu.associate(
        "127.0.0.1", port, ae_title="SCP", evt_handlers=[(evt.EVT_CONN_OPEN, install)]
    )
    try:
        assert assoc.is_established
        window.armed = True
        assert window.inside.wait(5), "the reactor never passed its checkpoint"
        return assoc.send_c_echo()
    finally:
        assoc.abort()
        server.shutdown()


def test_pynetdicoms_own_pause_loses_a_response_that_arrives_in_the_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The requester-side race behind unanswered C-STOREs under load: pynetdicom's, not Orthanc's.

    The reactor takes the C-ECHO response off the queue ("Received unexpected
    C-ECHO service message") and the requester waits out its DIMSE
    timeout for it. If this starts failing, pynetdicom has fixed its pause.
    """
    with caplog.at_level("WARNING", logger="pynetdicom"):
        status = _echo_through_the_window(threading.Event)
    assert "Status" not in status  # pynetdicom's empty status: no response seen
    assert "Received unexpected C-ECHO service message" in caplog.text


def test_the_steady_checkpoint_keeps_the_response_for_the_requester() -> None:
    status = _echo_through_the_window(private._ReactorCheckpoint)
    assert status.Status == 0x0000


def test_steady_reactor_pause_replaces_the_checkpoint_once(established: Association) -> None:
    class Event:
        assoc = established

    private.steady_reactor_pause(Event)
    checkpoint = established._reactor_checkpoint
    assert isinstance(checkpoint, private._ReactorCheckpoint) and checkpoint.is_set()
    private.steady_reactor_pause(Event)
    assert established._reactor_checkpoint is checkpoint
    with private.reactor_paused(established) as paused:
        assert paused and established._is_paused
    assert established.send_c_store  # still usable below


def test_a_state_machine_error_goes_to_the_handler_and_stops_the_dul() -> None:
    assoc = Association(AE(), "acceptor")
    errors: list[Exception] = []
    private.on_state_machine_error(assoc, errors.append)
    assoc.dul.state_machine.do_action("Evt14")  # invalid in Sta1: raises in pynetdicom
    assert [type(e).__name__ for e in errors] == ["InvalidEventError"]
    assert assoc.dul._kill_thread


def test_close_connection_closes_the_socket_and_reports_it() -> None:
    assoc = Association(AE(), "acceptor")
    closed: list[Any] = []
    assoc.bind(evt.EVT_CONN_CLOSE, closed.append)
    left, right = socket.socketpair()
    with right:
        assoc.set_socket(AssociationSocket(assoc, client_socket=left))
        private.close_connection(assoc)
        assert right.recv(10) == b""  # closed
    assert len(closed) == 1


def test_wake_acceptor_ends_the_wait_for_an_association_request() -> None:
    assoc = Association(AE(), "acceptor")
    private.wake_acceptor(assoc)
    started = time.monotonic()
    assert assoc.dul.receive_pdu(wait=True, timeout=30) is None
    assert time.monotonic() - started < 10
