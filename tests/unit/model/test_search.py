"""``model.search`` against a brute-force reference: same entries, same order, same totals.

The search reads keys worked out once per entry (``Entry.search_keys``); the
reference below walks each record as the search did before, so any
difference in what either finds fails here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpp_tools.samples import make_library
from orthanc_dpp.model import sop
from orthanc_dpp.model.index import CODE_SEQUENCES, Entry, ProtocolIndex
from orthanc_dpp.model.key_table import tag
from orthanc_dpp.model.record import Record
from orthanc_dpp.model.search import PARAMETERS, ProtocolSearch, SearchError, prepare, search
from tests.datasets import build

_CODE_FIELDS = ("CodeValue", "LongCodeValue", "CodeMeaning")
_SEQUENCE_KEYWORDS = (
    "PotentialScheduledProtocolCodeSequence",
    "PotentialRequestedProcedureCodeSequence",
    "PotentialReasonsForProcedureCodeSequence",
    "ResponsibleGroupCodeSequence",
    "AnatomicRegionSequence",
    "PrimaryAnatomicStructureSequence",
)
#: Pieces of text that differ only in case, spacing or case folding (ß/SS, İ/i).
_WORDS = ("Head", "HEAD", "Straße", "STRASSE", "İ", "i", " ct ", "x")
_DATES = ("20240101", "20240615", "20251231", " 20240615 ", "")


def _texts(record: Record, keyword: str) -> list[str]:
    return [str(v) for v in record.values(tag(keyword)) or () if v is not None]


def _items(record: Record, keyword: str) -> list[Record]:
    return [i for i in record.values(tag(keyword)) or () if isinstance(i, Record)]


def _holds(needle: str, values: Iterable[str]) -> bool:
    return any(needle in value.casefold() for value in values)


def reference(criteria: ProtocolSearch, entry: Entry) -> bool:
    """The search's rules read straight from the record, every time."""
    r = entry.record
    models = _items(r, "ModelSpecificationSequence")
    checks: list[tuple[str | None, Any]] = [
        (criteria.name, lambda n: _holds(n, _texts(r, "ProtocolName"))),
        (
            criteria.modality,
            lambda m: m in [v.strip().casefold() for v in _texts(r, "EquipmentModality")],
        ),
        (
            criteria.manufacturer,
            lambda m: _holds(
                m,
                _texts(r, "Manufacturer") + [v for i in models for v in _texts(i, "Manufacturer")],
            ),
        ),
        (
            criteria.model,
            lambda m: _holds(
                m,
                _texts(r, "ManufacturerModelName")
                + [v for i in models for v in _texts(i, "ManufacturerModelName")],
            ),
        ),
        (
            criteria.code,
            lambda c: _holds(
                c,
                [
                    v
                    for sequence in CODE_SEQUENCES
                    for item in r.values(sequence) or ()
                    if isinstance(item, Record)
                    for field in _CODE_FIELDS
                    for v in _texts(item, field)
                ],
            ),
        ),
    ]
    if any(wanted is not None and not check(wanted) for wanted, check in checks):
        return False
    if criteria.date_from is None and criteria.date_to is None:
        return True
    date = (_texts(r, "InstanceCreationDate") or [""])[0].strip()
    return bool(date) and (criteria.date_from or date) <= date <= (criteria.date_to or date)


def assert_same(index: ProtocolIndex, criteria: ProtocolSearch, offset: int, limit: int) -> int:
    matching = [e for e in index.snapshot() if reference(criteria, e)]
    for _ in range(2):  # the first search works the keys out, the second reads them
        total, page = search(index, criteria, offset, limit)
        assert total == len(matching)
        assert [e.orthanc_id for e in page] == [
            e.orthanc_id for e in matching[offset : offset + limit]
        ]
    return total


_words = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=2).map("".join)
_codes = st.lists(
    st.fixed_dictionaries({}, optional={field: _words for field in _CODE_FIELDS}), max_size=2
)


@st.composite
def _protocol(draw: st.DrawFn, number: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "SOPClassUID": sop.CT_DPP_STORAGE,
        "SOPInstanceUID": f"1.2.826.0.1.3680043.8.498.77.{number}",
    }
    for keyword in ("ProtocolName", "EquipmentModality", "Manufacturer", "ManufacturerModelName"):
        if draw(st.booleans()):
            spec[keyword] = draw(_words)
    date = draw(st.sampled_from((None, *_DATES)))
    if date is not None:
        spec["InstanceCreationDate"] = date
    models = draw(
        st.lists(
            st.fixed_dictionaries(
                {}, optional={"Manufacturer": _words, "ManufacturerModelName": _words}
            ),
            max_size=2,
        )
    )
    if models:
        spec["ModelSpecificationSequence"] = models
    for keyword in _SEQUENCE_KEYWORDS:
        items = draw(_codes)
        if items:
            spec[keyword] = items
    return spec


