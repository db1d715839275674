"""The index snapshot: exact round trip, safe loading, fast restart path of the feed."""

from __future__ import annotations

import base64
import io
import pickle
import pickletools
import zlib

import pytest
from pydicom import Dataset

from dpp_tools.samples import make_library, make_protocol
from orthanc_dpp.model import snapshot
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.query import compile_query
from orthanc_dpp.model.record import BULK, Record
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record
from orthanc_dpp.storage.feed import IndexFeed
from orthanc_dpp.storage.library import ProtocolLibrary
from tests.fake_orthanc import FakeOrthancApi, MemorySnapshots


def test_round_trip_keeps_records_equal_and_matching() -> None:
    datasets = [make_protocol(seed, "CT", target_size=20_000) for seed in range(5)]
    cache = RecordCache()  # the snapshot is loaded into the index the records came from
    records = [to_record(ds, cache) for ds in datasets]
    entries, seq = snapshot.load(
        snapshot.dump([(f"id{i}", r) for i, r in enumerate(records)], 17), cache
    )
    assert seq == 17
    assert [orthanc_id for orthanc_id, _ in entries] == [f"id{i}" for i in range(5)]
    assert [record for _, record in entries] == records
    identifier = Dataset()
    identifier.ProtocolName = datasets[2].ProtocolName
    query = compile_query(identifier)
    assert [query.matches(r) for _, r in entries] == [query.matches(r) for r in records]


def test_bulk_marker_survives_as_the_same_object(records: RecordCache) -> None:
    # The matcher tells "value too large to keep" by identity with BULK.
    record = Record(records.layout((0x00181030,), ("LO",)), (BULK,))
    ((_, back),) = snapshot.load(snapshot.dump([("a", record)], 0), records)[0]
    assert back.raw_values[0] is BULK


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def packed(*pickles: object) -> str:
    """Consecutive pickles in one compressed stream, as dump writes them."""
    return base64.b64encode(zlib.compress(b"".join(pickle.dumps(p) for p in pickles))).decode()


GOOD_LAYOUT = [((0x00080018, 0x00181030), ("UI", "LO"))]
SEQUENCE_LAYOUT = [((0x00080018, 0x00404041), ("UI", "SQ"))]


def snap(layouts: object = (), records: object = (), entries: object = (), **header: object) -> str:
    """A format-3 snapshot of the given parts (records in one chunk, unless ``chunks``)."""
    records = list(records)  # type: ignore[call-overload]
    entries = list(entries)  # type: ignore[call-overload]
    head = (
        snapshot.MAGIC,
        header.get("version", snapshot.FORMAT),
        header.get("seq", 0),
        list(layouts),  # type: ignore[call-overload]
        header.get("record_count", len(records)),
        header.get("entry_count", len(entries)),
    )
    chunks = header.get("chunks", [records] if records else [])
    return packed(head, *chunks, entries, *header.get("after", ()))


FORMAT_2 = packed((snapshot.MAGIC, 2, 0, GOOD_LAYOUT, [(0, ("1.2", "x"))], [("a", 0)]))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no snapshot stored yet"),
        ("not base64!", "snapshot unreadable"),
        (packed((1, 0, [("a", Evil())])), r"snapshot refers to posix\.system: .*data only"),
        (packed((1, 0, [])), "not a snapshot of this plugin"),
        (FORMAT_2, "snapshot format 2, this plugin reads format 3"),
        (snap(version=99), "snapshot format 99, this plugin reads format 3"),
        (snap(seq=-1), "snapshot header is malformed"),
        (snap([((0x20, 0x10), ("UI", "LO"))]), "layout 0 has tags out of order"),
        (snap([((0x10, 0x10), ("UI", "LO"))]), "layout 0 has tags out of order"),
        (snap([((-1,), ("UI",))]), "layout 0 has a tag that is not a tag"),
        (snap([((0x10,), ("ui",))]), "layout 0 has a VR"),
        (snap(GOOD_LAYOUT, [(0, ("1.2",))]), "record 0: its values do not fit its layout"),
        (snap(GOOD_LAYOUT, [(3, ("1.2", "x"))]), "names layout 3, which does not exist"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", {1: 2}))]), "a value is a dict"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", None))]), "a value is a NoneType"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", [0]))]), "a value is a list"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", ("a", [0])))]), "holds something that is not a value"),
        (snap(SEQUENCE_LAYOUT, [(0, ("1.2", (0,)))]), "not a tuple of earlier record numbers"),
        (snap(SEQUENCE_LAYOUT, [(0, ("1.2", 5))]), "not a tuple of earlier record numbers"),
        (snap(SEQUENCE_LAYOUT, [(0, ("1.2", ("x",)))]), "not a tuple of earlier record numbers"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", "x"))], [("a", 1)]), "snapshot entry 0 is malformed"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", "x"))], record_count=2), "ends after 1 of 2 records"),
        (
            snap(GOOD_LAYOUT, [(0, ("1.2", "x"))] * 3, record_count=2),
            "more records than the 2 announced",
        ),
        (snap(GOOD_LAYOUT, [(0, ("1.2", "x"))], [("a", 0)], entry_count=2), "its 2 entries"),
        (snap(GOOD_LAYOUT, [(0, ("1.2", "x"))], [("a", 0)], after=[[]]), "data after its entries"),
    ],
    ids=[
        "empty",
        "garbage",
        "code",
        "format 1 pickle",
        "format 2",
        "other format",
        "bad position",
        "tag order",
        "tag twice",
        "negative tag",
        "bad VR",
        "short record",
        "no such layout",
        "odd value",
        "None",
        "list",
        "list in values",
        "cycle",
        "sequence not a tuple",
        "sequence of text",
        "no such record",
        "truncated",
        "too many records",
        "missing entries",
        "trailing data",
    ],
)
def test_bad_snapshots_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(snapshot.SnapshotError, match=reason):
        snapshot.load(text, RecordCache())


