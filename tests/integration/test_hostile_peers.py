"""Stalled, half-open, oversized and garbage connections against the real Orthanc.

Each test ends the way an administrator would check: Orthanc answers, a
new association works at once, and the stored protocols are unchanged
(count and SHA-256 of every file). Everything is on loopback and bounded in
time; 127.0.0.2 plays a second host.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification

from dpp_tools.samples import make_library
from orthanc_dpp.dicom.admission import LOCAL_LIMIT_EXCEEDED, reject_pdu
from orthanc_dpp.dicom.connections import MAXIMUM_PENDING_MESSAGES
from orthanc_dpp.model.key_table import DPP_MODEL
from tests.hostile import admission_limited, rss_kb
from tests.orthanc_server import OrthancServer
from tests.peers import associate, echo_works
from tests.waiting import eventually

ACSE_TIMEOUT = 2
NETWORK_TIMEOUT = 3
PER_ADDRESS = 4
SILENT_TIMEOUT = 8  # seconds a C-MOVE to the silent destination waits for its answer


@pytest.fixture(scope="module")
def silent() -> Iterator[socket.socket]:
    """A C-MOVE destination that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listening:
        yield listening


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, silent: socket.socket
) -> Iterator[OrthancServer]:
    with admission_limited(
        tmp_path_factory.mktemp("hostile"),
        make_library(12, seed=7100),
        maximum_associations=10,
        per_address=PER_ADDRESS,
        acse_timeout=ACSE_TIMEOUT,
        network_timeout=NETWORK_TIMEOUT,
        config={
            "DicomModalities": {
                "silent": {
                    "AET": "SILENT",
                    "Host": "127.0.0.1",
                    "Port": silent.getsockname()[1],
                    "Timeout": SILENT_TIMEOUT,
                }
            }
        },
    ) as server:
        yield server


