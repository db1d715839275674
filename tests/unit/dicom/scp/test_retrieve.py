"""C-GET and C-MOVE over real pynetdicom associations on 127.0.0.1 (and one DCMTK storescp).

The SCP under test is a pynetdicom AE bound to our handlers, serving an
in-memory ProtocolSource; the requesters and move destinations are real
pynetdicom (or DCMTK) peers on free loopback ports, all stopped at the end.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from dpp_tools.samples import make_library, make_protocol, to_bytes
from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper
from orthanc_dpp.dicom.modalities import ModalityRegistry
from orthanc_dpp.dicom.scp import move
from orthanc_dpp.dicom.scp.get import GetHandler
from orthanc_dpp.dicom.scp.retrieve import (
    RetrieveOptions,
    Tally,
    parse_identifier,
)
from orthanc_dpp.dicom.scp.suboperations import conversion_loss
from orthanc_dpp.model import dimse_status, sop
from orthanc_dpp.model.dimse_status import InvalidIdentifier
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES
from tests.bare_archive import StallingPeer
from tests.datasets import identifier_for
from tests.orthanc_server import free_port
from tests.peers import storescp
from tests.scp_harness import (
    DPP_CLASSES,
    SCP_AET,
    SCU_AET,
    Harness,
    MemorySource,
    Result,
    add_protocols,
    c_get,
    c_move,
)


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connections are refused."""
    return free_port()


# --- the SCP under test -----------------------------------------------------------------


def original(h: Harness, uid: str) -> Dataset:
    return dcmread(BytesIO(h.source.files[uid]))


def assert_same(received: Dataset, expected: Dataset) -> None:
    """Element for element, values and VRs, nested sequences included."""
    assert list(received.keys()) == list(expected.keys())
    for elem in expected:
        got = received[elem.tag]
        assert (got.VR, got.value) == (elem.VR, elem.value), f"element {elem.tag} differs"


# --- peers ------------------------------------------------------------------------------


