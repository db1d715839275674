"""The plugin's metrics at Orthanc's /tools/metrics-prometheus, moved by real traffic."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (
    DefinedProcedureProtocolInformationModelMove as DPP_MOVE,
)

from dpp_tools.samples import make_library, make_protocol, to_bytes
from orthanc_dpp.metrics import METRICS, PREFIX
from orthanc_dpp.model.sop import STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests.orthanc_server import OrthancServer, free_port
from tests.peers import associate, c_find, c_get, echo_works, find_identifier, storescp
from tests.waiting import eventually

STORE_AET = "STORE_SCP"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    store_port = free_port()
    server = OrthancServer(
        tmp_path_factory.mktemp("metrics"),
        config={
            "DicomModalities": {
                "getter": ["GETTER", "127.0.0.1", 104],
                "store": [STORE_AET, "127.0.0.1", store_port],
            }
        },
    )
    server.store_port = store_port  # type: ignore[attr-defined]
    with server:
        yield server


def scrape(orthanc: OrthancServer) -> dict[str, float]:
    """The plugin's metrics as Orthanc prints them."""
    return orthanc.plugin_metrics()


def moves(orthanc: OrthancServer, before: dict[str, float], **expected: float) -> dict[str, float]:
    """Wait (10 s at most) until each named metric has moved by exactly its amount.

    Every other counter must not move, and no association may be left
    open; the metrics are published once a second, so the first scrapes
    may still show the old values.
    """
    wanted = {PREFIX + name: amount for name, amount in expected.items()}
    still = {
        m.name: 0.0
        for m in METRICS
        if m.name.endswith("_total") and m.name not in wanted and "associations" not in m.name
    }
    last: dict[str, float] = {}

    def settled() -> bool:
        nonlocal last
        last = scrape(orthanc)
        moved = {name: last[name] - before[name] for name in [*wanted, *still]}
        return moved == {**wanted, **still} and last[PREFIX + "associations_open"] == 0

    if not eventually(settled, timeout=30, step=0.2):
        moved = {name: last[name] - before[name] for name in last if last[name] != before[name]}
        raise AssertionError(f"expected moves {wanted}, got {moved}")
    return last


def test_every_metric_is_published(orthanc) -> None:
    assert eventually(lambda: set(scrape(orthanc)) == {m.name for m in METRICS}, timeout=30)


def test_echo_and_stores_move_their_counters(orthanc) -> None:
    before = scrape(orthanc)
    assert echo_works(orthanc)
    before = moves(orthanc, before, associations_served_total=1, c_echo_success_total=1)

    accepted = make_protocol(901)
    changed = copy.deepcopy(accepted)
    changed.ProtocolName = "Another protocol, same SOP Instance UID"
    assoc = associate(orthanc)
    assert assoc.send_c_store(accepted).Status == 0x0000
    assert assoc.send_c_store(changed).Status == 0x0111  # kept: other content refused
    assoc.release()
    before = moves(
        orthanc,
        before,
        associations_served_total=1,
        c_store_success_total=1,
        c_store_failure_total=1,
        c_store_seconds_count=1,  # the one stored
    )
    assert before[PREFIX + "c_store_orthanc_seconds_sum"] > 0
    assert before[PREFIX + "c_store_orthanc_seconds_sum"] < before[PREFIX + "c_store_seconds_sum"]

    assoc = associate(orthanc, list(STORAGE_CLASSES), ae_title="STRANGER")
    assert assoc.send_c_store(make_protocol(902)).Status == 0x0124
    assoc.release()
    moves(orthanc, before, associations_served_total=1, c_store_refused_total=1)


def test_c_find_moves_its_count_and_time(orthanc) -> None:
    before = scrape(orthanc)
    *_, (final, _) = c_find(orthanc, find_identifier())
    assert final == 0x0000
    after = moves(
        orthanc,
        before,
        associations_served_total=1,
        c_find_success_total=1,
        c_find_seconds_count=1,
    )
    assert after[PREFIX + "c_find_seconds_max"] > 0
    assert after[PREFIX + "c_find_seconds_sum"] >= after[PREFIX + "c_find_seconds_max"]


def test_retrieves_count_outcomes_and_sub_operations(orthanc, tmp_path: Path) -> None:
    library = list(make_library(3, seed=77, kinds=("CT",)))
    before = scrape(orthanc)
    assert orthanc.post("/dpp/protocols", to_bytes(library[0]))["Stored"] == 1
    before = moves(orthanc, before, rest_files_stored_total=1)
    uids = [str(library[0].SOPInstanceUID), generate_uid()]  # the second is not stored

    final, received = c_get(orthanc, uids)
    assert final.Status == 0xB000 and len(received) == 1
    before = moves(
        orthanc,
        before,
        associations_served_total=1,
        c_get_warning_total=1,
        suboperations_completed_total=1,
        suboperations_failed_total=1,
    )

    with storescp(tmp_path, profile=True, port=orthanc.store_port, aet=STORE_AET) as (_, out):
        assoc = associate(orthanc, [DPP_MOVE], TRANSFER_SYNTAXES)
        identifier = Dataset()
        identifier.SOPInstanceUID = uids
        *_, (status, _) = list(assoc.send_c_move(identifier, STORE_AET, DPP_MOVE))
        assoc.release()
        assert status.Status == 0xB000
        assert len(list(out.iterdir())) == 1
    moves(
        orthanc,
        before,
        associations_served_total=1,
        c_move_warning_total=1,
        suboperations_completed_total=1,
        suboperations_failed_total=1,
    )


def test_rest_uploads_and_the_protocols_in_the_index(orthanc) -> None:
    before = scrape(orthanc)
    assert orthanc.post("/dpp/protocols", to_bytes(make_protocol(903)))["Stored"] == 1
    after = moves(orthanc, before, rest_files_stored_total=1)
    total = orthanc.get_json("/dpp/status")["Protocols"]["Total"]
    assert after[PREFIX + "protocols"] == total == before[PREFIX + "protocols"] + 1