def test_records_are_read_one_chunk_at_a_time_and_share_their_text(monkeypatch) -> None:
    monkeypatch.setattr(snapshot, "CHUNK", 2)
    cache = RecordCache()
    records = [to_record(ds, cache) for ds in make_library(7, seed=3)]
    text = snapshot.dump([(f"id{i}", r) for i, r in enumerate(records)], 9)
    payload = zlib.decompress(base64.b64decode(text))
    stream = io.BytesIO(payload)
    header = pickle.load(stream)
    chunks = []
    while len(chunks) < -(-header[4] // 2):
        chunks.append(pickle.load(stream))
    assert len(chunks) > 2 and all(len(chunk) <= 2 for chunk in chunks)
    assert len(pickle.load(stream)) == 7 and stream.tell() == len(payload)  # the entries
    entries, seq = snapshot.load(text, cache)
    assert seq == 9 and [r for _, r in entries] == records
    # Text equal across chunks is one object again, as in the index built from files.
    objects: dict[str, set[int]] = {}
    for _, restored in entries:
        for _, element in restored:
            for value in element.values or ():
                if isinstance(value, str) and len(value) <= 64:
                    objects.setdefault(value, set()).add(id(value))
    repeated = [text for text in objects if sum(text in str(r.raw_values) for r in records) > 2]
    assert repeated  # e.g. the character set, the modality: in more than one chunk
    assert all(len(ids) == 1 for ids in objects.values())


def test_a_snapshot_holds_no_class_or_function(records: RecordCache) -> None:
    entries = [(f"id{i}", to_record(make_protocol(i, "CT"), records)) for i in range(3)]
    payload = io.BytesIO(zlib.decompress(base64.b64decode(snapshot.dump(entries, 5))))
    opcodes: set[str] = set()
    while payload.tell() < len(payload.getbuffer()):  # each pickle of the stream
        opcodes.update(op.name for op, _, _ in pickletools.genops(payload))
    assert "STOP" in opcodes
    assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "BUILD"}


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


def test_a_restart_on_an_unchanged_snapshot_does_not_save_it_again() -> None:
    api, store = FakeOrthancApi(), MemorySnapshots()
    library = ProtocolLibrary(api, Normalization())
    for ds in make_library(3, seed=4):
        library.store(ds)
    feed, _ = make_feed(api, store)
    feed.load()
    assert feed.save_snapshot(force=True) and store.writes == 1
    feed, index = make_feed(api, store)
    feed.load()
    assert feed.restored == 3
    assert not feed.save_snapshot(force=True)  # what Orthanc's stop does
    assert store.writes == 1
    index.put("x", make_protocol(5))
    assert feed.save_snapshot(force=True) and store.writes == 2


def test_unusable_snapshot_means_a_full_rebuild(caplog) -> None:
    api, store = FakeOrthancApi(), MemorySnapshots()
    ProtocolLibrary(api, Normalization()).store(make_protocol(3))
    store.text = "garbage"
    feed, index = make_feed(api, store)
    feed.load()
    assert len(index) == 1 and feed.restored is None
    assert "Index snapshot not used (snapshot unreadable" in caplog.text


def test_a_record_the_index_cannot_take_means_a_full_rebuild(caplog, monkeypatch) -> None:
    api, store = FakeOrthancApi(), MemorySnapshots()
    ProtocolLibrary(api, Normalization()).store(make_protocol(3))
    feed, index = make_feed(api, store)
    feed.load()
    assert feed.save_snapshot(force=True)
    feed, index = make_feed(api, store)

    calls = []

    def broken_once(orthanc_id: str, record: Record) -> str | None:
        calls.append(orthanc_id)
        if len(calls) == 1:  # the snapshot's record
            raise TypeError("unexpected value")
        return ProtocolIndex.put_record(index, orthanc_id, record)

    monkeypatch.setattr(index, "put_record", broken_once)
    feed.load()
    assert feed.ready and feed.restored is None
    assert len(index) == 1
    assert "Index snapshot not used (unexpected value): rebuilding from Orthanc" in caplog.text
