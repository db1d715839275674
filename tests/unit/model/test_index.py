"""The protocol index and its records: correctness against brute force, threads, records."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dpp_tools.samples import make_library, make_protocol
from orthanc_dpp.model import index as index_module
from orthanc_dpp.model import sop
from orthanc_dpp.model.index import Entry, ProtocolIndex
from orthanc_dpp.model.query import Query, compile_query
from orthanc_dpp.model.record import BULK_TEXT, Record
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record
from tests.datasets import build, code

CT, XA, APPROVAL = sop.CT_DPP_STORAGE, sop.XA_DPP_STORAGE, sop.PROTOCOL_APPROVAL_STORAGE
NAMES = ["CT Head", "CT Kopf", "CT Thorax", "XA Coronary", "ct head", "Abdomen", ""]
CODES = [("RPID16", "RADLEX"), ("RPID22", "RADLEX"), ("RPID16", "99LOCAL"), ("X1", "SCT")]
MAKERS = ["ACME", "Acme", "Other Corp", "Nihon 日本"]
DATES = ["20230101", "20240105", "20240131", "20241231"]
TIMES = ["000000", "101500", "235959.5"]
PEOPLE = ["Müller^Hans", "Yamada^Tarou=山田^太郎", "Smith^Anne"]


def protocol(rng: random.Random, number: int) -> Dataset:
    """A small random instance drawn from the pools above."""
    spec: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",
        "SOPClassUID": rng.choice([CT, CT, XA, APPROVAL]),
        "SOPInstanceUID": f"1.2.826.0.1.3680043.8.498.{number}",
    }
    if rng.random() < 0.9:
        spec["ProtocolName"] = rng.choice(NAMES)
    if rng.random() < 0.8:
        spec["EquipmentModality"] = rng.choice(["CT", "XA", "MR"])
    if rng.random() < 0.8:
        spec["InstanceCreationDate"] = rng.choice(DATES)
        spec["InstanceCreationTime"] = rng.choice(TIMES)
    spec["PotentialScheduledProtocolCodeSequence"] = [
        code(v, s, f"{v} meaning") for v, s in rng.sample(CODES, rng.randint(0, 2))
    ]
    spec["ModelSpecificationSequence"] = [
        {"Manufacturer": m, "SoftwareVersions": ["V1", rng.choice(["V2", "V3"])]}
        for m in rng.sample(MAKERS, rng.randint(0, 2))
    ]
    if rng.random() < 0.7:
        spec["ContentCreatorName"] = rng.choice(PEOPLE)
    return build(spec)


POOL = [protocol(random.Random(n), n) for n in range(40)]
UIDS = [ds.SOPInstanceUID for ds in POOL]

# -- identifiers ---------------------------------------------------------------

texts = st.sampled_from(["", "*", "CT*", "*ea*", "?T *", "CT Head", "ct head", "*Kopf", "Abdomen"])
dates = st.sampled_from(
    ["", "20240105", "20240101-20240131", "-20240105", "20240106-", "20230101-20241231"]
)
times = st.sampled_from(["", "101500", "1000-1100", "-1015", "1016-", "0000-2359"])
code_items = st.sampled_from(
    [
        {},
        {"CodeValue": "RPID16"},
        {"CodeValue": "RPID16", "CodingSchemeDesignator": "RADLEX"},
        {"CodeValue": "RP*", "CodingSchemeDesignator": "99LOCAL"},
        {"CodeValue": "", "CodeMeaning": "*22*"},
    ]
)
makers = st.sampled_from(["", "ACME", "acme", "A*", "*日本", "Other Corp"])
people = st.sampled_from(["", "müller*", "山田^太郎", "*^Anne", "Smith^Anne"])
keys = st.fixed_dictionaries(
    {},
    optional={
        "ProtocolName": texts,
        "EquipmentModality": st.sampled_from(["", "CT", "XA", ["MR", "CT"]]),
        "SOPClassUID": st.sampled_from(["", CT, XA, APPROVAL]),
        "SOPInstanceUID": st.lists(st.sampled_from([*UIDS[:8], "1.2.3"]), min_size=1, max_size=3),
        "InstanceCreationDate": dates,
        "InstanceCreationTime": times,
        "PotentialScheduledProtocolCodeSequence": code_items.map(lambda item: [item]),
        "ModelSpecificationSequence": makers.map(lambda m: [{"Manufacturer": m}]),
        "ContentCreatorName": people,
    },
)


def brute_force(index: ProtocolIndex, query: Query) -> list[Entry]:
    return [e for e in index.snapshot() if query.matches(e.record)]


def never() -> bool:
    return False


@pytest.mark.parametrize("scan_fraction", [0, 10**9], ids=["narrowing", "streaming"])
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(members=st.sets(st.integers(0, len(POOL) - 1), max_size=25), spec=keys)
def test_find_equals_brute_force(
    scan_fraction: int, members: set[int], spec: dict[str, Any], monkeypatch_fraction: Any
) -> None:
    monkeypatch_fraction(scan_fraction)
    index = ProtocolIndex()
    for n in sorted(members):
        index.put(f"orthanc-{n}", POOL[n])
    if not spec:
        spec = {"SOPInstanceUID": ""}
    query = compile_query(build(spec))
    assert list(index.find(query, never)) == brute_force(index, query)


@pytest.fixture
def monkeypatch_fraction() -> Any:
    """Set how readily the index scans distinct values (hypothesis-friendly: no function scope)."""
    saved = index_module._SCAN_FRACTION

    def set_fraction(value: int) -> None:
        index_module._SCAN_FRACTION = value

    yield set_fraction
    index_module._SCAN_FRACTION = saved


def test_factory_library_find_equals_brute_force() -> None:
    library = list(make_library(15, seed=7, kinds=("CT", "XA", "APPROVAL")))
    index = ProtocolIndex()
    for n, ds in enumerate(library):
        index.put(f"o{n}", ds)
    dpp = [ds for ds in library if ds.SOPClassUID != APPROVAL]
    first = dpp[0]
    code_value = first.PotentialScheduledProtocolCodeSequence[0].CodeValue
    maker = first.ModelSpecificationSequence[0].Manufacturer
    for spec in [
        {"ProtocolName": first.ProtocolName},
        {"ProtocolName": first.ProtocolName[:3] + "*"},
        {"PotentialScheduledProtocolCodeSequence": [{"CodeValue": code_value}]},
        {"EquipmentModality": "CT", "ModelSpecificationSequence": [{"Manufacturer": maker}]},
        {"SOPInstanceUID": ""},
    ]:
        query = compile_query(build(spec))
        found = list(index.find(query, never))
        assert found == brute_force(index, query)
        assert found and all(e.sop_class_uid != APPROVAL for e in found)
    assert len(list(index.find(compile_query(build({"SOPInstanceUID": ""})), never))) == len(dpp)


@pytest.mark.filterwarnings("ignore:The value length")
def test_index_keys_are_those_of_each_indexed_path() -> None:
    """The keys read in one pass over a record equal those read path by path."""

    def path_by_path(record: Any) -> set[tuple[Any, Any]]:
        found = set()
        for attribute in index_module.INDEXED:
            for value in record.values(attribute) or ():
                if (key := index_module._NORMS[attribute](value)) is not None:
                    found.add((attribute, key))
        for seq, attribute in index_module.INDEXED_ITEMS:
            for item in record.values(seq) or ():
                if isinstance(item, Record):
                    for value in item.values(attribute) or ():
                        if (key := index_module._NORMS[attribute](value)) is not None:
                            found.add(((seq, attribute), key))
        return found

    odd = build({"ProtocolName": "P", "InstitutionName": "I"})
    odd.add_new(0x00080070, "LO", ["Maker A", "Maker B", ""])  # Manufacturer, multi-valued
    odd.add_new(0x00080080, "LO", "x" * (BULK_TEXT + 1))  # Institution Name, too long to keep
    odd.add_new(0x00189912, "LO", "not a sequence")  # Model Specification Sequence, wrong VR
    cache = RecordCache()
    records = [to_record(ds, cache) for ds in [*POOL, odd, *make_library(10, seed=8)]]
    assert any(index_module._index_keys(r) for r in records)
    for record in records:
        assert index_module._index_keys(record) == path_by_path(record)


# -- the interface the adapter and REST routes use --------------------------------


def test_put_get_replace_remove() -> None:
    index = ProtocolIndex()
    for n in range(3):
        index.put(f"o{n}", POOL[n])
    assert len(index) == 3 and index.orthanc_ids() == {"o0", "o1", "o2"}
    assert index.get(UIDS[1]).orthanc_id == "o1"
    assert index.get_by_orthanc_id("o2").sop_instance_uid == UIDS[2]
    index.put("o1", POOL[5])  # the same Orthanc instance, new content
    assert len(index) == 3 and index.get(UIDS[1]) is None
    assert index.get(UIDS[5]).orthanc_id == "o1"
    assert [e.orthanc_id for e in index.page(0, 10)] == ["o0", "o1", "o2"]  # keeps its place
    assert index.remove("o1") is True and index.remove("o1") is False
    assert index.get(UIDS[5]) is None and len(index) == 2
    assert [e.orthanc_id for e in index.page(1, 5)] == ["o2"]
    assert index.page(5, 5) == []


def test_one_sop_instance_uid_one_entry_first_stays() -> None:
    index = ProtocolIndex()
    assert index.put("a", POOL[0]) is None
    assert index.put("b", POOL[0]) == "a"  # b is not indexed: Orthanc keeps first copies
    assert index.get(UIDS[0]).orthanc_id == "a"
    assert index.orthanc_ids() == {"a"} and len(index) == 1


def test_one_sop_instance_uid_one_entry_newest_wins() -> None:
    index = ProtocolIndex(newest_wins=True)
    index.put("a", POOL[0])
    assert index.put("b", POOL[0]) == "a"  # replaced
    assert index.get(UIDS[0]).orthanc_id == "b"
    assert index.orthanc_ids() == {"b"} and len(index) == 1
    assert index.remove("a") is False


def test_counts_and_summary() -> None:
    index = ProtocolIndex()
    for n, ds in enumerate(POOL):
        index.put(f"o{n}", ds)
    counts = index.counts_by_sop_class()
    assert sum(counts.values()) == len(POOL)
    assert counts[APPROVAL] == sum(ds.SOPClassUID == APPROVAL for ds in POOL)
    protocol_ = make_protocol(3, "CT")
    index.put("factory", protocol_)
    summary = index.get_by_orthanc_id("factory").summary()
    json.dumps(summary)
    assert summary["OrthancID"] == "factory"
    assert summary["SOPInstanceUID"] == protocol_.SOPInstanceUID
    assert summary["ProtocolName"] == protocol_.ProtocolName
    assert summary["EquipmentModality"] == "CT"
    first = protocol_.PotentialScheduledProtocolCodeSequence[0]
    assert summary["ScheduledProtocolCodes"][0]["CodeValue"] == first.CodeValue
    assert summary["Manufacturers"] == list(
        dict.fromkeys(m.Manufacturer for m in protocol_.ModelSpecificationSequence)
    )


def test_narrowing_uses_the_value_indexes() -> None:
    index = ProtocolIndex()
    for n in range(2000):
        index.put(f"o{n}", build({"SOPClassUID": CT, "ProtocolName": f"Protocol {n}"}))
    query = compile_query(build({"ProtocolName": "Protocol 7"}))
    assert index._candidates(query) == {7}
    query = compile_query(build({"SOPInstanceUID": "9.9"}))
    assert index._candidates(query) == set()
    query = compile_query(build({"ProtocolName": "Protocol 1*"}))  # too many names to scan
    assert index._candidates(query) is None
    assert len(list(index.find(query, never))) == 1111


class CountingQuery:
    """A query that counts how many records it was asked about."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self.matchers = query.matchers
        self.sop_classes = query.sop_classes
        self.calls = 0

    def matches(self, record: Any) -> bool:
        self.calls += 1
        return self.query.matches(record)


