"""C-FIND, C-GET and C-MOVE on the DPP information model, in the real Orthanc."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (
    DefinedProcedureProtocolInformationModelFind as DPP_FIND,
)
from pynetdicom.sop_class import (
    DefinedProcedureProtocolInformationModelGet as DPP_GET,
)
from pynetdicom.sop_class import (
    DefinedProcedureProtocolInformationModelMove as DPP_MOVE,
)

from dpp_tools.samples import make_library, make_protocol
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests.orthanc_server import HttpError, OrthancServer, free_port
from tests.peers import (
    STORE_AET,
    associate,
    c_find,
    c_get,
    collecting_storescp,
    find_identifier,
    qr_modalities,
    store_protocols,
    storescp,
)
from tests.waiting import eventually


@pytest.fixture(scope="module")
def library() -> list[Dataset]:
    return list(make_library(40, seed=4242, kinds=("CT", "XA")))


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory, library: list[Dataset]) -> Iterator:
    """Orthanc with the plugin, the library stored, and a move destination declared."""
    folder = tmp_path_factory.mktemp("qr")
    store_port = free_port()
    orthanc = OrthancServer(
        folder,
        config={"DicomModalities": qr_modalities(store_port)},
    )
    orthanc.store_port = store_port  # type: ignore[attr-defined]
    with orthanc:
        store_protocols(orthanc, library)
        yield orthanc


def as_received(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_c_find_wildcard_returns_exactly_the_requested_keys(qr, library) -> None:
    target = library[3]
    pattern = "*" + str(target.ProtocolName)[2:8] + "*"
    answers = c_find(qr, find_identifier(ProtocolName=pattern))
    *pending, (final, _) = answers
    assert final == 0x0000
    expected = {
        str(ds.SOPInstanceUID)
        for ds in library
        if str(target.ProtocolName)[2:8] in str(ds.ProtocolName)
    }
    assert {str(ds.SOPInstanceUID) for _, ds in pending} == expected
    for code, ds in pending:
        assert code == 0xFF00
        assert set(ds.dir()) <= {"SOPInstanceUID", "ProtocolName", "SpecificCharacterSet"}


def test_c_find_code_sequence_match(qr, library) -> None:
    code = next(
        c for ds in library for c in ds.PotentialScheduledProtocolCodeSequence if "CodeValue" in c
    )
    item = Dataset()
    item.CodeValue = code.CodeValue
    item.CodingSchemeDesignator = code.CodingSchemeDesignator
    item.CodeMeaning = ""
    identifier = find_identifier(PotentialScheduledProtocolCodeSequence=Sequence([item]))
    *pending, (final, _) = c_find(qr, identifier)
    assert final == 0x0000
    expected = {
        str(ds.SOPInstanceUID)
        for ds in library
        if any(
            c.get("CodeValue") == code.CodeValue
            and c.CodingSchemeDesignator == code.CodingSchemeDesignator
            for c in ds.PotentialScheduledProtocolCodeSequence
        )
    }
    assert {str(ds.SOPInstanceUID) for _, ds in pending} == expected
    returned = pending[0][1].PotentialScheduledProtocolCodeSequence
    assert any(c.CodeMeaning == code.CodeMeaning for c in returned)


def test_unknown_caller_is_refused_with_the_reason_in_the_log(qr) -> None:
    assoc = associate(qr, [DPP_FIND], DEFAULT_TRANSFER_SYNTAXES, ae_title="STRANGER")
    ((status, _),) = list(assoc.send_c_find(find_identifier(), DPP_FIND))
    assoc.release()
    assert status.Status == 0xC000
    assert status.ErrorComment == "Not authorised"  # the reason is in the log only
    assert qr.wait_for_log("C-FIND from STRANGER@127.0.0.1")
    assert "AET STRANGER is not in Orthanc's DicomModalities" in qr.log()


def test_c_find_bad_identifier_answers_with_a_comment(qr) -> None:
    identifier = find_identifier()
    identifier.QueryRetrieveLevel = "IMAGE"
    ((code, _),) = c_find(qr, identifier)
    assert code == 0xA900


def test_store_then_find_then_delete_then_find(qr) -> None:
    ds = make_protocol(777_001, "CT")
    store_protocols(qr, [ds])
    by_uid = find_identifier(SOPInstanceUID=ds.SOPInstanceUID)
    assert [code for code, _ in c_find(qr, by_uid)] == [0xFF00, 0x0000]
    qr.delete(f"/dpp/protocols/{ds.SOPInstanceUID}")
    assert [code for code, _ in c_find(qr, by_uid)] == [0x0000]


def test_a_repeated_query_is_answered_from_the_cache_and_follows_changes(qr) -> None:
    ds = make_protocol(777_003, "CT")
    ds.ProtocolName = "Cache check before"
    store_protocols(qr, [ds])
    everything = find_identifier(ProtocolName="Cache check*")

    def names() -> list[str]:
        *pending, (final, _) = c_find(qr, everything)
        assert final == 0x0000
        return [str(answer.ProtocolName) for _, answer in pending]

    assert names() == ["Cache check before"]
    hits = qr.get_json("/dpp/status")["FindResponseCache"]["Hits"]
    assert names() == ["Cache check before"]
    cache = qr.get_json("/dpp/status")["FindResponseCache"]
    assert cache["Hits"] == hits + 1
    assert 0 < cache["Bytes"] <= cache["MaximumBytes"]
    # A new version (deleted, then stored changed) is answered as it is now.
    qr.delete(f"/dpp/protocols/{ds.SOPInstanceUID}")
    assert names() == []
    ds.ProtocolName = "Cache check after"
    store_protocols(qr, [ds])
    assert names() == ["Cache check after"]


def test_delete_through_orthanc_itself_reaches_c_find(qr) -> None:
    ds = make_protocol(777_002, "XA")
    store_protocols(qr, [ds])
    orthanc_id = qr.get_json(f"/dpp/protocols/{ds.SOPInstanceUID}")["OrthancID"]
    qr.delete(f"/instances/{orthanc_id}")  # Orthanc's own route: DELETED callback
    by_uid = find_identifier(SOPInstanceUID=ds.SOPInstanceUID)

    def codes() -> list[int]:
        return [code for code, _ in c_find(qr, by_uid)]

    # Orthanc signals the deletion to the plugin on a thread of its own.
    assert eventually(lambda: codes() == [0x0000]), codes()


def test_concurrent_c_find_associations(qr, library) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def query() -> None:
        try:
            answers = c_find(qr, find_identifier())
            results.append(sum(1 for code, _ in answers if code == 0xFF00))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 4 and len(set(results)) == 1 and results[0] >= len(library)


# -- C-GET ---------------------------------------------------------------------------


def test_c_get_returns_the_originals(qr, library) -> None:
    wanted = library[:5]
    final, received = c_get(qr, [str(ds.SOPInstanceUID) for ds in wanted])
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 5
    by_uid = {str(ds.SOPInstanceUID): ds for ds in received}
    for ds in wanted:
        assert by_uid[str(ds.SOPInstanceUID)] == as_received(ds)
        assert "PatientID" not in by_uid[str(ds.SOPInstanceUID)]


def test_c_get_without_storage_contexts_fails_cleanly(qr, library) -> None:
    final, received = c_get(qr, [str(library[0].SOPInstanceUID)], storage=False)
    assert received == []
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1
    assert final.FailedSOPInstanceUIDList == str(library[0].SOPInstanceUID)


def test_c_get_unknown_uid_is_a_failed_sub_operation(qr, library) -> None:
    unknown = "1.2.826.0.1.3680043.8.498.999999999"
    final, received = c_get(qr, [str(library[1].SOPInstanceUID), unknown])
    assert len(received) == 1
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert final.FailedSOPInstanceUIDList == unknown


def test_concurrent_c_gets(qr, library) -> None:
    outcomes: list[tuple[int, int]] = []

    def fetch(part: list[Dataset]) -> None:
        final, received = c_get(qr, [str(ds.SOPInstanceUID) for ds in part])
        outcomes.append((int(final.Status), len(received)))

    threads = [threading.Thread(target=fetch, args=(library[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(outcomes) == sorted((0x0000, len(library[i::3])) for i in range(3))


def test_cancel_in_a_500_instance_find_and_retrieve(make_server) -> None:
    orthanc = make_server(
        dpp={"PendingResponseInterval": 0},  # a pending response after every sub-operation
        config={"DicomModalities": {"getter": ["GETTER", "127.0.0.1", 104]}},
    )
    orthanc.start()
    many = list(make_library(500, seed=90_000))
    store_protocols(orthanc, many, [ExplicitVRLittleEndian])
    # C-FIND: cancel after the first pending response. The SCP may finish the
    # 500 responses before the C-CANCEL arrives (Success is then right), so
    # each attempt must be consistent and one of ten must be cancelled (on a
    # loaded machine the requester may be the slow side several times).
    outcomes = []
    for attempt in range(10):
        find = associate(orthanc, [DPP_FIND], ae_title="GETTER")
        responses = find.send_c_find(find_identifier(), DPP_FIND, msg_id=7 + attempt)
        status, _ = next(responses)
        assert status.Status == 0xFF00
        context_id = find._get_valid_context(DPP_FIND, "", "scu").context_id
        find.send_c_cancel(7 + attempt, context_id)
        codes = [0xFF00] + [int(s.Status) for s, _ in responses if s is not None]
        find.release()
        pending = codes.count(0xFF00)
        assert (codes[-1], pending == 500) in ((0xFE00, False), (0x0000, True)), codes[-3:]
        outcomes.append(codes[-1])
        if codes[-1] == 0xFE00:
            break
    assert 0xFE00 in outcomes
    # C-GET: cancel once 20 sub-operations are done.
    sent_cancel = []

    def cancel_after_some(assoc, status: Dataset) -> None:
        if not sent_cancel and status.NumberOfCompletedSuboperations >= 20:
            context_id = assoc._get_valid_context(DPP_GET, "", "scu").context_id
            assoc.send_c_cancel(9, context_id)
            sent_cancel.append(True)

    final, received = c_get(
        orthanc, [str(ds.SOPInstanceUID) for ds in many], on_pending=cancel_after_some
    )
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert final.NumberOfCompletedSuboperations == len(received) < 500


# -- C-MOVE --------------------------------------------------------------------------


def c_move(orthanc: OrthancServer, uids: list[str], destination: str) -> Dataset:
    assoc = associate(orthanc, [DPP_MOVE], TRANSFER_SYNTAXES)
    identifier = Dataset()
    identifier.SOPInstanceUID = uids if len(uids) > 1 else uids[0]
    final = None
    for status, answer in assoc.send_c_move(identifier, destination, DPP_MOVE):
        if status is not None:
            final = status
            if answer is not None:
                final.update(answer)
    assoc.release()
    assert final is not None
    return final


def test_c_move_to_dcmtk_storescp(qr, library, tmp_path: Path) -> None:
    wanted = library[5:9]
    with storescp(tmp_path, profile=True, port=qr.store_port, aet=STORE_AET) as (_, out):
        final = c_move(qr, [str(ds.SOPInstanceUID) for ds in wanted], STORE_AET)
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 4
    written = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, out.iterdir())}
    for ds in wanted:
        assert written[str(ds.SOPInstanceUID)] == as_received(ds)


def test_c_move_to_a_destination_added_at_run_time(qr, library) -> None:
    with collecting_storescp("LATE_SCP") as (port, received):
        try:
            qr.request(
                "PUT",
                "/modalities/late",
                f'{{"AET": "LATE_SCP", "Host": "127.0.0.1", "Port": {port}}}'.encode(),
            )
            uid = str(library[10].SOPInstanceUID)
            finals: list[Dataset] = []

            def known() -> bool:
                finals.append(c_move(qr, [uid], "LATE_SCP"))
                return (
                    finals[-1].Status != 0xA801
                )  # the modality list is re-read on a worker thread

            eventually(known, step=0.2)
            final = finals[-1]
            assert final.Status == 0x0000
            assert [str(ds.SOPInstanceUID) for ds in received] == [uid]
        finally:
            with contextlib.suppress(HttpError):
                qr.delete("/modalities/late")


def test_c_move_unknown_destination_is_a801(qr, library) -> None:
    final = c_move(qr, [str(library[0].SOPInstanceUID)], "NOBODY")
    assert final.Status == 0xA801
    assert "NOBODY" in final.ErrorComment


def test_c_move_to_a_destination_that_is_down(qr, library) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in library[:3]]
    final = c_move(qr, uids, STORE_AET)  # declared, but nothing listens
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 3
    failed = final.FailedSOPInstanceUIDList
    assert set([failed] if isinstance(failed, str) else failed) == set(uids)
    assert qr.wait_for_log(
        f"C-MOVE from TEST_SCU: cannot send to store ({STORE_AET}@127.0.0.1:{qr.store_port}): "
        "cannot connect"
    )


def test_a_c_move_longer_than_the_network_timeout_is_not_aborted(make_server) -> None:
    """NetworkTimeout is for a silent peer: the listener sending for longer must not trip it."""
    slow_port = free_port()
    orthanc = make_server(
        dpp={"NetworkTimeout": 1},
        config={
            "DicomModalities": {
                "scu": ["TEST_SCU", "127.0.0.1", 104],
                "slow": ["SLOW_SCP", "127.0.0.1", slow_port],
            }
        },
    )
    orthanc.start()
    protocols = list(make_library(5, seed=515))
    store_protocols(orthanc, protocols)

    def slow_store(event: evt.Event) -> int:
        time.sleep(0.5)  # 5 sub-operations: 2.5 s without a word from the C-MOVE requester
        return 0x0000

    ae = AE(ae_title="SLOW_SCP")
    for sop_class in sorted(DPP_STORAGE_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", slow_port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_store)]
    )
    try:
        mover = associate(orthanc, [DPP_MOVE], TRANSFER_SYNTAXES)
        identifier = Dataset()
        identifier.SOPInstanceUID = [str(ds.SOPInstanceUID) for ds in protocols]
        statuses = [
            int(status.Status)
            for status, _ in mover.send_c_move(identifier, "SLOW_SCP", DPP_MOVE)
            if status is not None
        ]
        assert statuses[-1] == 0x0000 and set(statuses[:-1]) <= {0xFF00}
        time.sleep(0.5)  # an abort, if any, follows the final response at once
        assert mover.is_established and not mover.is_aborted
        mover.release()
        assert mover.is_released
    finally:
        server.shutdown()
    assert "Network timeout" not in orthanc.log()