def only_charset() -> Dataset:
    """An identifier without SOP Instance UID (an empty one is not even sent by pynetdicom)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


class StoreSCP:
    """A pynetdicom storage SCP as C-MOVE destination."""

    def __init__(
        self,
        aet: str = "STORE_SCP",
        classes: list[str] = DPP_CLASSES,
        transfer_syntaxes: list[str] = TRANSFER_SYNTAXES,
        answer: int = dimse_status.SUCCESS,
        abort_after: int | None = None,
    ) -> None:
        self.received: list[tuple[Dataset, str, str | None]] = []
        self.callers: list[str] = []
        self.answer = answer
        self.abort_after = abort_after
        self.delay = 0.0  # seconds each C-STORE takes
        ae = AE(ae_title=aet)
        for sop_class in classes:
            ae.add_supported_context(sop_class, transfer_syntaxes)
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event: evt.Event) -> int:
        time.sleep(self.delay)
        ds = event.dataset
        ds.file_meta = event.file_meta
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            event.assoc.abort()
            return 0xA700
        originator = event.request.MoveOriginatorApplicationEntityTitle
        self.received.append((ds, str(event.context.transfer_syntax), originator))
        self.callers.append(event.assoc.requestor.ae_title)
        return self.answer

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def store_scp() -> Iterator[StoreSCP]:
    peer = StoreSCP()
    try:
        yield peer
    finally:
        peer.stop()


# --- pure parts -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("build", "code", "words"),
    [
        (lambda ds: None, dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "missing"),
        (lambda ds: setattr(ds, "SOPInstanceUID", ""), 0xA900, "empty"),
        (lambda ds: setattr(ds, "SOPInstanceUID", "1.02.3"), 0xA900, "ill-formed"),
        (lambda ds: setattr(ds, "SOPInstanceUID", ["1.2", "x.y"]), 0xA900, "ill-formed"),
        (lambda ds: setattr(ds, "SOPInstanceUID", "1." + "2" * 70), 0xA900, "ill-formed"),
        (
            lambda ds: (setattr(ds, "SOPInstanceUID", "1.2"), setattr(ds, "PatientID", "P")),
            0xA900,
            "(0010,0020)",
        ),
        (
            lambda ds: (
                setattr(ds, "SOPInstanceUID", "1.2"),
                setattr(ds, "QueryRetrieveLevel", "IMAGE"),
            ),
            0xA900,
            "Query/Retrieve Level",
        ),
    ],
)
def test_parse_identifier_rejects(build: Any, code: int, words: str) -> None:
    ds = Dataset()
    build(ds)
    with pytest.raises(InvalidIdentifier) as caught:
        parse_identifier(ds)
    assert caught.value.status == code
    assert words in caught.value.comment
    assert len(caught.value.comment) <= 64


def test_parse_identifier_accepts_a_list_and_drops_repeats() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # tolerated
    ds.SOPInstanceUID = ["1.2.3", "1.2.4", "1.2.3"]
    assert parse_identifier(ds) == ["1.2.3", "1.2.4"]
    assert parse_identifier(identifier_for("2.25.1")) == ["2.25.1"]


def test_tally_final_status() -> None:
    t = Tally(3)
    for uid in "abc":
        t.record(uid, "Success", None)
    assert t.final_status() == dimse_status.SUCCESS and t.remaining == 0
    t = Tally(2)
    t.record("a", "Success", None)
    t.record("b", "Failure", "not stored here")
    assert t.final_status() == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    assert t.failed_uids == ["b"]
    t = Tally(1)
    t.record("a", "Warning", "coerced")
    assert t.final_status() == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    t = Tally(2)
    t.record("a", "Failure", "x")
    t.record("b", "Failure", "x")
    assert t.final_status() == dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
    assert "2x x" in t.summary()


def test_conversion_loss_only_for_explicit_to_implicit_with_private_data() -> None:
    ds = make_protocol(3)
    assert conversion_loss(ds, ExplicitVRLittleEndian, ImplicitVRLittleEndian) is None
    block = ds.private_block(0x0011, "ACME PROTOCOLS", create=True)
    block.add_new(0x01, "DS", "1.5")
    assert "private" in conversion_loss(ds, ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert conversion_loss(ds, ImplicitVRLittleEndian, ExplicitVRLittleEndian) is None
    assert conversion_loss(ds, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian) is None


# --- C-GET ------------------------------------------------------------------------------


def test_c_get_returns_the_originals(harness: Harness) -> None:
    uids = add_protocols(harness, [make_protocol(1), make_protocol(2, "XA")])
    uids += add_protocols(harness, [make_protocol(4)], ImplicitVRLittleEndian)
    result = c_get(harness, identifier_for(uids))
    assert [r.status for r in result.responses] == [0xFF00, 0xFF00, 0x0000]
    assert [(r.remaining, r.completed) for r in result.pending] == [(2, 1), (1, 2)]
    final = result.final
    assert (final.completed, final.failed, final.warning, final.remaining) == (3, 0, 0, None)
    assert final.failed_uids is None
    assert [str(ds.SOPInstanceUID) for ds, _, _ in result.received] == uids
    for ds, ts, _ in result.received:
        stored = original(harness, str(ds.SOPInstanceUID))
        assert ts == stored.file_meta.TransferSyntaxUID  # sent as stored when offered
        assert_same(ds, stored)


def test_c_get_without_storage_contexts_fails_every_sub_operation(harness: Harness) -> None:
    uids = add_protocols(harness, [make_protocol(s) for s in range(3)])
    result = c_get(harness, identifier_for(uids), storage_ts=None)
    final = result.final
    assert final.status == dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
    assert (final.completed, final.failed, final.warning) == (0, 3, 0)
    assert final.failed_uids == uids
    assert "no accepted context" in final.comment
    assert not result.received


def test_c_get_converts_explicit_to_implicit_when_lossless(harness: Harness) -> None:
    plain = make_protocol(5)
    private = make_protocol(6)
    private.private_block(0x0011, "ACME PROTOCOLS", create=True).add_new(0x01, "DS", "1.5")
    uids = add_protocols(harness, [plain, private])
    result = c_get(harness, identifier_for(uids), storage_ts=[ImplicitVRLittleEndian])
    final = result.final
    assert final.status == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    assert (final.completed, final.failed) == (1, 1)
    assert final.failed_uids == [uids[1]]
    assert "private" in final.comment
    ((ds, ts, _),) = result.received
    assert ts == ImplicitVRLittleEndian
    assert_same(ds, original(harness, uids[0]))


def test_c_get_unknown_uids_are_failed_sub_operations(harness: Harness) -> None:
    known = add_protocols(harness, [make_protocol(7)])
    unknown = [generate_uid(), generate_uid()]
    result = c_get(harness, identifier_for([unknown[0], *known, unknown[1]]))
    final = result.final
    assert final.status == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    assert (final.completed, final.failed) == (1, 2)
    assert final.failed_uids == unknown
    assert "not stored here" in final.comment
    only_unknown = c_get(harness, identifier_for(unknown)).final
    assert only_unknown.status == dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
    assert only_unknown.failed == 2 and only_unknown.failed_uids == unknown


def test_c_get_unknown_uids_can_be_ignored(harness: Harness) -> None:
    gate = Gatekeeper(harness.registry, AccessPolicy())
    handler = GetHandler(harness.source, gate, RetrieveOptions(report_missing=False))
    harness.server.unbind(evt.EVT_C_GET, harness.server.get_handlers(evt.EVT_C_GET)[0])
    harness.server.bind(evt.EVT_C_GET, handler)
    known = add_protocols(harness, [make_protocol(8)])
    final = c_get(harness, identifier_for([generate_uid(), *known])).final
    assert (final.status, final.completed, final.failed) == (dimse_status.SUCCESS, 1, 0)
    final = c_get(harness, identifier_for(generate_uid())).final
    assert (final.status, final.completed, final.failed) == (dimse_status.SUCCESS, 0, 0)


def test_c_get_unreadable_instance_fails_alone(harness: Harness) -> None:
    uids = add_protocols(harness, [make_protocol(9), make_protocol(10)])
    harness.source.broken.add(uids[0])
    final = c_get(harness, identifier_for(uids)).final
    assert (final.status, final.completed, final.failed) == (0xB000, 1, 1)
    assert final.failed_uids == [uids[0]]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("value", [None, "1.2.03", ""])
def test_c_get_bad_identifier(harness: Harness, value: str | None) -> None:
    identifier = only_charset() if value is None else identifier_for(value)
    result = c_get(harness, identifier)
    (final,) = result.responses
    assert final.status == dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert final.comment and final.offending == 0x00080018
    assert final.completed is None and final.failed is None  # nothing was attempted


def test_undecodable_identifier(harness: Harness) -> None:
    ds = identifier_for("1.2.3")
    tag = Tag(0x00189082)  # Effective Echo Time, FD: 8 bytes per value
    ds._dict[tag] = RawDataElement(tag, "FD", 3, b"abc", 0, False, True)
    with pytest.raises(InvalidIdentifier) as caught:
        parse_identifier(ds)
    assert caught.value.status == dimse_status.UNABLE_TO_PROCESS
    # Over the network: 4 bytes sent as OB in implicit VR, read back as FD.
    ds = identifier_for("1.2.3")
    ds.add_new(tag, "OB", b"abcd")
    (final,) = c_get(harness, ds, query_ts=[ImplicitVRLittleEndian]).responses
    assert final.status == dimse_status.UNABLE_TO_PROCESS
    assert final.comment.startswith("cannot decode the identifier")


def test_concurrent_retrieves(harness: Harness, store_scp: StoreSCP) -> None:
    harness.set_modalities({"dest": ["STORE_SCP", "127.0.0.1", store_scp.port]})
    uids = add_protocols(harness, [make_protocol(s) for s in range(50, 62)])
    results: dict[str, Result] = {}

    def run(name: str, part: list[str]) -> None:
        if name.startswith("get"):
            results[name] = c_get(harness, identifier_for(part))
        else:
            results[name] = c_move(harness, identifier_for(part), "STORE_SCP")

    jobs = {"get1": uids[:6], "get2": uids[6:], "move1": uids[:6], "move2": uids[6:]}
    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert {name: r.final.status for name, r in results.items()} == dict.fromkeys(jobs, 0)
    for name, part in jobs.items():
        if name.startswith("get"):
            assert [str(ds.SOPInstanceUID) for ds, _, _ in results[name].received] == part
    assert sorted(str(ds.SOPInstanceUID) for ds, _, _ in store_scp.received) == sorted(uids)


def test_other_handlers_keep_pynetdicoms_behaviour(routed: None) -> None:
    """Routing reroutes only RetrieveHandler objects; a plain generator still works."""

    def plain(event: evt.Event) -> Iterator[Any]:
        yield 0  # no sub-operations: pynetdicom answers Success by itself

    ae = AE(ae_title=SCP_AET)
    ae.add_supported_context(sop.DPP_GET, TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, plain)]
    )
    try:
        h = Harness(MemorySource({}), ModalityRegistry(), port, server, {})
        (final,) = c_get(h, identifier_for("1.2.3"), storage_ts=None).responses
    finally:
        server.shutdown()
    assert (final.status, final.completed) == (dimse_status.SUCCESS, 0)


def test_c_get_extra_keys_and_query_level(harness: Harness) -> None:
    ds = identifier_for("1.2.3")
    ds.QueryRetrieveLevel = "IMAGE"
    (final,) = c_get(harness, ds).responses
    assert final.status == 0xA900 and "Query/Retrieve Level" in final.comment
    ds = identifier_for("1.2.3")
    ds.ProtocolName = "HEAD"
    (final,) = c_get(harness, ds).responses
    assert final.status == 0xA900 and "(0018,1030)" in final.comment


def test_c_get_refuses_unknown_callers(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    uids = add_protocols(harness, [make_protocol(11)])
    with caplog.at_level(logging.WARNING, logger="orthanc_dpp.retrieve"):
        (final,) = c_get(harness, identifier_for(uids), aet="STRANGER").responses
    # Generic on the wire, precise in the log.
    assert final.status == dimse_status.NOT_AUTHORIZED and final.comment == "Not authorised"
    assert "STRANGER" in caplog.text and "not in Orthanc's DicomModalities" in caplog.text
    harness.set_modalities(
        {"retriever": {"AET": SCU_AET, "Host": "127.0.0.1", "Port": 1, "AllowGet": False}}
    )
    with caplog.at_level(logging.WARNING, logger="orthanc_dpp.retrieve"):
        (final,) = c_get(harness, identifier_for(uids)).responses
    assert final.status == dimse_status.NOT_AUTHORIZED and final.comment == "Not authorised"
    assert "modality retriever does not allow Get" in caplog.text


# --- C-MOVE -----------------------------------------------------------------------------


def test_c_move_to_a_pynetdicom_storage_scp(
    harness: Harness, store_scp: StoreSCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodelay: list[int] = []
    real = move.set_tcp_nodelay

    def probe(event: evt.Event) -> None:
        real(event)
        if event.assoc.is_requestor and event.assoc.ae.ae_title == SCP_AET:
            sock = event.assoc.dul.socket.socket  # the C-MOVE sub-association
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(move, "set_tcp_nodelay", probe)
    # Case differs from the request: Orthanc compares AETs case-insensitively.
    harness.set_modalities({"dest": ["Store_Scp", "127.0.0.1", store_scp.port]})
    uids = add_protocols(harness, [make_protocol(20), make_protocol(21, "XA")])
    uids += add_protocols(harness, [make_protocol(22)], DeflatedExplicitVRLittleEndian)
    uids += add_protocols(harness, [make_protocol(23)], ExplicitVRBigEndian)
    result = c_move(harness, identifier_for(uids), "STORE_SCP")
    assert [r.status for r in result.responses] == [0xFF00] * 3 + [0x0000]
    assert (result.final.completed, result.final.failed) == (4, 0)
    assert nodelay == [1]
    assert [str(ds.SOPInstanceUID) for ds, _, _ in store_scp.received] == uids
    for ds, ts, originator in store_scp.received:
        stored = original(harness, str(ds.SOPInstanceUID))
        assert ts == stored.file_meta.TransferSyntaxUID
        assert originator == SCU_AET  # the C-MOVE requester (PS3.7 9.1.1.1.6)
        assert_same(ds, stored)


def test_c_move_unknown_destination(harness: Harness) -> None:
    uids = add_protocols(harness, [make_protocol(24)])
    (final,) = c_move(harness, identifier_for(uids), "NOWHERE").responses
    assert final.status == dimse_status.MOVE_DESTINATION_UNKNOWN
    assert "NOWHERE" in final.comment
    assert harness.source.loads == 0


def test_c_move_destination_added_at_run_time(harness: Harness, store_scp: StoreSCP) -> None:
    uids = add_protocols(harness, [make_protocol(25)])
    assert c_move(harness, identifier_for(uids), "LATE").final.status == 0xA801
    harness.set_modalities({"late": ["LATE", "127.0.0.1", store_scp.port]})
    assert c_move(harness, identifier_for(uids), "LATE").final.status == dimse_status.SUCCESS
    assert len(store_scp.received) == 1


def test_c_move_to_a_destination_that_is_down(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.set_modalities({"down": ["DOWN", "127.0.0.1", closed_port()]})
    uids = add_protocols(harness, [make_protocol(s) for s in (26, 27, 28)])
    missing = generate_uid()
    with caplog.at_level(logging.INFO, logger="orthanc_dpp.retrieve"):
        result = c_move(harness, identifier_for([*uids, missing]), "DOWN")
    (final,) = result.responses
    assert final.status == dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
    assert (final.completed, final.failed, final.warning) == (0, 4, 0)
    assert final.failed_uids == [*uids, missing]
    assert "DOWN" in final.comment and "cannot connect" in final.comment
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("down (DOWN@127.0.0.1" in m and "cannot connect" in m for m in errors)


def test_c_move_to_a_destination_refusing_dpp(harness: Harness) -> None:
    peer = StoreSCP("CT_ONLY", classes=[CTImageStorage])
    try:
        harness.set_modalities({"ct": ["CT_ONLY", "127.0.0.1", peer.port]})
        uids = add_protocols(harness, [make_protocol(29), make_protocol(30)])
        final = c_move(harness, identifier_for(uids), "CT_ONLY").final
    finally:
        peer.stop()
    assert (final.status, final.failed, final.completed) == (0xA702, 2, 0)
    assert "contexts accepted" in final.comment


def test_c_move_destination_failing_c_store(harness: Harness) -> None:
    peer = StoreSCP("FULL", answer=0xA700)
    try:
        harness.set_modalities({"full": ["FULL", "127.0.0.1", peer.port]})
        uids = add_protocols(harness, [make_protocol(31), make_protocol(32)])
        final = c_move(harness, identifier_for(uids), "FULL").final
    finally:
        peer.stop()
    assert (final.status, final.failed, final.completed) == (0xA702, 2, 0)
    assert final.failed_uids == uids and "0xA700" in final.comment


def test_c_move_destination_announcing_a_huge_pdu_is_aborted(harness: Harness) -> None:
    with StallingPeer(1 << 30) as peer:
        harness.set_modalities({"huge": ["HUGE", "127.0.0.1", peer.port]})
        uids = add_protocols(harness, [make_protocol(33)])
        final = c_move(harness, identifier_for(uids), "HUGE").final
    assert (final.status, final.failed, final.completed) == (0xA702, 1, 0)
    assert "association aborted: PDU of type 0x02" in final.comment  # (MaximumPduSize)


def test_c_move_destination_aborting_midway(harness: Harness) -> None:
    peer = StoreSCP("FLAKY", abort_after=2)
    try:
        harness.set_modalities({"flaky": ["FLAKY", "127.0.0.1", peer.port]})
        uids = add_protocols(harness, [make_protocol(s) for s in range(33, 38)])
        final = c_move(harness, identifier_for(uids), "FLAKY").final
    finally:
        peer.stop()
    assert final.status == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    assert (final.completed, final.failed, final.warning) == (2, 3, 0)
    assert final.failed_uids == uids[2:]
    assert len(peer.received) == 2


def test_c_move_uses_local_aet_and_refuses_tls_without_setup(
    harness: Harness, store_scp: StoreSCP
) -> None:
    harness.set_modalities(
        {
            "dest": {
                "AET": "STORE_SCP",
                "Host": "127.0.0.1",
                "Port": store_scp.port,
                "LocalAet": "ORTHANC_LOCAL",
                "Timeout": 5,
            },
            "tls": {"AET": "TLS", "Host": "127.0.0.1", "Port": 1, "UseDicomTls": True},
        }
    )
    uids = add_protocols(harness, [make_protocol(39)])
    assert c_move(harness, identifier_for(uids), "STORE_SCP").final.status == dimse_status.SUCCESS
    assert store_scp.callers == ["ORTHANC_LOCAL"]  # as Orthanc calls that modality
    final = c_move(harness, identifier_for(uids), "TLS").final
    assert (
        final.status == dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
        and "UseDicomTls" in final.comment
    )


def test_c_move_requires_allow_move_and_a_good_identifier(
    harness: Harness, store_scp: StoreSCP
) -> None:
    harness.set_modalities(
        {
            "dest": ["STORE_SCP", "127.0.0.1", store_scp.port],
            "retriever": {"AET": SCU_AET, "Host": "127.0.0.1", "Port": 1, "AllowMove": False},
        }
    )
    (final,) = c_move(harness, identifier_for("1.2.3"), "STORE_SCP").responses
    assert final.status == dimse_status.NOT_AUTHORIZED
    harness.set_modalities({"dest": ["STORE_SCP", "127.0.0.1", store_scp.port]})
    ds = identifier_for("1.2.3")
    ds.QueryRetrieveLevel = "IMAGE"
    (final,) = c_move(harness, ds, "STORE_SCP").responses
    assert final.status == dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert not store_scp.received


# --- cancel and memory ------------------------------------------------------------------


@pytest.fixture(scope="module")
def library_500() -> dict[str, bytes]:
    return {str(ds.SOPInstanceUID): to_bytes(ds) for ds in make_library(500, seed=1000)}


@pytest.mark.parametrize("model", ["get", "move"])
def test_cancel_in_the_middle_of_500(
    harness: Harness, store_scp: StoreSCP, library_500: dict[str, bytes], model: str
) -> None:
    harness.source.files.update(library_500)
    harness.set_modalities({"dest": ["STORE_SCP", "127.0.0.1", store_scp.port]})
    uids = list(library_500)
    started = time.monotonic()
    if model == "get":
        result = c_get(harness, identifier_for(uids), cancel_after=10)
        delivered = len(result.received)
    else:
        result = c_move(harness, identifier_for(uids), "STORE_SCP", cancel_after=10)
        delivered = len(store_scp.received)
    final = result.final
    assert final.status == dimse_status.CANCEL
    assert 10 <= final.completed < 100  # stopped promptly, not after the lot
    assert final.failed == 0 and final.warning == 0
    assert final.remaining == 500 - final.completed
    assert delivered == final.completed
    # Loading stops with the cancel: only what was prepared ahead is extra.
    assert final.completed <= harness.source.loads <= final.completed + 2
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("model", ["get", "move"])
def test_pending_responses_are_spaced_by_the_interval(
    harness: Harness, store_scp: StoreSCP, model: str
) -> None:
    harness.set_modalities({"dest": ["STORE_SCP", "127.0.0.1", store_scp.port]})
    uids = add_protocols(harness, list(make_library(30, seed=3030)))
    for handler in harness.handlers.values():
        handler.options = RetrieveOptions(pending_interval=3600)
    if model == "get":
        result = c_get(harness, identifier_for(uids))
    else:
        result = c_move(harness, identifier_for(uids), "STORE_SCP")
    assert result.pending == []  # optional (PS3.4 C.4.2.3.1): none within the hour
    assert (result.final.status, result.final.completed) == (dimse_status.SUCCESS, 30)
    for handler in harness.handlers.values():
        handler.options = RetrieveOptions(pending_interval=0.05)
    store_scp.delay = 0.02
    result = c_move(harness, identifier_for(uids), "STORE_SCP")
    # 30 sub-operations of >= 20 ms with one pending at most every 50 ms.
    assert 3 <= len(result.pending) <= 15
    completed = [r.completed for r in result.pending]
    assert completed == sorted(completed) and all(
        r.remaining + r.completed == 30 for r in result.pending
    )


def test_500_instance_move_holds_one_dataset_at_a_time(
    harness: Harness, store_scp: StoreSCP, library_500: dict[str, bytes]
) -> None:
    harness.source.files.update(library_500)
    harness.set_modalities({"dest": ["STORE_SCP", "127.0.0.1", store_scp.port]})
    uids = list(library_500)
    result = c_move(harness, identifier_for(uids), "STORE_SCP")
    assert result.final.status == dimse_status.SUCCESS and result.final.completed == 500
    assert len(result.pending) == 499
    assert len(store_scp.received) == 500
    assert harness.source.max_alive <= 2


# --- DCMTK storescp -----------------------------------------------------------------------

needs_storescp = pytest.mark.skipif(
    shutil.which("storescp") is None, reason="DCMTK storescp not installed"
)


@needs_storescp
def test_c_move_to_dcmtk_storescp(harness: Harness, tmp_path: Path) -> None:
    uids = add_protocols(harness, [make_protocol(40), make_protocol(41, "XA")])
    uids += add_protocols(harness, [make_protocol(42)], ImplicitVRLittleEndian)
    with storescp(tmp_path, profile=True) as (port, out):
        harness.set_modalities({"dcmtk": ["DCMTK", "127.0.0.1", port]})
        final = c_move(harness, identifier_for(uids), "DCMTK").final
        assert (final.status, final.completed) == (dimse_status.SUCCESS, 3)
    written = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, sorted(out.iterdir()))}
    assert sorted(written) == sorted(uids)
    for uid, ds in written.items():
        stored = original(harness, uid)
        assert ds.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
        assert_same(ds, stored)


@needs_storescp
def test_c_move_to_dcmtk_storescp_without_profile(harness: Harness, tmp_path: Path) -> None:
    """Known but refusing: failed sub-operations, not pynetdicom's 0xA801."""
    uids = add_protocols(harness, [make_protocol(43)])
    with storescp(tmp_path, profile=False) as (port, out):
        harness.set_modalities({"dcmtk": ["DCMTK", "127.0.0.1", port]})
        final = c_move(harness, identifier_for(uids), "DCMTK").final
    assert (final.status, final.failed, final.failed_uids) == (0xA702, 1, uids)
    assert "contexts accepted" in final.comment
    assert not any(out.iterdir())
