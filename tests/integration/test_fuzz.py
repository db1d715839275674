"""A PDU and DIMSE fuzzer against the DPP listener of the real Orthanc.

Mutated and random A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE and A-ABORT PDUs;
command sets with wrong, missing or unknown elements; C-FIND, C-GET and
C-MOVE identifiers whose every element has a wrong VR, from a declared
modality allowed to find, get and move (so the identifiers reach the
handlers). The cases come from one fixed seed, their number is bounded and
so is the time each one may take. The test asserts what an administrator
would check after such a visit: Orthanc runs and answers REST, its memory
did not grow beyond a generous bound, every connection was ended promptly
by the listener, and a permitted modality is served at once afterwards.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from dpp_tools.samples import make_library
from orthanc_dpp.model.key_table import APPROVAL_MODEL, DPP_MODEL, KeyRow
from tests.hostile import rss_kb
from tests.orthanc_server import OrthancServer
from tests.peers import c_find, echo_works, find_identifier, store_protocols

SEED = 20261207
#: Cases per kind; all kinds together stay at a few hundred.
CASES = 60
TIMEOUT = 2  # AcseTimeout, NetworkTimeout and DimseTimeout of the fuzzed server
#: How long the listener may take to end a case whatever was sent (timers included).
CASE_LIMIT = 3 * TIMEOUT + 5
#: How long a case waits for an answer before it closes its side of the connection.
ANSWER_WAIT = 0.5
#: Resident memory Orthanc may gain over the whole run (KiB).
RSS_GROWTH_LIMIT = 150 << 10
TOTAL_TIME_LIMIT = 240.0

CONTEXTS = [
    (1, Verification),
    (3, DPP_MODEL.find),
    (5, DPP_MODEL.get),
    (7, DPP_MODEL.move),
    (9, APPROVAL_MODEL.find),
]
#: Command fields of the requests sent on each context above.
REQUESTS = {3: 0x0020, 5: 0x0010, 7: 0x0021, 9: 0x0020}

VRS = [
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
]  # fmt: skip
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("fuzz"),
        dpp={
            "AcseTimeout": TIMEOUT,
            "NetworkTimeout": TIMEOUT,
            "DimseTimeout": TIMEOUT,
            "MaximumDatasetSize": 1 << 20,
        },
    )
    with server:
        store_protocols(server, make_library(6, seed=7300))
        yield server


# -- encoding -------------------------------------------------------------------------


def associate_rq(called: str, calling: str = "TEST_SCU", explicit: bool = True) -> bytes:
    """A valid A-ASSOCIATE-RQ proposing :data:`CONTEXTS`, encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    syntax = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    contexts = []
    for context_id, abstract in CONTEXTS:
        context = build_context(abstract, [syntax])
        context.context_id = context_id
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1.1"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def release_rq() -> bytes:
    return bytes(A_RELEASE_RQ().encode())


def abort_rq() -> bytes:
    abort = A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = 0x00, 0x00
    return bytes(abort.encode())


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    return struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment


def message(context_id: int, command: bytes, data: bytes | None, fragment: int = 16000) -> bytes:
    """P-DATA-TF PDUs carrying one DIMSE message, fragmented as a peer would."""
    out = b""
    for start in range(0, max(len(command), 1), fragment):
        last = start + fragment >= len(command)
        out += pdu(0x04, pdv(context_id, 0x03 if last else 0x01, command[start : start + fragment]))
    if data is not None:
        for start in range(0, max(len(data), 1), fragment):
            last = start + fragment >= len(data)
            out += pdu(
                0x04, pdv(context_id, 0x02 if last else 0x00, data[start : start + fragment])
            )
    return out


