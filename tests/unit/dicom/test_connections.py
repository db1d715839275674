"""ConnectionGuard: admission limits, the AcseTimeout watchdog, the PDU size check."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from pydicom import Dataset
from pynetdicom.dsutils import encode

from orthanc_dpp.dicom.access import Service, Standing
from orthanc_dpp.dicom.admission import (
    CALLING_AE_NOT_RECOGNIZED,
    LOCAL_LIMIT_EXCEEDED,
    PERMANENTLY_REFUSED,
    Limits,
    reject_pdu,
)
from orthanc_dpp.dicom.connections import (
    MAXIMUM_COMMAND_SIZE,
    MAXIMUM_OTHER_PDU,
    MAXIMUM_PENDING_MESSAGES,
    MINIMUM_FRAGMENTS,
    ConnectionGuard,
    MessageMeter,
    PduTooLarge,
    abort_pdu,
    associate_rq_problem,
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


class FakeDul:
    """pynetdicom's DUL as the guard sees it: its socket, state machine and queue to the user."""

    def __init__(self, reader: FakeReader, action: Callable[[str], None]) -> None:
        self.socket = reader
        self.state_machine = SimpleNamespace(do_action=action)
        self.to_user_queue: queue.Queue[object] = queue.Queue()
        self.killed = False

    def kill_dul(self) -> None:
        self.killed = True


def fake_assoc(
    stream: bytes = b"",
    sock: socket.socket | None = None,
    alive: bool = True,
    action: Callable[[str], None] = lambda event: None,
):
    return SimpleNamespace(
        dul=FakeDul(FakeReader(stream, sock), action),
        dimse=SimpleNamespace(msg_queue=queue.Queue()),
        is_alive=lambda: alive,
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
    counted: list[str] = []
    guard.on_refusal = counted.append
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
    assert counted == ["connection"] * 51  # the metrics count every one


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
    from orthanc_dpp.dicom import admission

    monkeypatch.setattr(admission, "MAXIMUM_REFUSING_ADDRESSES", 10)
    monkeypatch.setattr(admission, "EVICTION_AGE", 1e9)  # the waiting one stays
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
    counted: list[str] = []
    guard.on_refusal = counted.append
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
    assert counted == ["connection", "evicted"]


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
        (Standing(False, frozenset()), CALLING_AE_NOT_RECOGNIZED),
        (Standing(True, frozenset()), PERMANENTLY_REFUSED),
        (Standing(False, frozenset({Service.ECHO})), LOCAL_LIMIT_EXCEEDED),  # share taken
        (Standing(True, frozenset({Service.FIND})), None),
    ],
)
def test_requests_are_rejected_permanently_without_rights_transiently_over_limits(
    caller: Standing, rejection: tuple[int, int, int] | None, caplog
) -> None:
    guard = ConnectionGuard(
        Limits(30, 60, 16382, per_address=5, waiting=5, associations=5, unknown_associations=1),
        clock=Clock(),
        judge=lambda aet, host: caller,
    )
    counted: list[str] = []
    guard.on_refusal = counted.append
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
    expected = {None: [], LOCAL_LIMIT_EXCEEDED: ["busy"]}.get(rejection, ["rejected"])
    assert counted == expected


@contextlib.contextmanager
def refused_connection(
    clock: Clock,
) -> Iterator[tuple[ConnectionGuard, socket.socket, socket.socket]]:
    """A guard whose one connection from 10.1.2.3 is taken, and a second one it refused:
    the guard, the refused connection's listener side and its peer's side."""
    guard = make_guard(clock, per_address=1)
    guard.on_open(open_event(fake_assoc()))
    left, right = socket.socketpair()
    with left, right:
        assert not guard.verify(left, ("10.1.2.3", 1))
        yield guard, left, right


def test_a_refused_connection_is_answered_after_its_request_then_closed() -> None:
    with refused_connection(Clock()) as (guard, left, right):
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
    with refused_connection(clock) as (guard, left, right):
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
    def judge(aet: str, host: str) -> Standing:
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


# -- what one DIMSE message may make the process hold ---------------------------------


def command(field: int, data_set_type: int) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.1.1"
    ds.CommandField = field
    ds.MessageID = 7
    ds.CommandDataSetType = data_set_type
    return encode(ds, True, True)


ECHO = command(0x0030, 0x0101)  # no dataset: the message ends with its command
FIND = command(0x0020, 0x0000)  # an identifier follows


def pdv(data: bytes, *, is_command: bool = False, last: bool = False) -> bytes:
    control = (0x01 if is_command else 0) | (0x02 if last else 0)
    return struct.pack(">LBB", len(data) + 2, 1, control) + data


def p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


def meter() -> MessageMeter:
    return MessageMeter(1 << 20, MAXIMUM_COMMAND_SIZE, MINIMUM_FRAGMENTS)


def test_command_fragments_that_never_end_pass_the_command_limit() -> None:
    counting = meter()
    fragment = pdv(b"\x00" * 4000, is_command=True)
    assert [counting.feed(fragment) for _ in range(4)] == [None] * 4
    assert counting.feed(fragment) == f"a command set of more than {MAXIMUM_COMMAND_SIZE} bytes"


