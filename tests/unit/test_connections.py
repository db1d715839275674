"""ConnectionGuard: admission limits, the AcseTimeout watchdog, the PDU size check."""

from __future__ import annotations

import logging
import socket
import struct
from types import SimpleNamespace

import pytest

from orthanc_dpp.access import Caller, Service
from orthanc_dpp.connections import (
    CALLING_AE_NOT_RECOGNIZED,
    LOCAL_LIMIT_EXCEEDED,
    MAXIMUM_OTHER_PDU,
    PERMANENTLY_REFUSED,
    ConnectionGuard,
    Limits,
    PduTooLarge,
    abort_pdu,
    reject_pdu,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeReader:
    """pynetdicom's AssociationSocket as the guard sees it: ``recv`` and ``socket``."""

    def __init__(self, stream: bytes, sock: socket.socket | None) -> None:
        self.stream = stream
        self.socket = sock

    def recv(self, count: int) -> bytearray:
        data, self.stream = self.stream[:count], self.stream[count:]
        return bytearray(data)


def fake_assoc(stream: bytes = b"", sock: socket.socket | None = None, alive: bool = True):
    return SimpleNamespace(
        dul=SimpleNamespace(socket=FakeReader(stream, sock)), is_alive=lambda: alive
    )


def open_event(assoc, address: str = "10.1.2.3"):
    return SimpleNamespace(assoc=assoc, address=(address, 40000))


def make_guard(clock: Clock, **limits: object) -> ConnectionGuard:
    values = {
        "acse_timeout": 30.0,
        "network_timeout": 60.0,
        "maximum_pdu_size": 16382,
        "per_address": 2,
        "waiting": 3,
    }
    values.update(limits)
    return ConnectionGuard(Limits(**values), clock=clock)  # type: ignore[arg-type]


def test_admission_per_address_and_in_total(caplog) -> None:
    guard = make_guard(Clock())
    for _ in range(2):
        assert guard.verify(None, ("10.1.2.3", 1))
        guard.on_open(open_event(fake_assoc()))
    with caplog.at_level(logging.WARNING, "orthanc_dpp"):
        assert not guard.verify(None, ("10.1.2.3", 1))
    assert "2 connections from 10.1.2.3 already open (MaximumConnectionsPerAddress 2)" in (
        caplog.text
    )
    assert guard.verify(None, ("10.9.9.9", 1))
    guard.on_open(open_event(fake_assoc(), "10.9.9.9"))
    assert not guard.verify(None, ("10.8.8.8", 1))  # 3 open in total


def test_refusals_are_logged_at_most_every_ten_seconds(caplog) -> None:
    clock = Clock()
    guard = make_guard(clock, per_address=1)
    guard.on_open(open_event(fake_assoc()))
    with caplog.at_level(logging.WARNING, "orthanc_dpp"):
        for _ in range(50):
            guard.verify(None, ("10.1.2.3", 1))
        clock.now += 11
        guard.verify(None, ("10.1.2.3", 1))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Refused 1 connection(s) from 10.1.2.3")
    assert lines[1].startswith("Refused 50 connection(s) from 10.1.2.3")
    assert len(lines) == 2


def test_watchdog_drops_connections_without_association_after_acse_timeout() -> None:
    clock = Clock()
    guard = make_guard(clock, per_address=5, waiting=10)
    left, right = socket.socketpair()
    with left, right:
        late, done = fake_assoc(sock=left), fake_assoc()
        guard.on_open(open_event(late))
        guard.on_open(open_event(done, "10.4.4.4"))
        guard.on_established(SimpleNamespace(assoc=done))
        clock.now += 29
        assert guard.sweep() == []
        clock.now += 2
        assert guard.sweep() == ["10.1.2.3"]
        assert right.recv(10) == b""  # shut down: the reader sees the end at once
        assert guard.sweep() == []  # dropped once


def test_finished_connections_are_forgotten() -> None:
    clock = Clock()
    guard = make_guard(clock)
    guard.on_open(open_event(fake_assoc(alive=False)))
    assert guard.open_connections() == 1  # its thread may not have started yet
    clock.now += 2
    assert guard.open_connections() == 0


def pdu(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length) + b"\x00" * min(length, 64)


@pytest.mark.parametrize(
    ("pdu_type", "length", "refused"),
    [
        (0x04, 16382, False),
        (0x04, 16383, True),
        (0x01, MAXIMUM_OTHER_PDU, False),
        (0x01, MAXIMUM_OTHER_PDU + 1, True),
    ],
)
def test_pdu_size_is_checked_before_the_body_is_read(pdu_type, length, refused) -> None:
    guard = make_guard(Clock())
    left, right = socket.socketpair()
    with left, right:
        assoc = fake_assoc(pdu(pdu_type, length), sock=left)
        guard.on_open(open_event(assoc))
        reader = assoc.dul.socket
        header = reader.recv(6)
        assert len(header) == 6
        if not refused:
            assert len(reader.recv(length)) == min(length, 64)
            return
        with pytest.raises(PduTooLarge):
            reader.recv(length)
        assert right.recv(100) == abort_pdu()


def test_p_data_without_a_size_limit_of_ours() -> None:
    guard = make_guard(Clock(), maximum_pdu_size=0)
    assoc = fake_assoc(pdu(0x04, 10**8))
    guard.on_open(open_event(assoc))
    reader = assoc.dul.socket
    reader.recv(6)
    assert len(reader.recv(10**8)) == 64


def test_abort_pdu_is_a_provider_abort() -> None:
    data = abort_pdu()
    assert data[0] == 0x07 and len(data) == 10
    assert data[8:10] == b"\x02\x06"


def test_refusal_bookkeeping_stays_bounded_with_many_addresses(monkeypatch) -> None:
    from orthanc_dpp import connections

    monkeypatch.setattr(connections, "MAXIMUM_REFUSING_ADDRESSES", 10)
    monkeypatch.setattr(connections, "EVICTION_AGE", 1e9)  # the waiting one stays
    clock = Clock()
    guard = make_guard(clock, per_address=1, waiting=1)
    guard.on_open(open_event(fake_assoc()))  # full: everyone else is refused
    for n in range(100):
        clock.now += 20
        assert not guard.verify(None, (f"10.0.0.{n}", 1))
    assert len(guard._refusals) <= 11


# -- waiting connections, admission of associations, refusals ---------------------------


def test_a_newcomer_takes_the_place_of_the_oldest_connection_waiting_too_long(caplog) -> None:
    clock = Clock()
    guard = make_guard(clock, per_address=5, waiting=2)
    old_left, old_right = socket.socketpair()
    young_left, young_right = socket.socketpair()
    with old_left, old_right, young_left, young_right:
        guard.on_open(open_event(fake_assoc(sock=old_left), "10.1.1.1"))
        clock.now += 1
        guard.on_open(open_event(fake_assoc(sock=young_left), "10.2.2.2"))
        assert not guard.verify(None, ("10.3.3.3", 1))  # both waited less than 2 s
        clock.now += 1.5
        with caplog.at_level(logging.WARNING, "orthanc_dpp"):
            assert guard.verify(None, ("10.3.3.3", 1))
        assert old_right.recv(10) == b""  # the oldest was shut down
        young_right.setblocking(False)
        with pytest.raises(BlockingIOError):
            young_right.recv(10)  # the younger one is untouched
    assert "Dropped 1 waiting connection(s) from 10.1.1.1 to make room" in caplog.text


def test_accepted_associations_do_not_take_waiting_places() -> None:
    guard = make_guard(Clock(), per_address=5, waiting=1)
    assoc = fake_assoc()
    guard.on_open(open_event(assoc))
    assert not guard.verify(None, ("10.9.9.9", 1))
    assert guard.admit(assoc, declared=True) is None
    assert guard.verify(None, ("10.9.9.9", 1))


def test_unknown_callers_get_their_share_and_declared_ones_the_rest() -> None:
    guard = make_guard(Clock(), per_address=10, waiting=10, associations=3, unknown_associations=1)
    assocs = [fake_assoc() for _ in range(5)]
    for assoc in assocs:
        guard.on_open(open_event(assoc))
    assert guard.admit(assocs[0], declared=False) is None
    refusal = guard.admit(assocs[1], declared=False)
    assert refusal == (
        "1 associations of callers not in DicomModalities open "
        "(UnknownCallersMaximumAssociations 1)"
    )
    assert guard.admit(assocs[2], declared=True) is None
    assert guard.admit(assocs[3], declared=True) is None
    assert guard.admit(assocs[4], declared=True) == "3 associations open (MaximumAssociations 3)"


class Requested:
    """What the guard sees of an association whose A-ASSOCIATE-RQ just arrived."""

    def __init__(self, aet: str = "STRANGER", host: str = "10.1.2.3") -> None:
        self.rejected: tuple[int, ...] | None = None
        self.killed = False
        self.requestor = SimpleNamespace(
            primitive=SimpleNamespace(calling_ae_title=aet), address=host
        )
        self.acse = SimpleNamespace(send_reject=self._reject)
        self.dul = SimpleNamespace(socket=None)

    def _reject(self, *rejection: int) -> None:
        self.rejected = rejection

    def kill(self) -> None:
        self.killed = True

    def is_alive(self) -> bool:
        return True

    def get_handlers(self, event: object) -> list:
        return []


@pytest.mark.parametrize(
    ("caller", "rejection"),
    [
        (Caller(False, frozenset()), CALLING_AE_NOT_RECOGNIZED),
        (Caller(True, frozenset()), PERMANENTLY_REFUSED),
        (Caller(False, frozenset({Service.ECHO})), LOCAL_LIMIT_EXCEEDED),  # share taken
        (Caller(True, frozenset({Service.FIND})), None),
    ],
)
def test_requests_are_rejected_permanently_without_rights_transiently_over_limits(
    caller: Caller, rejection: tuple[int, int, int] | None, caplog
) -> None:
    guard = ConnectionGuard(
        Limits(30, 60, 16382, per_address=5, waiting=5, associations=5, unknown_associations=1),
        clock=Clock(),
        judge=lambda aet, host: caller,
    )
    holder = Requested("OTHER")
    guard.on_open(open_event(holder))
    assert guard.admit(holder, declared=False) is None  # the one unknown slot
    assoc = Requested()
    guard.on_open(open_event(assoc))
    with caplog.at_level(logging.WARNING, "orthanc_dpp"):
        guard.on_requested(SimpleNamespace(assoc=assoc))
    assert assoc.rejected == rejection
    assert assoc.killed == (rejection is not None)
    if rejection is not None:
        kind = "transient" if rejection == LOCAL_LIMIT_EXCEEDED else "permanent"
        assert "Rejected 1 association request(s) from 10.1.2.3: STRANGER: " in caplog.text
        assert f"(A-ASSOCIATE-RJ {kind})" in caplog.text


def test_a_refused_connection_is_answered_after_its_request_then_closed() -> None:
    clock = Clock()
    guard = make_guard(clock, per_address=1)
    guard.on_open(open_event(fake_assoc()))
    left, right = socket.socketpair()
    with left, right:
        assert not guard.verify(left, ("10.1.2.3", 1))
        assert guard.holds(left)  # not closed by the server: the guard answers it
        guard.sweep()
        right.setblocking(False)
        with pytest.raises(BlockingIOError):
            right.recv(64)  # nothing before the peer's request
        right.sendall(b"\x01\x00\x00\x00\x00\x44" + bytes(68))  # an A-ASSOCIATE-RQ
        guard.sweep()
        right.setblocking(True)
        right.settimeout(5)
        assert right.recv(64) == reject_pdu(*LOCAL_LIMIT_EXCEEDED)
        assert right.recv(64) == b""  # then the listener's side is closed
        right.close()
        guard.sweep()
        assert not guard.holds(left)


def test_a_refused_connection_that_stays_silent_is_closed_without_answer() -> None:
    clock = Clock()
    guard = make_guard(clock, per_address=1)
    guard.on_open(open_event(fake_assoc()))
    left, right = socket.socketpair()
    with left, right:
        assert not guard.verify(left, ("10.1.2.3", 1))
        clock.now += 6
        guard.sweep()
        assert not guard.holds(left)
        assert right.recv(64) == b""


def test_local_limit_rejection_is_transient_from_the_presentation_provider() -> None:
    pdu = reject_pdu(*LOCAL_LIMIT_EXCEEDED)
    assert pdu == bytes([0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02])


def test_connections_count_from_admission_before_their_thread_opens_them() -> None:
    clock = Clock()
    guard = make_guard(clock, per_address=2, waiting=3)
    first, second = object(), object()
    assert guard.verify(first, ("10.1.2.3", 1))
    assert guard.verify(second, ("10.1.2.3", 1))
    assert not guard.verify(object(), ("10.1.2.3", 1))  # a burst: none opened yet
    assert guard.verify(object(), ("10.9.9.9", 1))
    assert not guard.verify(object(), ("10.8.8.8", 1))  # three waiting
    clock.now += 6  # never opened (its thread failed): forgotten
    assert guard.verify(object(), ("10.1.2.3", 1))


def test_a_failing_judge_counts_the_caller_among_the_unknown() -> None:
    def judge(aet: str, host: str) -> Caller:
        raise RuntimeError("modality list unreadable")

    guard = ConnectionGuard(
        Limits(30, 60, 16382, per_address=5, waiting=5, associations=5, unknown_associations=1),
        clock=Clock(),
        judge=judge,
    )
    first, second = Requested("A"), Requested("B")
    for assoc in (first, second):
        guard.on_open(open_event(assoc))
        guard.on_requested(SimpleNamespace(assoc=assoc))
    assert first.rejected is None
    assert second.rejected == LOCAL_LIMIT_EXCEEDED