def command_set(context_id: int, message_id: int = 1) -> Dataset:
    """The command set of a request on ``context_id`` (an identifier follows)."""
    abstract = dict(CONTEXTS)[context_id]
    ds = Dataset()
    ds.AffectedSOPClassUID = abstract
    ds.CommandField = REQUESTS.get(context_id, 0x0030)
    ds.MessageID = message_id
    if context_id in REQUESTS:
        ds.Priority = 0
        ds.CommandDataSetType = 0x0000
    else:
        ds.CommandDataSetType = 0x0101
    if ds.CommandField == 0x0021:
        ds.MoveDestination = "TEST_SCU"
    return ds


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, whatever VR and value it is given."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in LONG_VRS:
        return head + struct.pack("<HL", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def tags_of(rows: tuple[KeyRow, ...]) -> list[tuple[int, tuple[KeyRow, ...]]]:
    return [(row.tag, row.items) for row in rows]


# -- cases --------------------------------------------------------------------------------


@dataclass
class Case:
    kind: str
    number: int
    payload: bytes
    associate_first: bool = False  # send a valid A-ASSOCIATE-RQ and wait for its answer


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random byte-level mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.randrange(6)
        position = rng.randrange(len(out)) if out else 0
        if choice == 0 and out:  # flip a byte
            out[position] = rng.randrange(256)
        elif choice == 1:  # truncate
            del out[position:]
        elif choice == 2:  # insert garbage
            out[position:position] = rng.randbytes(rng.randint(1, 64))
        elif choice == 3 and out:  # delete a run
            del out[position : position + rng.randint(1, 16)]
        elif choice == 4 and len(out) >= position + 4:  # a length field gone wild
            out[position : position + 4] = struct.pack(
                ">L", rng.choice([0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])
            )
        else:  # duplicate a run
            out[position:position] = out[position : position + rng.randint(1, 64)]
    return bytes(out)


def association_cases(rng: random.Random, called: str) -> Iterator[Case]:
    valid = associate_rq(called)
    for number in range(CASES):
        choice = number % 4
        if choice == 0:
            payload = mutate(rng, valid)
        elif choice == 1:  # the body mutated, the header's length kept right
            payload = pdu(0x01, mutate(rng, valid[6:]))
        elif choice == 2:  # many repeated or random items in a well-framed PDU
            item = valid[74 : 74 + rng.randint(4, 200)]
            body = valid[6:74] + item * rng.randint(1, 2000)
            payload = pdu(0x01, body[: 1 << 20])
        else:  # AE titles of any bytes, called or calling (at offsets 10 and 26)
            titles = bytearray(valid)
            start = rng.choice([10, 26])
            titles[start : start + 16] = rng.randbytes(16)
            payload = mutate(rng, bytes(titles)) if rng.random() < 0.3 else bytes(titles)
        yield Case("A-ASSOCIATE-RQ", number, payload)


def random_pdu_cases(rng: random.Random) -> Iterator[Case]:
    for number in range(CASES):
        pdu_type = rng.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, rng.randrange(256)])
        body = rng.randbytes(rng.choice([0, 1, 4, 10, 100, 4000]))
        if number % 3 == 0:  # a length that does not match the body
            raw = struct.pack(">BBL", pdu_type, 0, rng.randrange(1 << 16)) + body
        else:
            raw = pdu(pdu_type, body)
        yield Case("random PDU", number, raw, associate_first=number % 2 == 1)


def after_association_cases(rng: random.Random) -> Iterator[Case]:
    """P-DATA-TF, A-RELEASE, A-ABORT and A-ASSOCIATE PDUs on an established association."""
    echo = encode(command_set(1), True, True)
    for number in range(CASES):
        choice = number % 10
        context_id = rng.choice([1, 3, 5, 7, 9, 2, 11, 255, 0])
        if choice == 0:  # PDVs of every length and control header
            body = b"".join(
                struct.pack(">LBB", rng.choice([0, 1, 2, 3, 100, 0xFFFFFFFF]), context_id, c)
                + rng.randbytes(rng.randrange(8))
                for c in rng.choices(range(256), k=rng.randint(1, 8))
            )
            payload = pdu(0x04, body)
        elif choice == 1:  # data before any command
            payload = pdu(0x04, pdv(context_id, rng.choice([0x00, 0x02]), rng.randbytes(50)))
        elif choice == 2:  # a C-ECHO mutated
            payload = pdu(0x04, pdv(1, 0x03, mutate(rng, echo)))
        elif choice == 3:  # A-RELEASE-RQ and A-ABORT with garbage bodies
            pdu_type = rng.choice([0x05, 0x06, 0x07])
            payload = pdu(pdu_type, rng.randbytes(rng.choice([0, 3, 4, 5, 100])))
        elif choice == 4:  # a second A-ASSOCIATE-RQ, or -AC, -RJ
            payload = pdu(rng.choice([0x01, 0x02, 0x03]), rng.randbytes(rng.randrange(300)))
        elif choice == 5:  # the command set's last fragment again and again
            find = encode(command_set(3), True, True)
            payload = pdu(0x04, pdv(3, 0x03, find) * rng.randint(2, 200))
        elif choice == 6:  # the P-DATA-TF mutated
            payload = mutate(rng, message(1, echo, None))
        elif choice == 7:  # many empty fragments
            payload = pdu(0x04, pdv(context_id, rng.choice([0, 1]), b"") * rng.randint(1, 2000))
        elif choice == 8:  # a release request, then data
            payload = release_rq() + message(1, echo, None)
        else:  # abort in the middle of a message
            payload = pdu(0x04, pdv(3, 0x01, echo[:10])) + abort_rq()
        yield Case("after association", number, payload, associate_first=True)


