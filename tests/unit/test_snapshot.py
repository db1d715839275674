"""The index snapshot: exact round trip, safe loading, fast restart path of the feed."""

from __future__ import annotations

import base64
import pickle
import zlib

import pytest
from pydicom import Dataset

from orthanc_dpp import snapshot
from orthanc_dpp.config import Normalization
from orthanc_dpp.feed import IndexFeed
from orthanc_dpp.index import ProtocolIndex
from orthanc_dpp.library import ProtocolLibrary
from orthanc_dpp.match import compile_query
from orthanc_dpp.record import BULK, to_record
from tests.dpp_factory import make_library, make_protocol
from tests.fake_orthanc import FakeOrthancApi


class MemorySnapshots:
    def __init__(self) -> None:
        self.text = ""
        self.writes = 0

    def read(self) -> str:
        return self.text

    def write(self, text: str) -> None:
        self.text = text
        self.writes += 1


def test_round_trip_keeps_records_equal_and_matching() -> None:
    datasets = [make_protocol(seed, "CT", target_size=20_000) for seed in range(5)]
    records = [to_record(ds) for ds in datasets]
    entries, seq = snapshot.load(snapshot.dump([(f"id{i}", r) for i, r in enumerate(records)], 17))
    assert seq == 17
    assert [orthanc_id for orthanc_id, _ in entries] == [f"id{i}" for i in range(5)]
    assert [record for _, record in entries] == records
    identifier = Dataset()
    identifier.ProtocolName = datasets[2].ProtocolName
    query = compile_query(identifier)
    assert [query.matches(r) for _, r in entries] == [query.matches(r) for r in records]


def test_bulk_marker_survives_as_the_same_object() -> None:
    # The matcher tells "value too large to keep" by identity with BULK.
    assert pickle.loads(pickle.dumps(BULK)) is BULK


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no snapshot stored yet"),
        ("not base64!", "snapshot unreadable"),
        (
            base64.b64encode(zlib.compress(pickle.dumps((1, 0, [("a", Evil())])))).decode(),
            "snapshot refers to posix.system, which is not a record class",
        ),
        (
            base64.b64encode(zlib.compress(pickle.dumps((99, 0, [])))).decode(),
            "snapshot format 99, this plugin reads format 1",
        ),
        (
            base64.b64encode(zlib.compress(pickle.dumps((1, 0, [("a", 5)])))).decode(),
            "snapshot holds something other than records",
        ),
    ],
    ids=["empty", "garbage", "code", "old format", "not records"],
)
def test_bad_snapshots_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(snapshot.SnapshotError, match=reason):
        snapshot.load(text)


def make_feed(api: FakeOrthancApi, store: MemorySnapshots) -> tuple[IndexFeed, ProtocolIndex]:
    index = ProtocolIndex()
    library = ProtocolLibrary(api, Normalization())
    feed = IndexFeed(
        library,
        index,
        poll_interval=0.05,
        reconcile_interval=3600,
        snapshots=store,
        snapshot_interval=3600,
    )
    return feed, index


def test_restart_starts_from_the_snapshot_and_catches_up(caplog) -> None:
    api, store = FakeOrthancApi(), MemorySnapshots()
    library = ProtocolLibrary(api, Normalization())
    first = [library.store(ds) for ds in make_library(6, seed=10)]
    feed, _ = make_feed(api, store)
    feed.load()
    assert feed.save_snapshot(force=True)
    # While "down": one more stored, one deleted.
    later = library.store(make_protocol(99, "XA"))
    api.delete(f"/instances/{first[0].orthanc_id}")
    files_read_before = sum(1 for call in api.calls if call[1].endswith("/file"))
    feed, index = make_feed(api, store)
    feed.load()
    files_read = sum(1 for call in api.calls if call[1].endswith("/file")) - files_read_before
    assert files_read == 1  # only the instance stored after the snapshot was read
    assert feed.restored == 6
    assert index.get(later.sop_instance_uid) is not None
    assert index.get(first[0].sop_instance_uid) is None
    assert len(index) == 6
    assert "6 from the snapshot, 1 new from the change log, 1 deleted since" in caplog.text


def test_snapshot_is_saved_only_when_the_index_changed() -> None:
    api, store = FakeOrthancApi(), MemorySnapshots()
    feed, index = make_feed(api, store)
    feed.load()
    assert feed.save_snapshot(force=True)
    assert not feed.save_snapshot(force=True)  # unchanged
    index.put("x", make_protocol(5))
    assert not feed.save_snapshot()  # changed, but the interval has not passed
    assert feed.save_snapshot(force=True)
    assert store.writes == 2


def test_unusable_snapshot_means_a_full_rebuild(caplog) -> None:
    api, store = FakeOrthancApi(), MemorySnapshots()
    ProtocolLibrary(api, Normalization()).store(make_protocol(3))
    store.text = "garbage"
    feed, index = make_feed(api, store)
    feed.load()
    assert len(index) == 1 and feed.restored is None
    assert "Index snapshot not used (snapshot unreadable" in caplog.text
