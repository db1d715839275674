"""The protocols' usage: what a performed instance references, counts, last use, and its store."""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from orthanc_dpp.model import usage
from orthanc_dpp.model.usage import Performed, ProtocolUsage, UsageSnapshotError, performed
from tests.datasets import build, make_performed


def test_a_performed_instance_names_its_defined_protocols_and_start() -> None:
    ds = make_performed(1, ["1.2.3", "1.2.4", "1.2.3"], date="20240305", time="101500.250")
    assert performed(ds) == Performed(("1.2.3", "1.2.4"), "20240305101500")


@pytest.mark.parametrize(
    ("spec", "when"),
    [
        ({"SeriesDate": "20240102", "SeriesTime": "0930", "StudyDate": "20240101"}, "202401020930"),
        ({"StudyDate": "20240101", "ContentDate": "20240303"}, "20240101"),
        ({"ContentDate": "20240303", "ContentTime": "121212"}, "20240303121212"),
        ({"InstanceCreationDate": "20240404"}, "20240404"),
        ({"StudyTime": "101010"}, ""),
    ],
)
def test_without_a_start_date_the_next_date_is_taken(spec: dict[str, str], when: str) -> None:
    ds = build({"ReferencedDefinedProtocolSequence": [{"ReferencedSOPInstanceUID": "1.2"}], **spec})
    assert performed(ds) == Performed(("1.2",), when)


def test_no_reference_counts_nothing() -> None:
    assert performed(build({"StudyDate": "20240101"})) == Performed((), "20240101")


def test_counts_and_last_use_follow_additions_and_deletions() -> None:
    counted = ProtocolUsage()
    assert counted.of("A") == {"Count": 0, "LastUsed": None}
    counted.add("p1", Performed(("A", "B"), "20240101100000"))
    counted.add("p2", Performed(("A",), "20240301090000"))
    counted.add("p3", Performed(("A",), "20240201"))
    assert counted.of("A") == {"Count": 3, "LastUsed": "20240301090000"}
    assert counted.of("B") == {"Count": 1, "LastUsed": "20240101100000"}
    assert counted.remove("p2")  # the latest use: the next latest takes its place
    assert counted.of("A") == {"Count": 2, "LastUsed": "20240201"}
    assert not counted.remove("p2")
    assert counted.remove("p1")
    assert counted.of("B") == {"Count": 0, "LastUsed": None}
    assert counted.orthanc_ids() == {"p3"} and len(counted) == 1


def test_an_instance_counted_again_replaces_what_it_counted() -> None:
    counted = ProtocolUsage()
    counted.add("p1", Performed(("A",), "20240101"))
    version = counted.version
    counted.add("p1", Performed(("B",), "20240102"))
    assert counted.of("A")["Count"] == 0 and counted.of("B")["Count"] == 1
    assert counted.version > version


def test_the_store_round_trip_keeps_every_count() -> None:
    counted = ProtocolUsage()
    counted.add("p1", Performed(("A", "B"), "20240101"))
    counted.add("p2", Performed(("A",), ""))
    rows, seq = usage.load(usage.dump(counted.rows(), 42))
    restored = ProtocolUsage()
    restored.load(rows)
    assert seq == 42
    assert restored.of("A") == {"Count": 2, "LastUsed": "20240101"}
    assert restored.rows() == counted.rows()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no usage stored yet"),
        ("garbage!", "usage unreadable"),
    ],
)
def test_an_unusable_store_is_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(UsageSnapshotError, match=reason):
        usage.load(text)


def packed(data: object) -> str:
    return base64.b64encode(zlib.compress(json.dumps(data).encode())).decode()


def test_a_malformed_row_or_header_is_refused() -> None:
    with pytest.raises(UsageSnapshotError, match="not the usage"):
        usage.load(packed({"Magic": "other"}))
    with pytest.raises(UsageSnapshotError, match="header is malformed"):
        usage.load(packed({"Magic": usage.MAGIC, "LastChange": -1, "Rows": []}))
    with pytest.raises(UsageSnapshotError, match="row 1 is malformed"):
        bad = [["p1", ["A"], ""], ["p2", "A", ""]]
        usage.load(packed({"Magic": usage.MAGIC, "LastChange": 3, "Rows": bad}))
