"""The index follows Orthanc's change log, including other nodes' work."""

from __future__ import annotations

from dpp_tools.samples import make_library, make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.storage.feed import CHANGES_PAGE, IndexFeed
from orthanc_dpp.storage.library import ProtocolLibrary
from tests.fake_orthanc import FakeOrthancApi, MemorySnapshots
from tests.waiting import eventually


def make_feed(api: FakeOrthancApi, index: ProtocolIndex, **kwargs: float) -> IndexFeed:
    library = ProtocolLibrary(api, Normalization())
    options = {"poll_interval": 0.05, "reconcile_interval": 3600.0, **kwargs}
    return IndexFeed(library, index, **options)


def store_elsewhere(api: FakeOrthancApi, count: int, seed: int) -> list[str]:
    """Instances stored by 'another node': only the change log knows them."""
    library = ProtocolLibrary(api, Normalization())
    return [library.store(ds).sop_instance_uid for ds in make_library(count, seed=seed)]


def test_initial_load_indexes_only_dpp_instances() -> None:
    api, index = FakeOrthancApi(), ProtocolIndex()
    uids = store_elsewhere(api, 5, seed=1)
    image = make_non_dpp(1)
    api.post("/instances", to_bytes(image))
    feed = make_feed(api, index)
    feed.load()
    assert feed.ready
    assert {index.get(uid).sop_instance_uid for uid in uids} == set(uids)
    assert len(index) == 5
    assert feed.last_seq == api.seq
    # The search keys are worked out once loaded, not by the first search.
    assert all(entry.search_keys is not None for entry in index.snapshot())


def test_paging_through_a_long_change_log() -> None:
    api, index = FakeOrthancApi(), ProtocolIndex()
    store_elsewhere(api, 3, seed=2)
    for seq in range(CHANGES_PAGE + 10):  # unrelated changes push entries past a page
        api.seq += 1
        api.changes.append({"ChangeType": "StableSeries", "ID": f"s{seq}", "Seq": api.seq})
    later = store_elsewhere(api, 2, seed=3)
    feed = make_feed(api, index)
    feed.load()
    assert len(index) == 5
    assert all(index.get(uid) for uid in later)


def test_worker_follows_new_instances_and_reconciles_deletions() -> None:
    api, index = FakeOrthancApi(), ProtocolIndex()
    feed = make_feed(api, index, reconcile_interval=1.0)
    feed.start()
    try:
        uids = store_elsewhere(api, 3, seed=4)
        feed.wake()
        assert eventually(lambda: len(index) == 3)
        gone = index.get(uids[0])
        api.delete(f"/instances/{gone.orthanc_id}")  # deleted by another node
        assert eventually(lambda: index.get(uids[0]) is None, timeout=5.0)
        assert len(index) == 2
    finally:
        feed.stop()


def test_reconciliation_indexes_a_protocol_the_change_log_did_not_show() -> None:
    """A change read out of order is missed for good: reconciliation adds it.

    Seen with two nodes on PostgreSQL (Orthanc 1.13.0) when the database
    went away mid-burst: a transaction that took its change-log number
    before another but committed after it is behind a poller that already
    moved past; and a store answered "database unavailable" may still be in
    Orthanc. Either way the library series holds it and the index does not.
    """
    api, index = FakeOrthancApi(), ProtocolIndex()
    feed = make_feed(api, index)
    feed.load()
    (uid,) = store_elsewhere(api, 1, seed=8)
    feed.last_seq = api.seq  # the poller is already past its change
    assert feed.catch_up() == 0 and index.get(uid) is None
    feed.reconcile()  # missing once: it may still be on its way through the change log
    assert feed.reconcile() == 0  # missing twice: read; nothing deleted
    assert index.get(uid) is not None


def test_forget_removes_once_orthanc_no_longer_has_it() -> None:
    api, index = FakeOrthancApi(), ProtocolIndex()
    store_elsewhere(api, 2, seed=5)
    feed = make_feed(api, index)
    feed.load()
    gone, overwritten = sorted(index.orthanc_ids())
    api.delete(f"/instances/{gone}")
    feed.forget(gone)
    feed.forget(overwritten)  # a DELETED event for an instance stored again since
    assert feed.apply_deletions() == 1
    assert index.orthanc_ids() == {overwritten}


def test_a_failing_orthanc_is_reported_not_fatal(caplog) -> None:
    api, index = FakeOrthancApi(), ProtocolIndex()
    original_get = api.get
    failures = {"left": 2}

    def flaky_get(uri: str) -> bytes:
        if uri.startswith("/changes") and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database unavailable")
        return original_get(uri)

    api.get = flaky_get  # type: ignore[method-assign]
    store_elsewhere(api, 2, seed=6)
    feed = make_feed(api, index)
    feed.start()
    try:
        assert eventually(lambda: len(index) == 2 and feed.last_error is None)
        assert "Protocol index update failed: database unavailable" in caplog.text
    finally:
        feed.stop()


