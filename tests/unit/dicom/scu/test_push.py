"""Pushing protocols with C-STORE (orthanc_dpp.dicom.scu.push) to a pynetdicom storage SCP
on loopback: what the modality receives, and the outcome of each SOP Instance UID."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import Calling
from orthanc_dpp.dicom.scu import push as scu_push
from orthanc_dpp.dicom.scu.retrieve import Control
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests.orthanc_server import free_port
from tests.scp_harness import MemorySource
from tests.waiting import eventually

CALLER = Calling("DPP_PUSH_UNIT", acse_timeout=5, dimse_timeout=5, network_timeout=5)


@dataclass
class Scanner:
    """A storage SCP of the DPP classes: records what it gets, answers ``statuses`` per UID."""

    port: int
    received: dict[str, bytes] = field(default_factory=dict)
    callers: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    hold: threading.Event | None = None

    def modality(self, **options: object) -> Modality:
        return Modality("scanner", "SCANNER", "127.0.0.1", self.port, **options)  # type: ignore[arg-type]


@pytest.fixture
def scanner() -> Iterator[Scanner]:
    found = Scanner(free_port())

    def on_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        found.callers.append(event.assoc.requestor.ae_title)
        found.received[uid] = event.request.DataSet.getvalue()
        if found.hold is not None:
            found.hold.wait(10)
        return found.statuses.get(uid, 0x0000)

    ae = AE(ae_title="SCANNER")
    for sop_class in sorted(DPP_STORAGE_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", found.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield found
    if found.hold is not None:
        found.hold.set()
    server.shutdown()


def library(count: int, ts: str = ImplicitVRLittleEndian) -> tuple[MemorySource, list[Dataset]]:
    datasets = [
        make_protocol(seed, "CT" if seed % 2 else "XA", charset="") for seed in range(count)
    ]
    return MemorySource({str(ds.SOPInstanceUID): to_bytes(ds, ts) for ds in datasets}), datasets


def test_each_protocol_reaches_the_modality_as_stored(scanner: Scanner) -> None:
    source, datasets = library(3)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    result = scu_push.push(CALLER, scanner.modality(), uids, source)
    assert [o["Status"] for o in result.as_json()["Results"]] == ["0x0000"] * 3
    assert result.as_json()["Completed"] == 3 and result.code == dimse_status.SUCCESS
    assert set(scanner.received) == set(uids)
    assert scanner.callers == ["DPP_PUSH_UNIT"] * 3
    for ds in datasets:  # the dataset of the stored file, in its own (implicit) syntax
        stored = to_bytes(ds, ImplicitVRLittleEndian)
        assert stored.endswith(scanner.received[str(ds.SOPInstanceUID)])


def test_the_modalitys_own_ae_title_is_the_calling_one(scanner: Scanner) -> None:
    source, datasets = library(1)
    uid = str(datasets[0].SOPInstanceUID)
    scu_push.push(CALLER, scanner.modality(local_aet="ROOM3_PUSH"), [uid], source)
    assert scanner.callers == ["ROOM3_PUSH"]


def test_unknown_uids_and_refusals_are_per_uid_failures(scanner: Scanner) -> None:
    source, datasets = library(2)
    first, second = (str(ds.SOPInstanceUID) for ds in datasets)
    scanner.statuses[second] = 0xA700
    result = scu_push.push(CALLER, scanner.modality(), [first, "1.2.3.999", second], source)
    assert result.as_json()["Results"] == [
        {"SOPInstanceUID": first, "Outcome": "Success", "Status": "0x0000", "Error": None},
        {
            "SOPInstanceUID": "1.2.3.999",
            "Outcome": "Failure",
            "Status": None,
            "Error": "not stored here",
        },
        {
            "SOPInstanceUID": second,
            "Outcome": "Failure",
            "Status": "0xA700",
            "Error": "C-STORE failed 0xA700",
        },
    ]
    assert (result.as_json()["Failed"], result.code) == (2, 0xB000)
    assert set(scanner.received) == {first, second}


def test_a_warning_is_counted_apart_and_ends_like_a_move_with_warnings(scanner: Scanner) -> None:
    source, datasets = library(2)
    first, second = (str(ds.SOPInstanceUID) for ds in datasets)
    scanner.statuses[second] = 0xB000
    answer = scu_push.push(CALLER, scanner.modality(), [first, second], source)
    assert answer.as_json()["Results"][1] == {
        "SOPInstanceUID": second,
        "Outcome": "Warning",
        "Status": "0xB000",
        "Error": "C-STORE warning 0xB000",
    }
    assert (answer.count("Success"), answer.count("Warning"), answer.count("Failure")) == (1, 1, 0)
    assert answer.code == dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES


def test_nothing_stored_here_needs_no_association(scanner: Scanner) -> None:
    result = scu_push.push(CALLER, scanner.modality(), ["1.2.3.4"], MemorySource({}))
    assert result.as_json()["Results"][0]["Error"] == "not stored here"
    assert result.code == dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
    assert scanner.callers == []


def test_an_unreachable_modality_fails_every_uid_with_the_reason() -> None:
    source, datasets = library(2)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    gone = Modality("gone", "GONE", "127.0.0.1", free_port())
    result = scu_push.push(CALLER, gone, uids, source)
    answer = result.as_json()
    reason = "cannot connect (refused or timed out)"
    assert answer["Error"] == f"gone (GONE@127.0.0.1:{gone.port}): {reason}"
    assert [r["Error"] for r in answer["Results"]] == ["cannot connect (refused or timed out)"] * 2
    assert answer["Failed"] == 2


def test_a_cancelled_push_sends_nothing_more(scanner: Scanner) -> None:
    source, datasets = library(3)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    scanner.hold = threading.Event()
    control = Control()
    results: list[scu_push.PushResult] = []

    def run() -> None:
        results.append(scu_push.push(CALLER, scanner.modality(), uids, source, control))

    pushing = threading.Thread(target=run)
    pushing.start()
    assert eventually(lambda: bool(scanner.received), 10)
    control.cancel()
    scanner.hold.set()
    pushing.join(10)
    result = results[0]
    assert result.code == dimse_status.CANCEL
    assert [r["Error"] for r in result.as_json()["Results"][1:]] == ["cancelled", "cancelled"]
    assert list(scanner.received) == uids[:1]
    assert control.progress.completed == 1 and control.progress.failed == 2