def command_cases(rng: random.Random) -> Iterator[Case]:
    """Requests whose command set has wrong, missing or unknown elements."""
    for number in range(CASES):
        context_id = rng.choice([1, 3, 5, 7, 9])
        ds = command_set(context_id, rng.randrange(1 << 16))
        choice = number % 6
        if choice == 0 and len(ds):  # an element missing
            del ds[rng.choice(list(ds.keys()))]
        elif choice == 1:  # any command field
            ds.CommandField = rng.choice([0, 1, 0x8001, 0x0FFF, 0x0030, 0x0010, 0xFFFF])
        elif choice == 2:  # the dataset announced or not, whatever follows
            ds.CommandDataSetType = rng.choice([0x0000, 0x0101, 0x0102, 0xFFFF])
        elif choice == 3:  # another SOP class, another context
            ds.AffectedSOPClassUID = rng.choice(["1.2.3", "", "1.2.840.10008.5.1.4.1.1.7"])
        elif choice == 4:  # unknown and odd group 0000 elements
            ds.add_new(0x00000000 | rng.randrange(0x1000, 0xFFFF), "UN", rng.randbytes(9))
        command = encode(ds, True, True)
        if choice == 4:  # a Move Destination of any bytes, out of order
            command += struct.pack("<HHL", 0x0000, 0x0600, 20) + rng.randbytes(20)
        if choice == 5:
            command = mutate(rng, command)
        identifier = encode(find_identifier(), False, True)
        data = identifier if rng.random() < 0.7 else None
        yield Case("command set", number, message(context_id, command, data), associate_first=True)


def wrong_value(rng: random.Random, vr: str) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return b""
    if choice == 1:
        return rng.randbytes(rng.randrange(1, 64))
    if choice == 2:
        return b"*" if rng.random() < 0.5 else b"?\\*\\" * rng.randrange(1, 20)
    if choice == 3:
        return rng.randbytes(rng.randrange(1, 8)) * rng.randrange(1, 500)
    # Undefined length (sequence-like) or a nested garbage item.
    return struct.pack("<HHL", 0xFFFE, 0xE000, rng.choice([0xFFFFFFFF, 8, 200])) + rng.randbytes(8)


def identifier_cases(rng: random.Random) -> Iterator[Case]:
    """C-FIND, C-GET and C-MOVE identifiers with every element of a wrong VR."""
    models = {3: DPP_MODEL, 5: DPP_MODEL, 7: DPP_MODEL, 9: APPROVAL_MODEL}
    for number in range(CASES):
        context_id = rng.choice(list(models))
        rows = tags_of(models[context_id].table)
        elements = []
        for tag, items in sorted(rng.sample(rows, rng.randint(1, min(6, len(rows))))):
            vr = rng.choice(VRS)
            value = wrong_value(rng, vr)
            if items and rng.random() < 0.5:  # an item whose elements are wrong too
                inner = b"".join(
                    element(t, rng.choice(VRS), wrong_value(rng, "UN"))
                    for t, _ in sorted(rng.sample(tags_of(items), min(3, len(items))))
                )
                item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
                vr, value = "SQ", item
            elements.append(element(tag, vr, value))
        command = encode(command_set(context_id, number + 1), True, True)
        payload = message(context_id, command, b"".join(elements))
        yield Case("identifier", number, payload, associate_first=True)


# -- running a case ------------------------------------------------------------------------


@dataclass
class Outcome:
    ended_by_listener: bool  # answered and ended, or closed, without our help
    seconds: float
    received: bytes


def read_pdus(received: bytes) -> list[int]:
    """The types of the complete PDUs in ``received``."""
    types, position = [], 0
    while position + 6 <= len(received):
        pdu_type, _, length = struct.unpack_from(">BBL", received, position)
        if position + 6 + length > len(received):
            break
        types.append(pdu_type)
        position += 6 + length
    return types