def test_a_command_without_dataset_ends_its_message() -> None:
    counting = meter()
    for _ in range(10 * MAXIMUM_COMMAND_SIZE // len(ECHO)):  # far more than one command's worth
        assert counting.feed(pdv(ECHO, is_command=True, last=True)) is None
    assert counting.command == b"" and counting.fragments == 0


def test_repeating_the_last_command_fragment_does_not_restart_the_count() -> None:
    # After a command announcing a dataset, pynetdicom appends further
    # command fragments to the same command set.
    counting = meter()
    results = [counting.feed(pdv(FIND, is_command=True, last=True)) for _ in range(1000)]
    assert results[-1] == f"a command set of more than {MAXIMUM_COMMAND_SIZE} bytes"


def test_pdvs_after_the_end_of_a_message_are_dropped_as_pynetdicom_does() -> None:
    counting = meter()
    body = pdv(ECHO, is_command=True, last=True) + pdv(b"\x00" * 100, is_command=True)
    assert counting.feed(body) is None
    assert counting.command == b""


def test_empty_fragments_pass_the_fragment_limit() -> None:
    counting = MessageMeter(1 << 20, MAXIMUM_COMMAND_SIZE, 100)
    body = pdv(FIND, is_command=True, last=True) + pdv(b"") * 99
    assert counting.feed(body) is None
    assert counting.feed(pdv(b"")) == "a message in more than 100 fragments"


def test_the_fragment_limit_grows_with_the_dataset_limit() -> None:
    assert make_guard(Clock()).maximum_fragments() == MINIMUM_FRAGMENTS
    guard = make_guard(Clock(), maximum_dataset_size=64 << 20)
    assert guard.maximum_fragments() == (64 << 20) // 256


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    """The association's socket (the guard checks PDUs only on a connection)."""
    left, right = socket.socketpair()
    with left, right:
        yield left


def read_pdus(reader: FakeReader) -> None:
    """Read PDUs as pynetdicom's DUL does: a 6-byte header, then the length it announces."""
    while reader.stream:
        header = reader.recv(6)
        reader.recv(struct.unpack(">BBL", header)[2])


def test_endless_command_set_is_aborted(caplog) -> None:
    guard = make_guard(Clock())
    left, right = socket.socketpair()
    with left, right:
        stream = p_data(pdv(b"\x00" * 16000, is_command=True)) * 10
        assoc = fake_assoc(stream, sock=left)
        guard.on_open(open_event(assoc))
        counted: list[str] = []
        guard.on_refusal = counted.append
        with pytest.raises(PduTooLarge), caplog.at_level(logging.WARNING):
            read_pdus(assoc.dul.socket)
        assert right.recv(100) == abort_pdu()
    assert counted == ["aborted"]
    assert len(assoc.dul.socket.stream) == 8 * len(p_data(pdv(b"\x00" * 16000)))
    assert (
        f"Aborted the association with 10.1.2.3: a command set of more than "
        f"{MAXIMUM_COMMAND_SIZE} bytes was being sent" in caplog.text
    )


def test_six_byte_p_data_bodies_are_counted_too(sock) -> None:
    # A P-DATA-TF whose body is as long as a PDU header (one empty PDV, 6
    # bytes) is a body all the same.
    guard = make_guard(Clock())
    stream = p_data(pdv(FIND, is_command=True, last=True)) + p_data(pdv(b"\x00" * 4))
    stream += p_data(pdv(b"")) * MINIMUM_FRAGMENTS
    assoc = fake_assoc(stream, sock)
    guard.on_open(open_event(assoc))
    with pytest.raises(PduTooLarge, match="more than 4096 fragments"):
        read_pdus(assoc.dul.socket)


def test_many_messages_on_one_association_are_not_refused(sock) -> None:
    guard = make_guard(Clock())
    stream = p_data(pdv(ECHO, is_command=True, last=True)) * 5000
    stream += (
        p_data(pdv(FIND, is_command=True, last=True)) + p_data(pdv(b"x" * 100, last=True))
    ) * 100
    assoc = fake_assoc(stream, sock)
    guard.on_open(open_event(assoc))
    read_pdus(assoc.dul.socket)
    assert assoc.dul.socket.stream == b""


def test_p_data_without_our_size_limit_is_bounded_by_the_dataset_limit(sock) -> None:
    guard = make_guard(Clock(), maximum_pdu_size=0, maximum_dataset_size=4 << 20)
    allowed = (4 << 20) + MAXIMUM_COMMAND_SIZE + MAXIMUM_OTHER_PDU
    assert guard.allowed_pdu(0x04) == allowed
    assoc = fake_assoc(pdu(0x04, allowed + 1), sock)
    guard.on_open(open_event(assoc))
    assoc.dul.socket.recv(6)
    with pytest.raises(PduTooLarge):
        assoc.dul.socket.recv(allowed + 1)


# -- what pynetdicom fails on ---------------------------------------------------------


def test_an_exception_in_the_state_machine_aborts_and_closes(monkeypatch, caplog) -> None:
    from orthanc_dpp.dicom import pynetdicom_private

    def action(event: str) -> None:
        raise ValueError("Invalid A-ABORT 'Source' value '114'")

    closed = []
    monkeypatch.setattr(pynetdicom_private, "close_connection", closed.append)
    guard = make_guard(Clock())
    left, right = socket.socketpair()
    with left, right:
        assoc = fake_assoc(sock=left, action=action)
        guard.on_open(open_event(assoc))
        with caplog.at_level(logging.WARNING):
            assoc.dul.state_machine.do_action("Evt16")  # no exception escapes
        assert right.recv(100) == abort_pdu()
    assert assoc.dul.killed
    assert closed == [assoc]
    assert (
        "Aborted the association with 10.1.2.3: what it sent could not be processed "
        "(ValueError: Invalid A-ABORT 'Source' value '114')" in caplog.text
    )


def test_a_connection_closed_before_association_ends_its_thread_at_once() -> None:
    guard = make_guard(Clock())
    left, right = socket.socketpair()
    with left, right:
        refused, established = fake_assoc(sock=left), fake_assoc(sock=left)
        for assoc in (refused, established):
            guard.on_open(open_event(assoc))
        guard.on_established(SimpleNamespace(assoc=established))
        for assoc in (refused, established):
            guard.on_close(SimpleNamespace(assoc=assoc))
    # What pynetdicom's acceptor thread gets when its wait for A-ASSOCIATE times out.
    assert refused.dul.to_user_queue.get_nowait() is None
    assert established.dul.to_user_queue.empty()


def test_messages_waiting_to_be_served_are_bounded(sock, caplog) -> None:
    # The reactor is busy (a long C-MOVE, say): pynetdicom would queue every
    # further message, each up to MaximumDatasetSize.
    guard = make_guard(Clock())
    echo = p_data(pdv(ECHO, is_command=True, last=True))
    assoc = fake_assoc(echo * (MAXIMUM_PENDING_MESSAGES + 5), sock)
    guard.on_open(open_event(assoc))
    reader = assoc.dul.socket
    with pytest.raises(PduTooLarge), caplog.at_level(logging.WARNING):
        while reader.stream:
            header = reader.recv(6)
            reader.recv(struct.unpack(">BBL", header)[2])
            assoc.dimse.msg_queue.put("a complete message nobody takes")
    assert assoc.dimse.msg_queue.qsize() == MAXIMUM_PENDING_MESSAGES
    assert (
        f"a further message ({MAXIMUM_PENDING_MESSAGES} DIMSE messages already wait to be served)"
        in caplog.text
    )


# -- what an A-ASSOCIATE-RQ may cost ---------------------------------------------------


def associate_rq(contexts: int, syntaxes: int) -> bytes:
    """An A-ASSOCIATE-RQ body with ``contexts`` contexts of ``syntaxes`` transfer syntaxes each."""

    def item(item_type: int, value: bytes) -> bytes:
        return struct.pack(">BBH", item_type, 0, len(value)) + value

    body = b"\x00\x01\x00\x00" + b"ORTHANC_DPP     " + b"SCU             " + b"\x00" * 32
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for n in range(contexts):
        sub = item(0x30, b"1.2.840.10008.1.1")
        sub += item(0x40, b"1.2.840.10008.1.2") * syntaxes
        body += item(0x20, bytes([(2 * n + 1) % 256, 0, 0, 0]) + sub)
    return body + item(0x50, item(0x51, struct.pack(">L", 16382)))


def test_associate_requests_within_the_standard_pass() -> None:
    assert associate_rq_problem(associate_rq(128, 35)) is None


@pytest.mark.parametrize(
    ("contexts", "syntaxes", "problem"),
    [
        (129, 1, "an A-ASSOCIATE-RQ with 129 presentation contexts (at most 128)"),
        (12000, 1, "an A-ASSOCIATE-RQ with 12000 presentation contexts (at most 128)"),
        (100, 100, "an A-ASSOCIATE-RQ with 10000 transfer syntaxes (at most 8192)"),
    ],
)
def test_costly_associate_requests_are_refused(contexts, syntaxes, problem, sock) -> None:
    assert associate_rq_problem(associate_rq(contexts, syntaxes)) == problem
    body = associate_rq(contexts, syntaxes)
    guard = make_guard(Clock())
    assoc = fake_assoc(struct.pack(">BBL", 0x01, 0, len(body)) + body, sock)
    guard.on_open(open_event(assoc))
    with pytest.raises(PduTooLarge, match="A-ASSOCIATE-RQ"):
        read_pdus(assoc.dul.socket)


def test_a_malformed_associate_request_is_left_to_pynetdicom() -> None:
    body = associate_rq(3, 3)
    assert associate_rq_problem(body[:-7] + b"\x20\x00\xff\xff") is None
