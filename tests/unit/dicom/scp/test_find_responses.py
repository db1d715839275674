"""Encoded C-FIND responses: the cache, the PDUs on the wire, the batched writes."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import Association
from pynetdicom.dimse_messages import C_FIND_RSP, DIMSEMessage
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelFind as DPP_FIND

from orthanc_dpp.dicom.scp.find_responses import (
    ENTRY_OVERHEAD,
    Batch,
    PendingEncoder,
    ResponseCache,
)
from orthanc_dpp.dicom.scp.handlers import FindHandler, FindOptions
from orthanc_dpp.model import sop
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.query import compile_query
from tests import dicom_client
from tests.datasets import build
from tests.scp_harness import find_scp, gate, universal


def identifier(name: str = "CT Head", size: int = 0) -> bytes:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.ProtocolName = name
    if size:
        ds.add_new(0x0040A160, "UT", "x" * size)  # Text Value: no length limit
    return encode(ds, True, True)


def split_pdus(data: bytes) -> list[bytes]:
    """The P-DATA-TF PDUs in ``data``, each checked to be one complete PDU."""
    pdus = []
    while data:
        assert data[0] == 0x04
        (length,) = struct.unpack(">I", data[2:6])
        pdus.append(data[: 6 + length])
        data = data[6 + length :]
    return pdus


def received(data: bytes) -> list[DIMSEMessage]:
    """The DIMSE messages a pynetdicom peer decodes from ``data``."""
    messages: list[DIMSEMessage] = []
    message = DIMSEMessage()
    for raw in split_pdus(data):
        pdu = P_DATA_TF()
        pdu.decode(raw)
        if message.decode_msg(pdu.to_primitive()):
            messages.append(message)
            message = DIMSEMessage()
    return messages


# -- the PDUs ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0xFF00, 0xFF01])
def test_a_pending_response_is_one_pdu_a_peer_decodes_as_the_c_find_rsp(code: int) -> None:
    body = identifier()
    data = PendingEncoder(7, DPP_FIND, 3, 16382).encode(code, body)
    assert len(split_pdus(data)) == 1  # command and identifier together
    (message,) = received(data)
    assert isinstance(message, C_FIND_RSP)
    assert message.context_id == 3
    command = message.command_set
    assert command.MessageIDBeingRespondedTo == 7
    assert command.AffectedSOPClassUID == DPP_FIND
    assert command.Status == code
    assert command.CommandDataSetType != 0x0101  # a data set follows
    assert message.data_set.getvalue() == body
    assert decode(message.data_set, True, True).ProtocolName == "CT Head"


def test_a_response_larger_than_the_peers_pdu_limit_is_split_within_it() -> None:
    body = identifier(size=5000)
    data = PendingEncoder(9, DPP_FIND, 1, 1024).encode(0xFF00, body)
    pdus = split_pdus(data)
    assert len(pdus) > 5
    assert all(len(pdu) - 6 <= 1024 for pdu in pdus)
    (message,) = received(data)
    assert message.data_set.getvalue() == body


def test_no_pdu_limit_keeps_even_a_large_response_in_one_pdu() -> None:
    data = PendingEncoder(9, DPP_FIND, 1, 0).encode(0xFF00, identifier(size=100_000))
    assert len(split_pdus(data)) == 1
    assert len(received(data)) == 1


def test_responses_written_back_to_back_are_decoded_one_by_one() -> None:
    encoder = PendingEncoder(2, DPP_FIND, 1, 16382)
    data = b"".join(encoder.encode(0xFF00, identifier(f"P{n}")) for n in range(3))
    names = [decode(m.data_set, True, True).ProtocolName for m in received(data)]
    assert names == ["P0", "P1", "P2"]


# -- the batch -----------------------------------------------------------------------------


def test_a_batch_writes_when_full_when_old_and_when_flushed() -> None:
    writes: list[bytes] = []
    now = [0.0]
    batch = Batch(writes.append, limit=10, max_delay=0.005, clock=lambda: now[0])
    batch.add(b"abcd")
    batch.add(b"efgh")
    assert writes == []
    batch.add(b"ijkl")  # 12 bytes wait: full
    assert writes == [b"abcdefghijkl"]
    batch.add(b"m")
    now[0] = 0.006  # the oldest waited longer than max_delay
    batch.add(b"n")
    assert writes[-1] == b"mn"
    batch.add(b"o")
    batch.flush()
    batch.flush()  # nothing left: no empty write
    assert writes == [b"abcdefghijkl", b"mn", b"o"]


# -- the cache -----------------------------------------------------------------------------


def test_the_cache_answers_only_for_the_same_record_and_request() -> None:
    cache = ResponseCache(1 << 20)
    record, other = object(), object()
    cache.put(record, "query A", 0xFF00, b"bytes")
    assert cache.get(record, "query A") == (0xFF00, b"bytes")
    assert cache.get(record, "query B") is None
    assert cache.get(other, "query A") is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_cache_stays_within_its_bytes_dropping_the_least_recently_used() -> None:
    cost = 100 + ENTRY_OVERHEAD
    cache = ResponseCache(3 * cost)
    records = [object() for _ in range(4)]
    for n, record in enumerate(records[:3]):
        cache.put(record, "q", 0xFF00, bytes([n]) * 100)
    assert cache.get(records[0], "q") is not None  # now the most recently used
    cache.put(records[3], "q", 0xFF00, b"3" * 100)
    assert cache.bytes <= 3 * cost
    assert cache.get(records[1], "q") is None  # the least recently used went
    assert cache.get(records[0], "q") is not None
    assert cache.get(records[3], "q") is not None


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = ResponseCache(0)
    record = object()
    cache.put(record, "q", 0xFF00, b"x")
    assert cache.get(record, "q") is None
    assert len(cache) == 0


def protocol(name: str) -> Dataset:
    return build(
        {
            "SOPClassUID": sop.CT_DPP_STORAGE,
            "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.5",
            "ProtocolName": name,
        }
    )


def test_a_new_version_of_a_protocol_is_answered_from_the_new_version() -> None:
    index = ProtocolIndex()
    index.put("o1", protocol("Head old"))
    handler = FindHandler(index, None, FindOptions(max_results=0), is_ready=lambda: True)  # type: ignore[arg-type]
    handler.cache = ResponseCache(1 << 20)
    query_ds = Dataset()
    query_ds.ProtocolName = ""
    query = compile_query(query_ds)
    respond = handler._encoded(("request", "ts", b"id"), (True, True, False))

    def answer() -> str:
        (entry,) = list(index.find(query, lambda: False))
        code, data = respond(query, entry)
        assert code == 0xFF00 and isinstance(data, bytes)
        return str(decode(BytesIO(data), True, True).ProtocolName)

    assert answer() == "Head old"
    assert answer() == "Head old"
    assert handler.cache.hits == 1
    index.put("o1", protocol("Head new"))
    assert answer() == "Head new"


# -- the routed loop over a real association -----------------------------------------------


def library(count: int) -> ProtocolIndex:
    index = ProtocolIndex()
    for n in range(count):
        index.put(
            f"o{n}",
            build(
                {
                    "SOPClassUID": sop.CT_DPP_STORAGE,
                    "SOPInstanceUID": f"1.2.826.0.1.3680043.8.498.{n}",
                    "ProtocolName": f"Protocol {n:04d} " + "long name " * (n % 5),
                }
            ),
        )
    return index


@pytest.fixture
def listener(routed: None) -> Iterator[tuple[int, FindHandler]]:
    handler = FindHandler(
        library(300),
        gate(),
        FindOptions(max_results=0),
        is_ready=lambda: True,
        cache=ResponseCache(1 << 20),
    )
    with find_scp(handler, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) as port:
        yield port, handler


def associate(port: int, syntax: str, max_pdu: int) -> Association:
    return dicom_client.associate(
        "127.0.0.1",
        port,
        "DPPTEST",
        calling_aet="SCU",
        contexts=[DPP_FIND],
        transfer_syntaxes=[syntax],
        timeout=10,
        maximum_pdu_size=max_pdu,
    )


@pytest.mark.parametrize(
    ("syntax", "max_pdu"),
    [(ExplicitVRLittleEndian, 0), (ImplicitVRLittleEndian, 16382), (ExplicitVRLittleEndian, 512)],
)
def test_every_match_arrives_once_in_order_and_again_from_the_cache(
    listener: tuple[int, FindHandler], syntax: str, max_pdu: int
) -> None:
    port, handler = listener
    expected = [f"Protocol {n:04d} " + "long name " * (n % 5) for n in range(300)]
    assoc = associate(port, syntax, max_pdu)
    try:
        for _ in range(2):  # the second answer comes from the cache
            answers = list(assoc.send_c_find(universal(), DPP_FIND))
            *pending, (final, _) = answers
            assert final.Status == 0x0000
            assert all(s.Status == 0xFF00 for s, _ in pending)
            assert [str(ds.ProtocolName).rstrip() for _, ds in pending] == [
                name.rstrip() for name in expected
            ]
            assert {tuple(ds.keys()) for _, ds in pending} == {
                (Tag("SOPInstanceUID"), Tag("ProtocolName"))
            }
    finally:
        assoc.release()
    assert handler.cache.hits >= 300


class SlowIndex(ProtocolIndex):
    """Matches one protocol every 2 ms, so that a C-CANCEL surely arrives mid-answer."""

    def find(self, query: Any, is_cancelled: Any) -> Iterator[Any]:
        for entry in super().find(query, is_cancelled):
            time.sleep(0.002)
            yield entry


def test_a_cancel_stops_the_fast_path_with_fe00(listener: tuple[int, FindHandler]) -> None:
    port, handler = listener
    slow = SlowIndex()
    for entry in handler.index.snapshot():
        slow.put_record(entry.orthanc_id, entry.record)
    handler.index = slow
    assoc = associate(port, ExplicitVRLittleEndian, 0)
    try:
        responses = assoc.send_c_find(universal(), DPP_FIND, msg_id=5)
        first, _ = next(responses)
        assert first.Status == 0xFF00
        assoc.send_c_cancel(5, query_model=DPP_FIND)
        statuses = [int(s.Status) for s, _ in responses]
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 200
