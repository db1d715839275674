"""The index feed counts Performed Procedure Protocol instances; the count survives a restart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.record import Record
from orthanc_dpp.model.usage import XA_PERFORMED
from orthanc_dpp.storage import performed
from orthanc_dpp.storage.feed import IndexFeed
from orthanc_dpp.storage.library import ProtocolLibrary
from tests.datasets import make_performed
from tests.fake_orthanc import FakeOrthancApi, MemorySnapshots


def make_feed(api: FakeOrthancApi, **options: Any) -> IndexFeed:
    options = {"poll_interval": 0.05, "reconcile_interval": 3600.0, **options}
    return IndexFeed(ProtocolLibrary(api, Normalization()), ProtocolIndex(), **options)


def store_performed(api: FakeOrthancApi, seed: int, defined: list[str], **kwargs: str) -> str:
    """A performed instance stored around the plugin (a modality's C-STORE); its Orthanc ID."""
    data = to_bytes(make_performed(seed, defined, **kwargs))
    return str(json.loads(api.post("/instances", data))["ID"])


def file_reads(api: FakeOrthancApi) -> int:
    return sum(1 for _, uri in api.calls if uri.endswith("/file"))


@pytest.mark.parametrize("fast_load", [True, False])
def test_performed_instances_are_counted_at_load_and_as_they_come(fast_load: bool) -> None:
    api = FakeOrthancApi()
    ct = ProtocolLibrary(api, Normalization()).store(make_protocol(1, "CT"))
    xa = ProtocolLibrary(api, Normalization()).store(make_protocol(2, "XA"))
    first = store_performed(api, 1, [ct.sop_instance_uid], date="20240301", time="0900")
    data = to_bytes(make_performed(2, [ct.sop_instance_uid, xa.sop_instance_uid]))
    sent = {"first": api.files[first]}
    feed = make_feed(api, fast_load=fast_load)
    feed.load()
    assert len(feed.index) == 2  # the performed instances are not protocols of the library
    assert feed.usage.of(ct.sop_instance_uid) == {"Count": 1, "LastUsed": "202403010900"}
    api.post("/instances", data)
    store_performed(api, 3, [xa.sop_instance_uid], sop_class=XA_PERFORMED, date="20250101")
    feed.catch_up()
    assert feed.usage.of(ct.sop_instance_uid) == {"Count": 2, "LastUsed": "20240305101500"}
    assert feed.usage.of(xa.sop_instance_uid) == {"Count": 2, "LastUsed": "20250101101500"}
    assert api.files[first] == sent["first"]  # read, never changed


def test_a_deleted_performed_instance_is_no_longer_counted() -> None:
    api = FakeOrthancApi()
    uid = ProtocolLibrary(api, Normalization()).store(make_protocol(1)).sop_instance_uid
    early = store_performed(api, 1, [uid], date="20240101")
    late = store_performed(api, 2, [uid], date="20240601")
    feed = make_feed(api)
    feed.load()
    assert feed.usage.of(uid)["Count"] == 2
    api.delete(f"/instances/{late}")
    feed.forget(late)
    feed.forget(early)  # reported, but still stored: kept
    feed.apply_deletions()
    assert feed.usage.of(uid) == {"Count": 1, "LastUsed": "20240101101500"}
    assert len(feed.index) == 1


def test_a_performed_file_over_the_bound_is_not_read(monkeypatch, caplog) -> None:
    api = FakeOrthancApi()
    orthanc_id = store_performed(api, 1, ["1.2.3"])
    monkeypatch.setattr(performed, "PERFORMED_MAXIMUM_BYTES", 100)
    feed = make_feed(api)
    feed.load()
    assert feed.usage.of("1.2.3")["Count"] == 0 and file_reads(api) == 0
    assert f"Performed procedure protocol {orthanc_id} not counted in the usage" in caplog.text


def test_a_damaged_performed_file_is_logged_and_skipped(caplog) -> None:
    api = FakeOrthancApi()
    orthanc_id = store_performed(api, 1, ["1.2.3"])
    api.files[orthanc_id] = b"not a DICOM file" * 20
    feed = make_feed(api)
    feed.load()
    assert feed.ready and feed.usage.of("1.2.3")["Count"] == 0
    assert f"Performed procedure protocol {orthanc_id} not counted" in caplog.text


def restartable(api: FakeOrthancApi, stores: tuple[MemorySnapshots, MemorySnapshots]) -> IndexFeed:
    return make_feed(api, snapshots=stores[0], usage_snapshots=stores[1], snapshot_interval=3600)


def test_a_restart_takes_the_usage_from_the_snapshot_without_reading_again() -> None:
    api, stores = FakeOrthancApi(), (MemorySnapshots(), MemorySnapshots())
    uid = ProtocolLibrary(api, Normalization()).store(make_protocol(1)).sop_instance_uid
    for seed in (1, 2):
        store_performed(api, seed, [uid])
    feed = restartable(api, stores)
    feed.load()
    assert feed.save_snapshot(force=True) and stores[1].writes == 1
    store_performed(api, 3, [uid], date="20260101")  # while "down"
    reads = file_reads(api)
    feed = restartable(api, stores)
    feed.load()
    assert feed.restored == 1
    assert file_reads(api) - reads == 1  # only the instance stored after the snapshot
    assert feed.usage.of(uid) == {"Count": 3, "LastUsed": "20260101101500"}


def test_a_changed_usage_alone_is_saved_too() -> None:
    api, stores = FakeOrthancApi(), (MemorySnapshots(), MemorySnapshots())
    feed = restartable(api, stores)
    feed.load()
    assert feed.save_snapshot(force=True)
    store_performed(api, 1, ["1.2.3"])
    feed.catch_up()
    assert feed.save_snapshot(force=True) and stores[1].writes == 2


@pytest.mark.parametrize(
    ("usage_text", "reason"),
    [
        ("", "protocol usage: no usage stored yet"),  # saved by a version without usage
        ("stale", "protocol usage saved at change 1, index at"),
    ],
)
def test_a_usage_store_that_does_not_match_means_a_full_rebuild(
    usage_text: str, reason: str, caplog
) -> None:
    api, stores = FakeOrthancApi(), (MemorySnapshots(), MemorySnapshots())
    uid = ProtocolLibrary(api, Normalization()).store(make_protocol(1)).sop_instance_uid
    store_performed(api, 1, [uid])
    feed = restartable(api, stores)
    feed.load()
    assert feed.save_snapshot(force=True)
    stores[1].text = performed.protocol_usage.dump([], 1) if usage_text else ""
    feed = restartable(api, stores)
    feed.load()
    assert feed.restored is None and reason in caplog.text
    assert feed.usage.of(uid)["Count"] == 1 and len(feed.index) == 1


def test_a_rebuild_after_a_broken_snapshot_recounts_from_nothing(monkeypatch) -> None:
    api, stores = FakeOrthancApi(), (MemorySnapshots(), MemorySnapshots())
    uid = ProtocolLibrary(api, Normalization()).store(make_protocol(1)).sop_instance_uid
    kept = store_performed(api, 1, [uid])
    gone = store_performed(api, 2, [uid])
    feed = restartable(api, stores)
    feed.load()
    assert feed.save_snapshot(force=True)
    api.delete(f"/instances/{gone}")  # while "down", by another node
    feed = restartable(api, stores)
    real_put = feed.index.put_record
    failures = iter([TypeError("unexpected value")])  # the snapshot's record only

    def put_record(orthanc_id: str, record: Record) -> str | None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_put(orthanc_id, record)

    monkeypatch.setattr(feed.index, "put_record", put_record)
    feed.load()
    assert feed.restored is None
    assert feed.usage.orthanc_ids() == {kept} and feed.usage.of(uid)["Count"] == 1