def connect(orthanc: OrthancServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", orthanc.dpp_port), 5, (source, 0))
    sock.settimeout(ACSE_TIMEOUT + NETWORK_TIMEOUT + 5)
    return sock


def closed_by_peer(sock: socket.socket) -> bytes:
    """Read until the listener closes the connection; what it sent before."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def association_works(orthanc: OrthancServer, source: str = "127.0.0.1") -> bool:
    return echo_works(orthanc, source=source, timeout=5)


def test_stalled_pdu_headers_are_dropped_and_lock_nobody_out(orthanc, unchanged) -> None:
    stalled = [connect(orthanc) for _ in range(12)]
    for sock in stalled:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200))  # A-ASSOCIATE-RQ header, then silence
    # Another host is served at once: one address holds at most PER_ADDRESS slots.
    started = time.monotonic()
    assert association_works(orthanc, source="127.0.0.2")
    # Every stalled connection is closed by the listener within AcseTimeout;
    # those over the address limit first get an A-ASSOCIATE-RJ transient,
    # "local limit exceeded" (PS3.8 9.3.4), as soon as their request begins.
    answers = []
    for sock in stalled:
        answers.append(closed_by_peer(sock))
        sock.close()
    assert answers.count(b"") == PER_ADDRESS
    assert answers.count(reject_pdu(*LOCAL_LIMIT_EXCEEDED)) == len(stalled) - PER_ADDRESS
    assert time.monotonic() - started < ACSE_TIMEOUT + 3
    assert association_works(orthanc)
    assert "Dropped the connection from 127.0.0.1: no association within AcseTimeout" in (
        orthanc.log()
    )
    assert f"(MaximumConnectionsPerAddress {PER_ADDRESS})" in orthanc.log()


def test_silent_connection_without_any_pdu_is_dropped(orthanc, unchanged) -> None:
    sock = connect(orthanc)
    started = time.monotonic()
    assert closed_by_peer(sock) == b""
    assert time.monotonic() - started < ACSE_TIMEOUT + 2
    sock.close()


def test_stall_inside_a_pdu_after_association_is_dropped(orthanc, unchanged) -> None:
    assoc = associate(orthanc, [Verification])
    raw = assoc.dul.socket.socket
    # A P-DATA-TF header announcing 100 bytes, then 10 of them and silence.
    raw.sendall(struct.pack(">BBL", 0x04, 0, 100) + b"\x00" * 10)
    started = time.monotonic()
    eventually(lambda: not assoc.is_alive(), NETWORK_TIMEOUT + 5, step=0.05)
    assert not assoc.is_established
    assert time.monotonic() - started < NETWORK_TIMEOUT + 3


def test_pdu_larger_than_maximum_is_aborted_before_it_is_read(orthanc, unchanged) -> None:
    assoc = associate(orthanc, [Verification])
    raw = assoc.dul.socket.socket
    # Stop pynetdicom's reader thread (it leaves the socket open): the
    # listener's answer is ours to read.
    assoc.dul._kill_thread = True
    assoc.dul.join(5)
    assert not assoc.dul.is_alive()
    raw.sendall(struct.pack(">BBL", 0x04, 0, 100 * 1024 * 1024) + b"\x00" * 1024)
    answer = closed_by_peer(raw)
    assert answer[:1] == b"\x07", answer[:16]  # A-ABORT
    assert "announces 104857600 bytes, more than the 16382 accepted (MaximumPduSize)" in (
        orthanc.log()
    )
    raw.close()


@pytest.mark.parametrize("seed", range(3))
def test_garbage_bytes_close_the_connection(orthanc, unchanged, seed: int) -> None:
    sock = connect(orthanc)
    sock.sendall(os.urandom(512))
    closed_by_peer(sock)
    sock.close()


def test_orthanc_stops_promptly_with_stalled_connections(make_server) -> None:
    server = make_server(dpp={"AcseTimeout": 600, "NetworkTimeout": 600})
    server.start()
    stalled = [connect(server) for _ in range(4)]
    for sock in stalled:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200))
    established = associate(server, [Verification])
    established.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 100))
    started = time.monotonic()
    assert server.stop(timeout=20) == 0
    assert time.monotonic() - started < 15
    for sock in stalled:
        sock.close()


def flood(raw: socket.socket, pdu: bytes, limit: int) -> int:
    """Send ``pdu`` again and again, at most ``limit`` bytes; how many went before the cut-off."""
    sent = 0
    raw.settimeout(NETWORK_TIMEOUT + 5)
    try:
        while sent < limit:
            raw.sendall(pdu)
            sent += len(pdu)
    except OSError:  # reset or broken pipe: the listener cut the connection
        pass
    return sent


def command_fragments(size: int) -> bytes:
    """A P-DATA-TF PDU of ``size`` bytes holding one command fragment that is never the last.

    The PDV is well formed (its item length counts the context ID, the
    control header and the fragment), so pynetdicom accepts each PDU and
    only the command-set limit can end the flood.
    """
    fragment = b"\x00" * (size - 12)
    pdv = struct.pack(">LBB", len(fragment) + 2, 1, 0x01) + fragment
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def test_endless_command_set_is_aborted_and_memory_stays_bounded(orthanc, unchanged) -> None:
    # Anyone may open an association for C-ECHO: no rights needed.
    assoc = associate(orthanc, [Verification], ae_title="STRANGER")
    raw = assoc.dul.socket.socket
    assoc.dul._kill_thread = True
    assoc.dul.join(5)
    assert not assoc.dul.is_alive()
    before = rss_kb(orthanc)
    limit = 64 << 20
    sent = flood(raw, command_fragments(16382), limit)
    answer = closed_by_peer(raw)
    raw.close()
    # Cut off long before 64 MiB (what was sent is what the socket buffers took).
    assert sent < limit // 4
    assert answer[:1] == b"\x07", answer[:16]  # A-ABORT
    assert "a command set of more than 16384 bytes" in orthanc.log()
    assert rss_kb(orthanc) - before < 16 << 10  # KiB: far below what was sent


def raw_association(orthanc: OrthancServer, ae_title: str = "STRANGER") -> socket.socket:
    """The socket of an established C-ECHO association, pynetdicom's reader stopped."""
    assoc = associate(orthanc, [Verification], ae_title=ae_title)
    raw = assoc.dul.socket.socket
    assoc.dul._kill_thread = True
    assoc.dul.join(5)
    assert not assoc.dul.is_alive()
    return raw


def test_command_set_pynetdicom_cannot_decode_is_aborted(orthanc, unchanged) -> None:
    raw = raw_association(orthanc)
    # A last command fragment without CommandField: pynetdicom's state
    # machine raised, its reader thread died and nobody closed the socket.
    command = struct.pack("<HHL", 0x0000, 0x0110, 2) + b"\x01\x00"  # MessageID only
    pdv = struct.pack(">LBB", len(command) + 2, 1, 0x03) + command
    raw.sendall(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)
    answer = closed_by_peer(raw)
    raw.close()
    assert answer[:1] == b"\x07", answer[:16]  # A-ABORT
    assert (
        "Aborted the association with 127.0.0.1: what it sent could not be processed "
        "(AttributeError:" in orthanc.log()
    )
    assert "Exception in thread" not in orthanc.log()


def test_rejected_requests_hold_no_association_slot(make_server) -> None:
    # pynetdicom's acceptor thread waited AcseTimeout for a request that
    # could no longer come: a few garbage A-ASSOCIATE-RQs locked every
    # modality out ("local limit exceeded") for that long.
    server = make_server(dpp={"AcseTimeout": 120, "MaximumAssociations": 3})
    server.start()
    for n in range(6):
        sock = connect(server, source=f"127.0.0.{10 + n}")
        sock.sendall(struct.pack(">BBL", 0x01, 0, 10) + b"\xff" * 10)
        assert closed_by_peer(sock)[:1] == b"\x07"  # A-ABORT
        sock.close()
    assert association_works(server)


def test_messages_sent_while_the_listener_is_busy_are_bounded(orthanc, unchanged) -> None:
    # While a C-MOVE waits for its destination, pynetdicom queued every
    # further message the peer sent, each up to MaximumDatasetSize.
    assoc = associate(
        orthanc, [Verification, DPP_MODEL.move], transfer_syntaxes=[ImplicitVRLittleEndian]
    )
    contexts = {c.abstract_syntax: c.context_id for c in assoc.accepted_contexts}
    raw = assoc.dul.socket.socket
    assoc.dul._kill_thread = True
    assoc.dul.join(5)
    assert not assoc.dul.is_alive()
    move = Dataset()
    move.AffectedSOPClassUID = DPP_MODEL.move
    move.CommandField = 0x0021
    move.MessageID = 1
    move.Priority = 0
    move.CommandDataSetType = 0x0000
    move.MoveDestination = "SILENT"
    identifier = Dataset()
    identifier.SOPInstanceUID = next(make_library(1, seed=7100)).SOPInstanceUID
    echo = Dataset()
    echo.AffectedSOPClassUID = Verification
    echo.CommandField = 0x0030
    echo.MessageID = 2
    echo.CommandDataSetType = 0x0101

    def message(context_id: int, fragments: list[tuple[int, bytes]]) -> bytes:
        out = b""
        for control, fragment in fragments:
            pdv = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
            out += struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv
        return out

    raw.sendall(
        message(
            contexts[DPP_MODEL.move],
            [(0x03, encode(move, True, True)), (0x02, encode(identifier, True, True))],
        )
    )
    echoes = message(contexts[Verification], [(0x03, encode(echo, True, True))]) * 64
    with contextlib.suppress(OSError):
        raw.sendall(echoes)
    answer = closed_by_peer(raw)
    raw.close()
    assert answer[:1] == b"\x07", answer[:16]  # A-ABORT
    assert (
        f"a further message ({MAXIMUM_PENDING_MESSAGES} DIMSE messages already wait to be "
        "served) was being sent" in orthanc.log()
    )


def associate_rq(orthanc: OrthancServer, abstract_syntaxes: list[bytes]) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing each abstract syntax in Implicit VR Little Endian."""

    def item(item_type: int, value: bytes) -> bytes:
        return struct.pack(">BBH", item_type, 0, len(value)) + value

    body = b"\x00\x01\x00\x00" + orthanc.aet.encode().ljust(16) + b"STRANGER".ljust(16)
    body += b"\x00" * 32 + item(0x10, b"1.2.840.10008.3.1.1.1")
    for n, abstract in enumerate(abstract_syntaxes):
        sub = item(0x30, abstract) + item(0x40, b"1.2.840.10008.1.2")
        body += item(0x20, bytes([(2 * n + 1) % 256, 0, 0, 0]) + sub)
    body += item(0x50, item(0x51, struct.pack(">L", 16382)))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def test_costly_association_request_is_aborted_before_negotiation(orthanc, unchanged) -> None:
    # 12,000 presentation contexts (at most 128 are possible) kept
    # pynetdicom busy for seconds, and it accepted the association.
    sock = connect(orthanc)
    sock.sendall(associate_rq(orthanc, [f"1.2.3.{n}".encode() for n in range(12000)]))
    answer = closed_by_peer(sock)
    sock.close()
    assert answer[:1] == b"\x07", answer[:16]  # A-ABORT
    assert "an A-ASSOCIATE-RQ with 12000 presentation contexts (at most 128)" in orthanc.log()


def test_invalid_uids_from_a_peer_do_not_flood_the_log(orthanc, unchanged) -> None:
    # Each distinct invalid UID printed a pydicom warning (two lines) to
    # Orthanc's log, and stayed in Python's warnings registry. (pynetdicom's
    # own one-line "Non-conformant" warnings stay: at most 128 contexts.)
    sock = connect(orthanc)
    sock.sendall(associate_rq(orthanc, [f"1.2.3.{n}x".encode() for n in range(100)]))
    assert closed_by_peer(sock)[:1] in (b"\x02", b"\x03", b"\x07")  # answered, whichever way
    sock.close()
    assert "Invalid value for VR UI: '1.2.3.99x'" not in orthanc.log()
