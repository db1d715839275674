"""ConnectionGuard: admission limits, the AcseTimeout watchdog, the PDU size check."""

from __future__ import annotations

import logging
import socket
import struct
from types import SimpleNamespace

import pytest

from orthanc_dpp.connections import (
    MAXIMUM_OTHER_PDU,
    ConnectionGuard,
    Limits,
    PduTooLarge,
    abort_pdu,
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
        "total": 3,
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
    guard = make_guard(clock, per_address=5, total=10)
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
    clock = Clock()
    guard = make_guard(clock, per_address=1, total=1)
    guard.on_open(open_event(fake_assoc()))  # full: everyone else is refused
    for n in range(100):
        clock.now += 20
        assert not guard.verify(None, (f"10.0.0.{n}", 1))
    assert len(guard._refusals) <= 11