@st.composite
def _library(draw: st.DrawFn) -> ProtocolIndex:
    index = ProtocolIndex()
    for number in range(draw(st.integers(0, 12))):
        index.put(f"o{number}", build(draw(_protocol(number))))
    return index


_date_query = st.sampled_from(
    ("20240101", "20240615", "20240101-20241231", "-20240615", "20240615-", "20250101-20251231")
)
_query = st.fixed_dictionaries(
    {},
    optional={
        "name": _words,
        "modality": st.sampled_from(("CT", "ct", " CT ", "MR", "x")),
        "manufacturer": _words,
        "model": _words,
        "code": _words,
        "date": _date_query,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_library(), _query, st.integers(0, 5), st.integers(1, 5))
def test_every_parameter_finds_what_a_brute_force_filter_finds(
    index: ProtocolIndex, query: dict[str, str], offset: int, limit: int
) -> None:
    assert_same(index, ProtocolSearch.from_query(query), offset, limit)


def test_a_generated_library_gives_the_brute_force_answers_for_each_parameter() -> None:
    index = ProtocolIndex()
    for number, ds in enumerate(make_library(40, kinds=("CT", "XA", "APPROVAL"))):
        index.put(f"o{number}", ds)
    found: dict[str, int] = {}
    queries = [
        {"name": "head"},
        {"name": "HEAD"},
        {"modality": "ct"},
        {"modality": "XA"},
        {"manufacturer": "siemens"},
        {"model": "a"},
        {"code": "rpid"},
        {"code": "RPID22"},
        {"date": "19000101-"},
        {"modality": "CT", "code": "rpid", "name": "a"},
    ]
    for query in queries:
        for offset, limit in ((0, 100), (3, 4)):
            found[str(query)] = assert_same(index, ProtocolSearch.from_query(query), offset, limit)
    assert set(PARAMETERS) == {key for query in queries for key in query}
    # the library gives the reference something to find and something to leave out
    assert any(0 < total < len(index) for total in found.values())


@pytest.mark.parametrize(
    ("stored", "query"),
    [
        ({"ProtocolName": "Straße"}, {"name": "STRASSE"}),
        ({"ProtocolName": "İ"}, {"name": "i̇"}),
        ({"EquipmentModality": "ct "}, {"modality": " CT"}),
        ({"ModelSpecificationSequence": [{"Manufacturer": "ACME"}]}, {"manufacturer": "acme"}),
        ({"ModelSpecificationSequence": [{"ManufacturerModelName": "Z9"}]}, {"model": "z"}),
        ({"AnatomicRegionSequence": [{"LongCodeValue": "LONGCODE"}]}, {"code": "gco"}),
        ({"ResponsibleGroupCodeSequence": [{"CodeMeaning": "Neuro"}]}, {"code": "NEURO"}),
        ({"InstanceCreationDate": "20240615"}, {"date": "20240601-20240630"}),
    ],
)
def test_each_parameter_finds_a_value_written_differently(
    stored: dict[str, Any], query: dict[str, str]
) -> None:
    index = ProtocolIndex()
    spec = {"SOPClassUID": sop.CT_DPP_STORAGE, "SOPInstanceUID": "1.2.3.4"}
    index.put("o1", build({**spec, **stored}))
    index.put("o2", build({**spec, "SOPInstanceUID": "1.2.3.5"}))
    assert assert_same(index, ProtocolSearch.from_query(query), 0, 10) == 1


def test_a_replaced_entry_is_searched_by_its_new_content() -> None:
    index = ProtocolIndex()
    spec = {"SOPClassUID": sop.CT_DPP_STORAGE, "SOPInstanceUID": "1.2.3.4"}
    index.put("o1", build({**spec, "ProtocolName": "Head"}))
    assert search(index, ProtocolSearch(name="head"), 0, 10)[0] == 1
    index.put("o1", build({**spec, "ProtocolName": "Chest"}))
    assert search(index, ProtocolSearch(name="head"), 0, 10)[0] == 0
    assert search(index, ProtocolSearch(name="chest"), 0, 10)[0] == 1


def test_prepared_keys_give_the_same_answers_and_a_stop_ends_preparing() -> None:
    index = ProtocolIndex()
    for number, ds in enumerate(make_library(30, kinds=("CT", "XA", "APPROVAL"))):
        index.put(f"o{number}", ds)
    asked = []
    assert prepare(index, lambda: asked.append(1) or True) == 0  # stopping at once
    assert asked and all(entry.search_keys is None for entry in index.snapshot())
    assert prepare(index) == len(index)
    assert all(entry.search_keys is not None for entry in index.snapshot())
    assert prepare(index) == 0  # nothing left to prepare
    for query in ({"name": "head"}, {"code": "rpid"}, {"modality": "XA", "date": "19000101-"}):
        assert_same(index, ProtocolSearch.from_query(query), 0, 100)


def test_errors_are_unchanged() -> None:
    with pytest.raises(SearchError) as raised:
        ProtocolSearch.from_query({"date": "20241301"})
    assert raised.value.parameter == "date"
