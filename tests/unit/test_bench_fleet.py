"""The fleet benchmark's library: chains, approvals and performed instances the plugin counts."""

from __future__ import annotations

import io
from collections import Counter

import pydicom

from bench.fleet_bench import (
    CHAIN,
    approval_of,
    instance_count,
    performed_dataset,
    predecessor,
    references,
    requests,
)
from dpp_tools.samples import to_bytes
from orthanc_dpp.model.usage import CT_PERFORMED, KEYWORDS, XA_PERFORMED, performed

CT_DEFINED = "1.2.840.10008.5.1.4.1.1.200.1"


def test_protocols_form_chains_each_naming_the_one_before() -> None:
    chains = [[0]]
    for position in range(1, 3 * CHAIN):
        before = predecessor(position)
        if before is None:
            chains.append([position])
        else:
            assert before == chains[-1][-1]
            chains[-1].append(position)
    assert chains == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_one_protocol_in_ten_is_approved_or_rejected_in_turn() -> None:
    made = [approval_of(p) for p in range(40)]
    assert [p for p, a in enumerate(made) if a] == [0, 10, 20, 30]
    assert [made[0], made[10], made[20], made[30]] == ["approved", "rejected"] * 2


def test_enough_instances_for_the_references_asked() -> None:
    assert instance_count(1_000_000) == 10_000
    assert instance_count(101, 100) == 2
    assert instance_count(0) == 0


def test_references_are_distinct_in_range_deterministic_and_skewed() -> None:
    picked = references(7, 1000, 100)
    assert len(picked) == len(set(picked)) == 100
    assert all(0 <= p < 1000 for p in picked)
    assert picked == references(7, 1000, 100)
    assert picked != references(8, 1000, 100)
    uses = Counter(p for n in range(200) for p in references(n, 1000, 100))
    first = sum(uses[p] for p in range(100))
    last = sum(uses[p] for p in range(900, 1000))
    assert first > 5 * last  # a few protocols are performed much more than the rest
    assert sorted(references(1, 5, 100)) == [0, 1, 2, 3, 4]  # never more than the library


def test_performed_instance_is_counted_by_the_plugins_own_reader() -> None:
    used = [(CT_DEFINED, f"2.25.{n}") for n in range(1, 4)]
    for number, sop_class in ((4, CT_PERFORMED), (5, XA_PERFORMED)):
        data = to_bytes(performed_dataset(number, used))
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=["SOPClassUID", *KEYWORDS])
        assert ds.SOPClassUID == sop_class
        found = performed(ds)
        assert found.defined == ("2.25.1", "2.25.2", "2.25.3")
        assert found.when == ("20260201070400" if number == 4 else "20260201070500")
        full = pydicom.dcmread(io.BytesIO(data))
        assert full.PatientID and full.StudyInstanceUID and full.SeriesInstanceUID  # Orthanc needs
    assert performed_dataset(4, used).SOPInstanceUID == performed_dataset(4, used).SOPInstanceUID
    assert performed_dataset(4, used).SOPInstanceUID != performed_dataset(6, used).SOPInstanceUID


def test_requests_take_diff_pairs_within_one_chain() -> None:
    library = [(CT_DEFINED, f"2.25.{n}") for n in range(1, 301)]
    asked = requests(library)
    diffs = asked["/diff (v1 against v2)"][0]
    assert diffs
    for path in diffs:
        a, b = path.removeprefix("/dpp/protocols/").split("/diff/")
        first = int(a.removeprefix("2.25.")) - 1
        assert predecessor(first) is None and int(b.removeprefix("2.25.")) - 1 == first + 1
    assert asked["GET /dpp/protocols/{uid} (baseline)"][1] is None
    assert {target for _, target in asked.values()} == {None, 50.0, 200.0}
