"""The DPP SCU (orthanc_dpp.scu_*) against a bare pynetdicom DPP archive on loopback."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dpp_tools.samples import make_protocol
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import Calling
from orthanc_dpp.dicom.scu import answers as scu_answers
from orthanc_dpp.dicom.scu import association as scu_association
from orthanc_dpp.dicom.scu import query as scu_query
from orthanc_dpp.dicom.scu import retrieve
from orthanc_dpp.dicom.scu.answers import RemoteError
from orthanc_dpp.dicom.scu.identifiers import BadKey, build_identifier
from orthanc_dpp.dicom.scu.retrieve import Control
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES, QUERY_TRANSFER_SYNTAXES, TRANSFER_SYNTAXES
from orthanc_dpp.storage.decoding import DatasetLimits
from orthanc_dpp.storage.library import StoreError
from tests.bare_archive import ENDLESS_FIND_BOUND, BareArchive, RawStore, StallingPeer
from tests.orthanc_server import free_port
from tests.peers import collecting_storescp
from tests.waiting import eventually

CALLER = Calling("DPP_SCU_UNIT", acse_timeout=5, dimse_timeout=5, network_timeout=5)


def protocols(count: int) -> list[Dataset]:
    return [make_protocol(seed, "CT" if seed % 2 else "XA", charset="") for seed in range(count)]


def modality_of(archive: BareArchive, **options: object) -> Modality:
    return Modality("bare", archive.ae_title, "127.0.0.1", archive.port, **options)  # type: ignore[arg-type]


@pytest.fixture
def archive() -> Iterator[BareArchive]:
    with BareArchive(protocols(4)) as bare:
        yield bare


# -- identifiers from JSON ---------------------------------------------------------------


def test_keywords_tags_and_dicom_json_give_the_same_identifier() -> None:
    by_keyword = build_identifier({"ProtocolName": "*Head*", "SOPInstanceUID": ""})
    by_tag = build_identifier({"00181030": "*Head*", "0008,0018": ""})
    by_json = build_identifier(
        {"00181030": {"vr": "LO", "Value": ["*Head*"]}, "00080018": {"vr": "UI"}}
    )
    for ds in (by_keyword, by_tag, by_json):
        assert ds.ProtocolName == "*Head*"
        assert ds["SOPInstanceUID"].is_empty
    assert by_keyword == by_tag == by_json


def test_values_take_the_vr_of_the_dictionary() -> None:
    ds = build_identifier(
        {
            "ModalitiesInStudy": ["CT", "MR"],
            "NumberOfFrames": 3,
            "RecommendedDisplayFrameRate": 25,
            "PotentialScheduledProtocolCodeSequence": {"CodeValue": "X1", "CodeMeaning": ""},
            "AnatomicRegionSequence": [],
        }
    )
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds.NumberOfFrames == 3
    assert ds.RecommendedDisplayFrameRate == 25
    (item,) = ds.PotentialScheduledProtocolCodeSequence
    assert item.CodeValue == "X1" and item["CodeMeaning"].is_empty
    assert ds["AnatomicRegionSequence"].VR == "SQ"
    assert len(ds.AnatomicRegionSequence) == 0


def test_non_ascii_values_get_utf8_unless_a_character_set_is_given() -> None:
    assert build_identifier({"ProtocolName": "Schädel*"}).SpecificCharacterSet == "ISO_IR 192"
    assert "SpecificCharacterSet" not in build_identifier({"ProtocolName": "Head*"})
    given = build_identifier({"SpecificCharacterSet": "ISO_IR 100", "ProtocolName": "Schädel*"})
    assert given.SpecificCharacterSet == "ISO_IR 100"


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        ({"ProtocolNam": "x"}, "ProtocolNam", "not a DICOM keyword or tag"),
        ({"NumberOfFrames": "three"}, "NumberOfFrames", "not a whole number"),
        ({"Rows": "512"}, "Rows", "VR US takes whole numbers"),
        ({"ProtocolName": {"a": 1}}, "ProtocolName", "not an object"),
        ({"ProtocolName": True}, "ProtocolName", "true or false"),
        ({"SOPInstanceUID": "1.2.abc"}, "SOPInstanceUID", "not a UID"),
        ({"00091010": "x"}, "00091010", "DICOM JSON"),
        ({"00181030": {"vr": "LO", "Value": "not a list"}}, "00181030", "DICOM JSON"),
        ({"00000000": None}, "00000000", "a command element (group 0000): not a query key"),
        ({"ErrorComment": "x"}, "ErrorComment", "a command element"),
        ({"0002,0010": "1.2"}, "0002,0010", "a file meta element (group 0002)"),
        ({"FFFEE000": None}, "FFFEE000", "an item or delimitation tag"),
        ({"00030010": {"vr": "LO", "Value": ["x"]}}, "00030010", "PS3.5 7.1 reserves"),
        (
            {"ModelSpecificationSequence": [{"00000902": "x"}]},
            "ModelSpecificationSequence.00000902",
            "a command element",
        ),
        (
            {"PotentialScheduledProtocolCodeSequence": "x"},
            "PotentialScheduledProtocolCodeSequence",
            "list of objects",
        ),
        (
            {"PotentialScheduledProtocolCodeSequence": [{"CodeValu": "x"}]},
            "PotentialScheduledProtocolCodeSequence.CodeValu",
            "not a DICOM keyword",
        ),
    ],
)
def test_bad_keys_are_named(keys: dict, key: str, reason: str) -> None:
    with pytest.raises(BadKey) as caught:
        build_identifier(keys)
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_status_names() -> None:
    assert scu_answers.status_name(0xC000, "find") == "Failure: Unable to Process"
    assert scu_answers.status_name(0xA801, "move") == "Failure: Move destination unknown"
    assert scu_answers.status_name(0x0124, "") == "Failure: Refused: Not Authorised"
    assert scu_answers.status_name(0xC123, "get") == "Failure: Unable to Process"  # Cxxx


# -- C-FIND --------------------------------------------------------------------------------


def test_find_answers_dicom_json_from_the_remote(archive: BareArchive) -> None:
    identifier = build_identifier({"ProtocolName": "", "SOPInstanceUID": ""})
    result = scu_query.find(CALLER, modality_of(archive), identifier)
    assert result.complete
    held = {uid: str(ds.ProtocolName) for uid, ds in archive.held.items()}
    got = {a["00080018"]["Value"][0]: a["00181030"]["Value"][0] for a in result.answers}
    assert got == held
    assert archive.callers == ["DPP_SCU_UNIT"]
    assert archive.identifiers[0] == identifier


def test_find_uses_the_modalitys_local_aet(archive: BareArchive) -> None:
    scu_query.find(CALLER, modality_of(archive, local_aet="SITE_A"), build_identifier({}))
    assert archive.callers == ["SITE_A"]


def test_find_stops_at_the_limit_with_a_cancel(archive: BareArchive) -> None:
    archive.await_cancel_after = 2
    result = scu_query.find(CALLER, modality_of(archive), build_identifier({}), limit=2)
    assert len(result.answers) == 2
    assert result.complete is False
    # Without the C-CANCEL the archive would make all 4 answers after a 10 s wait.
    assert archive.find_answers == 2


def test_a_refusing_remote_is_reported_with_its_status_and_comment(archive: BareArchive) -> None:
    archive.find_failure = (0xC000, "Protocol index offline")
    with pytest.raises(RemoteError) as caught:
        scu_query.find(CALLER, modality_of(archive), build_identifier({}))
    error = caught.value
    assert error.code == 0xC000
    assert error.comment == "Protocol index offline"
    assert "0xC000 (Failure: Unable to Process): Protocol index offline" in error.reason
    assert error.as_json()["DimseStatusName"] == "Failure: Unable to Process"


def test_an_unreachable_remote_is_reported() -> None:
    nowhere = Modality("gone", "GONE", "127.0.0.1", free_port())
    with pytest.raises(RemoteError, match="cannot connect"):
        scu_query.find(CALLER, nowhere, build_identifier({}))


def test_a_rejecting_remote_is_reported(archive: BareArchive) -> None:
    archive.ae.require_calling_aet = ["SOMEONE_ELSE"]
    with pytest.raises(RemoteError, match="association rejected"):
        scu_query.find(CALLER, modality_of(archive), build_identifier({}))


def test_tls_modality_without_tls_setup_is_refused_before_connecting(
    archive: BareArchive,
) -> None:
    with pytest.raises(RemoteError, match="UseDicomTls is set"):
        scu_query.find(CALLER, modality_of(archive, use_dicom_tls=True), build_identifier({}))
    assert archive.identifiers == []


# -- C-GET ---------------------------------------------------------------------------------


def test_get_hands_every_protocol_to_the_store(archive: BareArchive) -> None:
    stored: dict[str, Dataset] = {}

    def store(ds: Dataset, sop_class: str) -> None:
        assert sop_class == ds.SOPClassUID and sop_class in DPP_STORAGE_CLASSES
        stored[str(ds.SOPInstanceUID)] = ds

    uids = list(archive.held)[:3]
    result = retrieve.get(CALLER, modality_of(archive), uids, store)
    assert result.code == dimse_status.SUCCESS
    assert (result.progress.completed, result.progress.failed) == (3, 0)
    assert sorted(stored) == sorted(uids)
    for uid in uids:
        assert stored[uid] == archive.held[uid]  # every element as the remote sent it


def test_a_protocol_not_stored_here_is_a_failed_sub_operation(archive: BareArchive) -> None:
    uids = list(archive.held)
    refused_uid = uids[1]

    def store(ds: Dataset, sop_class: str) -> None:
        if ds.SOPInstanceUID == refused_uid:
            raise StoreError(dimse_status.DUPLICATE_SOP_INSTANCE, 409, "stored with other content")

    result = retrieve.get(CALLER, modality_of(archive), uids, store)
    assert result.code == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES
    assert (result.progress.completed, result.progress.failed) == (len(uids) - 1, 1)
    assert result.failed_uids == [refused_uid]
    assert result.refused == {refused_uid: "stored with other content"}
    assert result.as_json()["DimseStatusName"].startswith("Warning")


def test_get_can_be_cancelled_between_sub_operations() -> None:
    gate = threading.Event()
    with BareArchive(protocols(4), pending_gate=gate) as archive:
        control = Control()
        results: list[retrieve.RetrieveResult] = []

        def store(ds: Dataset, sop_class: str) -> None:
            control.cancel()  # after the first protocol
            gate.set()

        worker = threading.Thread(
            target=lambda: results.append(
                retrieve.get(CALLER, modality_of(archive), list(archive.held), store, control)
            )
        )
        worker.start()
        worker.join(30)
    assert results and results[0].code == dimse_status.CANCEL
    assert results[0].progress.completed < 4


# -- C-MOVE --------------------------------------------------------------------------------


@pytest.fixture
def destination() -> Iterator[tuple[int, list[Dataset]]]:
    with collecting_storescp("DEST") as (port, received):
        yield port, received


def test_move_sends_the_protocols_to_the_destination(destination) -> None:
    port, received = destination
    with BareArchive(protocols(3), destinations={"DEST": ("127.0.0.1", port)}) as archive:
        uids = list(archive.held)
        result = retrieve.move(CALLER, modality_of(archive), uids, "DEST")
    assert result.code == dimse_status.SUCCESS and result.progress.completed == 3
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(uids)


def test_unknown_move_destination_is_reported_by_name(archive: BareArchive) -> None:
    with pytest.raises(RemoteError) as caught:
        retrieve.move(CALLER, modality_of(archive), list(archive.held), "NOBODY")
    assert caught.value.code == dimse_status.MOVE_DESTINATION_UNKNOWN
    assert "Move destination unknown" in caught.value.reason


def test_control_abort_ends_a_retrieve_at_once() -> None:
    gate = threading.Event()  # never set: the archive waits before the 2nd protocol
    with BareArchive(protocols(3), pending_gate=gate) as archive:
        control = Control()
        errors: list[Exception] = []

        def run() -> None:
            try:
                retrieve.get(
                    CALLER, modality_of(archive), list(archive.held), lambda *a: None, control
                )
            except RemoteError as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        assert eventually(lambda: control.progress.completed == 1, 10)
        control.abort()
        worker.join(10)
        gate.set()
    assert not worker.is_alive()
    assert errors and "aborted" in str(errors[0])


# -- CONFORMANCE.md, section 2.4 -------------------------------------------------------------


def test_conformance_lists_the_scus_sop_classes_and_transfer_syntaxes() -> None:
    from orthanc_dpp.dicom.scp import listener
    from orthanc_dpp.model.sop import DPP_FIND, DPP_GET, DPP_MOVE, STORAGE_CLASSES
    from tests.doc_examples import REPO, doc_section, tables

    text = doc_section(REPO / "CONFORMANCE.md", "2.4 AE specification: the DPP SCU")
    (rows,) = tables(text)
    # The push row names the classes it stores in short form: "1.2.3.200.1, .200.7, .200.3".
    (push,) = [row for row in rows if row[3] == "`store` (push)"]
    first, *others = push[1].split(", ")
    base = first.rsplit(".", 2)[0]
    assert push[2] == "SCU"
    assert {first, *(base + other for other in others)} == set(STORAGE_CLASSES)
    rows = [row for row in rows if row is not push]
    assert {row[1] for row in rows} == {DPP_FIND, DPP_GET, DPP_MOVE, *DPP_STORAGE_CLASSES}
    roles = {row[1]: row[2] for row in rows}
    assert all(roles[uid] == "SCU" for uid in (DPP_FIND, DPP_GET, DPP_MOVE))
    assert all(roles[uid].startswith("SCP") for uid in DPP_STORAGE_CLASSES)
    # "the four transfer syntaxes of 2.2.3": the listener's, in its order (one list, in sop).
    assert scu_association.TRANSFER_SYNTAXES is listener.TRANSFER_SYNTAXES is TRANSFER_SYNTAXES
    words = " ".join(text.split())
    assert f"at most {retrieve.MAXIMUM_UIDS})" in words
    assert f"(at most {scu_query.MAXIMUM_LIMIT})" in words
    assert f"or {scu_query.FIND_TIME_LIMIT:.0f} s" in words
    assert f"over {scu_query.FIND_ANSWER_DATASETS} × `MaximumDatasetSize`" in words
    assert f"goes on answering {scu_answers.AFTER_CANCEL} responses" in words
    assert f"After {retrieve.UNREQUESTED_LIMIT} refused sub-operations" in words
    assert "except Deflated Explicit VR Little Endian" in words


def test_a_retrieve_stopped_before_its_request_is_not_sent(archive: BareArchive) -> None:
    control = Control()
    control.abort()  # the plugin stops while the job is still connecting
    with pytest.raises(RemoteError, match="C-GET stopped before it was sent"):
        retrieve.get(CALLER, modality_of(archive), list(archive.held), lambda *a: None, control)
    assert archive.identifiers == []


def test_a_remote_that_never_stops_answering_is_cut_off() -> None:
    def endless() -> Iterator[tuple[Dataset, Dataset | None]]:
        while True:
            pending = Dataset()
            pending.Status = 0xFF00
            yield pending, None

    modality = Modality("chatty", "CHATTY", "127.0.0.1", 104)
    received = 0
    with pytest.raises(RemoteError, match="goes on answering"):
        for _ in scu_answers.bounded_responses(endless(), 10, modality):
            received += 1
    assert received == 10 + scu_answers.AFTER_CANCEL + 1


# -- a hostile archive ----------------------------------------------------------------------

SMALL = Calling(
    "DPP_SCU_UNIT",
    acse_timeout=5,
    dimse_timeout=5,
    network_timeout=5,
    limits=DatasetLimits(maximum_size=1 << 20),
)


def storing() -> tuple[dict[str, Dataset], retrieve.Store]:
    stored: dict[str, Dataset] = {}

    def store(ds: Dataset, sop_class: str) -> None:
        stored[str(ds.SOPInstanceUID)] = ds

    return stored, store


def test_get_stores_only_the_requested_instance(
    archive: BareArchive, caplog: pytest.LogCaptureFixture
) -> None:
    wanted, other = list(archive.held.values())[:2]
    archive.get_sends = [RawStore.of(wanted), RawStore.of(other)]
    stored, store = storing()
    result = retrieve.get(CALLER, modality_of(archive), [str(wanted.SOPInstanceUID)], store)
    assert sorted(stored) == [str(wanted.SOPInstanceUID)]  # the unrequested one was not stored
    assert archive.store_statuses == [dimse_status.SUCCESS, dimse_status.NOT_AUTHORIZED]
    assert archive.store_comments[1] == "SOP Instance not requested by this C-GET"
    assert result.unrequested == {str(other.SOPInstanceUID): "not requested by this C-GET"}
    assert result.as_json()["Unrequested"] == result.unrequested
    assert any(
        r.levelname == "WARNING" and "bare (BARE_DPP@127.0.0.1" in r.getMessage()
        and str(other.SOPInstanceUID) in r.getMessage()
        for r in caplog.records
    )  # fmt: skip


def test_get_refuses_a_dataset_that_is_not_the_announced_instance(archive: BareArchive) -> None:
    wanted, other = list(archive.held.values())[:2]
    uid = str(wanted.SOPInstanceUID)
    archive.get_sends = [RawStore.of(other, affected_uid=uid)]
    stored, store = storing()
    result = retrieve.get(CALLER, modality_of(archive), [uid], store)
    assert stored == {}
    assert archive.store_statuses == [dimse_status.STORE_CANNOT_UNDERSTAND]
    assert archive.store_comments == ["SOP Instance UID is not the Affected SOP Instance UID"]
    assert str(other.SOPInstanceUID) in result.refused[uid]


def test_get_takes_each_requested_instance_once(archive: BareArchive) -> None:
    first, second, third = list(archive.held.values())[:3]
    uids = [str(first.SOPInstanceUID), str(second.SOPInstanceUID)]
    archive.get_sends = [RawStore.of(first), RawStore.of(first), RawStore.of(third)]
    stored, store = storing()
    result = retrieve.get(CALLER, modality_of(archive), uids, store)
    assert sorted(stored) == [uids[0]]
    assert archive.store_statuses == [
        dimse_status.SUCCESS,
        dimse_status.NOT_AUTHORIZED,
        dimse_status.NOT_AUTHORIZED,
    ]
    assert archive.store_comments[1] == "SOP Instance already received in this C-GET"
    assert set(result.unrequested) == {uids[0], str(third.SOPInstanceUID)}


def test_a_flood_of_unrequested_instances_aborts_the_get(archive: BareArchive) -> None:
    wanted, other = list(archive.held.values())[:2]
    archive.get_sends = [RawStore.of(other)] * (retrieve.UNREQUESTED_LIMIT + 5)
    stored, store = storing()
    with pytest.raises(RemoteError, match="not requested") as caught:
        retrieve.get(CALLER, modality_of(archive), [str(wanted.SOPInstanceUID)], store)
    assert stored == {}
    assert len(archive.store_statuses) <= retrieve.UNREQUESTED_LIMIT + 1
    assert "association aborted" in caught.value.reason


def big_protocol(seed: int, size: int) -> Dataset:
    ds = make_protocol(seed, "CT", charset="")
    ds.add_new(0x00091010, "OB", bytes(size))
    ds.add_new(0x00090010, "LO", "HOSTILE")
    return ds


def test_a_deflate_bomb_from_the_archive_is_refused_while_inflating(
    archive: BareArchive,
) -> None:
    bomb = big_protocol(90, 64 << 20)
    uid = str(bomb.SOPInstanceUID)
    raw = RawStore.of(bomb)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(raw.data) + packer.flush()
    archive.get_sends = [RawStore(uid, raw.sop_class, deflated, DeflatedExplicitVRLittleEndian)]
    stored, store = storing()
    result = retrieve.get(SMALL, modality_of(archive), [uid], store)
    assert stored == {}
    assert archive.store_statuses == [dimse_status.STORE_OUT_OF_RESOURCES]
    assert archive.store_comments[0].startswith("Dataset inflates to more than MaximumDatasetSize")
    assert "MaximumDatasetSize" in result.refused[uid]


def test_an_oversize_dataset_from_the_archive_aborts_while_it_arrives(
    archive: BareArchive,
) -> None:
    big = big_protocol(91, 3 << 20)
    archive.get_sends = [RawStore.of(big)]
    stored, store = storing()
    with pytest.raises(RemoteError, match="MaximumDatasetSize"):
        retrieve.get(SMALL, modality_of(archive), [str(big.SOPInstanceUID)], store)
    assert stored == {}
    assert archive.store_statuses == [-1]  # no response: the association was aborted


def test_an_endless_find_is_cut_off(archive: BareArchive) -> None:
    archive.endless_find = True
    with pytest.raises(RemoteError, match="goes on answering") as caught:
        scu_query.find(CALLER, modality_of(archive), build_identifier({}), limit=5)
    assert len(caught.value.partial) == 5
    assert archive.find_answers < ENDLESS_FIND_BOUND


def test_queries_do_not_propose_deflate_whose_answers_pynetdicom_would_inflate() -> None:
    assert DeflatedExplicitVRLittleEndian not in QUERY_TRANSFER_SYNTAXES
    assert DeflatedExplicitVRLittleEndian in TRANSFER_SYNTAXES  # storage: bounded


def find_in_thread(modality: Modality) -> list[BaseException]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            scu_query.find(CALLER, modality, build_identifier({}))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the find still waits for the stalled archive"
    return errors


def test_an_archive_stalling_in_the_middle_of_a_pdu_is_dropped() -> None:
    with StallingPeer(200) as stalling:
        errors = find_in_thread(Modality("stall", "STALL", "127.0.0.1", stalling.port))
    assert len(errors) == 1 and isinstance(errors[0], RemoteError)


def test_an_archive_announcing_a_huge_pdu_is_aborted_before_it_is_read() -> None:
    with StallingPeer(1 << 30) as huge:
        errors = find_in_thread(Modality("huge", "HUGE", "127.0.0.1", huge.port))
    assert len(errors) == 1 and isinstance(errors[0], RemoteError)
    assert "MaximumPduSize" in errors[0].reason
