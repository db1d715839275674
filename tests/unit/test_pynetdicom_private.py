"""pynetdicom's private API, on real pynetdicom objects.

These tests fail when the installed pynetdicom no longer has an internal
the plugin uses, or when it behaves differently from what the plugin
expects; the start-up check must then name it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt, service_class
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.transport import AssociationSocket

from orthanc_dpp import pynetdicom_private as private
from orthanc_dpp.sop import CT_DPP_STORAGE, XA_DPP_STORAGE
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
    from orthanc_dpp import retrieve

    retrieve.install()
    routed = cls._move_scp
    retrieve.install()
    assert cls._move_scp is routed and routed.__name__ == "_move_scp"


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