def test_find_streams_and_stops_on_cancel() -> None:
    index = ProtocolIndex()
    for n in range(1000):
        index.put(f"o{n}", build({"SOPClassUID": CT, "ProtocolName": f"P{n}"}))
    counting = CountingQuery(compile_query(build({"ProtocolName": "P*"})))
    results = index.find(counting, never)  # type: ignore[arg-type]
    next(results)
    assert counting.calls == 1  # the first match left before the others were computed
    cancelled = threading.Event()
    counting = CountingQuery(compile_query(build({"ProtocolName": "P*"})))
    found = 0
    for _ in index.find(counting, cancelled.is_set):  # type: ignore[arg-type]
        found += 1
        if found == 10:
            cancelled.set()
    assert found < 10 + index_module._CANCEL_CHECK_EVERY
    assert counting.calls < 10 + index_module._CANCEL_CHECK_EVERY


def test_concurrent_changes_while_finding() -> None:
    index = ProtocolIndex()
    for n, ds in enumerate(POOL):
        index.put(f"o{n}", ds)
    queries = [
        compile_query(build(spec))
        for spec in (
            {"ProtocolName": "CT*"},
            {"PotentialScheduledProtocolCodeSequence": [{"CodeValue": "RPID16"}]},
            {"SOPInstanceUID": UIDS[:10]},
            {"EquipmentModality": "CT", "InstanceCreationDate": "20240101-"},
        )
    ]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                n = rng.randrange(len(POOL))
                if rng.random() < 0.5:
                    index.remove(f"o{n}")
                else:
                    index.put(f"o{n}", POOL[rng.randrange(len(POOL))])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(150):
                for query in queries:
                    for entry in index.find(query, never):
                        assert query.matches(entry.record)
                index.page(0, 10)
                index.counts_by_sop_class()
                index.orthanc_ids()
                index.get(UIDS[0])
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(s,)) for s in range(2)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    assert errors == []
    # Consistent afterwards: the secondary indexes agree with a fresh brute force.
    for query in queries:
        assert list(index.find(query, never)) == brute_force(index, query)