def statuses(received: bytes) -> list[tuple[int, str]]:
    """(Status, Error Comment) of every DIMSE response in ``received`` (one-fragment commands)."""
    found, position = [], 0
    while position + 6 <= len(received):
        pdu_type, _, length = struct.unpack_from(">BBL", received, position)
        body = received[position + 6 : position + 6 + length]
        position += 6 + length
        offset = 0
        while pdu_type == 0x04 and offset + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, offset)
            if body[offset + 5] == 0x03:
                command = decode(BytesIO(body[offset + 6 : offset + 4 + item_length]), True, True)
                found.append((int(command.Status), str(command.get("ErrorComment", ""))))
            offset += 4 + item_length
    return found


def ended(received: bytes) -> bool:
    """Whether the listener's answer ends the association (RJ, RP or A-ABORT)."""
    return any(t in (0x03, 0x06, 0x07) for t in read_pdus(received))


def run(orthanc: OrthancServer, case: Case, rng: random.Random) -> Outcome:
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", orthanc.dpp_port), 5)
    sock.settimeout(ANSWER_WAIT)
    received = b""
    closed = False

    def receive(until: float, done: Callable[[bytes], bool] = ended) -> None:
        nonlocal received, closed
        while not closed and not done(received) and time.monotonic() < until:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset by the listener
                closed = True
                return
            if not chunk:
                closed = True
            received += chunk

    try:
        if case.associate_first:
            sock.sendall(associate_rq(orthanc.aet, explicit=rng.random() < 0.8))
            receive(time.monotonic() + CASE_LIMIT, lambda data: bool(read_pdus(data)))
            assert read_pdus(received)[:1] == [0x02], f"{case.kind} {case.number}: {received!r}"
            received = b""
        try:
            sock.sendall(case.payload + release_rq())
        except OSError:
            closed = True
        receive(time.monotonic() + ANSWER_WAIT)
        by_listener = closed or ended(received)
        if not by_listener:
            # Waiting for the rest of a PDU, as it should: end our side and
            # expect the listener to close its own at once.
            sock.shutdown(socket.SHUT_WR)
            receive(started + CASE_LIMIT)
        assert closed or ended(received), (
            f"{case.kind} case {case.number}: the listener kept the connection "
            f"{CASE_LIMIT} s; received {received[:64]!r}"
        )
        return Outcome(by_listener, time.monotonic() - started, received)
    finally:
        sock.close()


CASE_KINDS: list[tuple[str, Callable[[random.Random, OrthancServer], Iterator[Case]]]] = [
    ("associate", lambda rng, orthanc: association_cases(rng, orthanc.aet)),
    ("random", lambda rng, orthanc: random_pdu_cases(rng)),
    ("after", lambda rng, orthanc: after_association_cases(rng)),
    ("command", lambda rng, orthanc: command_cases(rng)),
    ("identifier", lambda rng, orthanc: identifier_cases(rng)),
]


def test_fuzzed_pdus_and_dimse_messages_leave_orthanc_serving(orthanc) -> None:
    rng = random.Random(SEED)
    assert echo_works(orthanc)
    before = rss_kb(orthanc)
    peak = before
    deadline = time.monotonic() + TOTAL_TIME_LIMIT
    outcomes: list[tuple[Case, Outcome]] = []
    for _, make in CASE_KINDS:
        for case in make(rng, orthanc):
            assert time.monotonic() < deadline, f"the fuzzer ran over {TOTAL_TIME_LIMIT} s"
            outcomes.append((case, run(orthanc, case, rng)))
            assert orthanc.process is not None and orthanc.process.poll() is None, (
                f"Orthanc exited after {case.kind} case {case.number}:\n{orthanc.log()[-3000:]}"
            )
            peak = max(peak, rss_kb(orthanc))
    assert len(outcomes) == CASES * len(CASE_KINDS)
    # Every identifier reached a handler and got a final status: wrong VRs
    # are refused with a specific Error Comment, never left unanswered.
    finals = [statuses(o.received)[-1:] for c, o in outcomes if c.kind == "identifier"]
    assert all(f and f[0][0] not in (0xFF00, 0xFF01) for f in finals), finals
    assert any(f[0][0] == 0xC000 and f[0][1].startswith("VR ") for f in finals), finals
    # Orthanc answers, did not balloon, and serves a permitted modality at once.
    assert orthanc.get_json("/system")["DicomAet"] == "ORTHANC"
    assert peak - before < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - before) >> 10} MiB"
    assert echo_works(orthanc)
    found = c_find(orthanc, find_identifier())
    assert [status for status, _ in found] == [0xFF00] * 6 + [0x0000]
    # No thread died of what a peer sent, and no traceback flooded the log.
    log = orthanc.log()
    assert "Exception in thread" not in log, log[-6000:]
    assert "Traceback" not in log, log[log.index("Traceback") :][:3000]