def test_a_store_read_from_the_log_before_it_is_indexed_holds_the_snapshot_back() -> None:
    """A crash between the two must not leave an instance nobody will index."""
    from orthanc_dpp.storage.feed import FreshInstances

    fresh = FreshInstances()
    fresh.mark("a")
    assert fresh.take("a", 7)  # the feed skips the change of our own store...
    assert fresh.low_water() == 7  # ...but until it is indexed, the snapshot stays before it
    fresh.indexed("a")
    assert fresh.low_water() is None
    fresh.mark("b")
    fresh.indexed("b")  # indexed before the feed reads the change
    assert fresh.take("b", 9) and fresh.low_water() is None
    assert not fresh.take("b", 10)  # once only: a later overwrite is read
    fresh.mark("c")
    fresh.unmark("c")  # nothing was created
    assert not fresh.take("c", 11)


def test_a_change_of_ours_whose_file_was_replaced_meanwhile_is_read() -> None:
    """Overwriting drops the old copy's changes: the one left may be the other copy's."""
    from orthanc_dpp.storage.feed import FreshInstances

    fresh = FreshInstances()
    fresh.mark("d", "md5-of-ours")
    assert not fresh.take("d", 12, lambda orthanc_id: "md5-of-another-copy")
    assert fresh.low_water() is None  # read, not skipped: nothing held back
    fresh.mark("e", "md5-of-ours")
    assert fresh.take("e", 13, lambda orthanc_id: "md5-of-ours")


def loaded_entries(
    api: FakeOrthancApi, records: RecordCache, *, fast_load: bool
) -> list[tuple[str, object]]:
    index = ProtocolIndex(records)  # records of indexes compared must share their cache
    feed = make_feed(api, index)
    feed.fast_load = fast_load
    feed.load()
    assert feed.ready
    return [(e.orthanc_id, e.record) for e in index.snapshot()]


def test_fast_start_up_builds_the_same_index_as_the_previous_loader(records: RecordCache) -> None:
    """Same entries, same records, same order: C-FIND cannot tell the loaders apart."""
    api = FakeOrthancApi()
    store_elsewhere(api, 12, seed=40)  # normalized: in the library's series
    api.post("/instances", to_bytes(make_non_dpp(3)))  # not a protocol: not indexed
    # Outside the library's series: stored with its own patient/study/series,
    # once as a protocol of its own and once with the UID of a normalized one
    # (a duplicate: the first stays indexed).
    for seed in (90, 41):
        own = make_protocol(seed, "XA")
        own.PatientID, own.StudyInstanceUID, own.SeriesInstanceUID = "P1", "1.2.4", f"1.2.4.{seed}"
        api.post("/instances", to_bytes(own))
    approvals = ProtocolLibrary(api, Normalization())
    for ds in make_library(4, seed=100, kinds=("CT", "APPROVAL")):
        approvals.store(ds)
    fast = loaded_entries(api, records, fast_load=True)
    assert len(fast) == 12 + 1 + 4
    assert fast == loaded_entries(api, records, fast_load=False)


def test_load_progress_counts_change_log_entries_until_ready() -> None:
    api = FakeOrthancApi()
    store_elsewhere(api, 6, seed=50)
    index = ProtocolIndex()
    feed = make_feed(api, index)
    seen: list[dict[str, int] | None] = []
    read_file = api.get

    def get(uri: str) -> bytes:
        if uri.endswith("/file"):
            seen.append(feed.load_progress())
        return read_file(uri)

    api.get = get  # type: ignore[method-assign]
    assert feed.load_progress() is None  # not started
    feed.load()
    assert [p["ChangesRead"] for p in seen if p] == [0, 1, 2, 3, 4, 5]
    assert {p["ChangesToRead"] for p in seen if p} == {api.seq}
    assert feed.ready and feed.load_progress() is None


def test_a_stop_during_the_load_leaves_the_index_not_ready() -> None:
    api = FakeOrthancApi()
    store_elsewhere(api, 5, seed=60)
    index, store = ProtocolIndex(), MemorySnapshots()
    feed = make_feed(api, index)
    feed.snapshots = store
    read_file = api.get
    files: list[str] = []

    def get(uri: str) -> bytes:
        if uri.endswith("/file"):
            files.append(uri)
            if len(files) == 2:
                feed._stop.set()  # Orthanc stops while the index loads
        return read_file(uri)

    api.get = get  # type: ignore[method-assign]
    feed.load()
    assert not feed.ready and len(files) == 2 and len(index) == 2
    assert not feed.save_snapshot(force=True) and store.writes == 0  # never a partial index
