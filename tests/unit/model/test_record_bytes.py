"""Records read straight from encoded bytes during a start-up (orthanc_dpp.model.record_reading).

A start without a snapshot reads every stored protocol under
``RecordCache.bulk_reading``, which remembers items by their bytes (each test
has a cache of its own: nothing remembered from earlier tests). The records
must be exactly those read without it: same values, same sharing of
items, and the same failures for damaged bytes.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest

from dpp_tools.samples import make_library
from orthanc_dpp.model import record, record_reading
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.storage.stored_record import fast_record, full_record
from tests.datasets import stored

CODE_SEQUENCE = 0x00400260  # Performed Protocol Code Sequence
ITEM_START, SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element of defined length (short header)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def item(content: bytes, length: int | None = None) -> bytes:
    return ITEM_START + struct.pack("<I", len(content) if length is None else length) + content


def dataset(*items: bytes, defined: bool = False) -> bytes:
    """A dataset with one sequence holding ``items``, of undefined length unless ``defined``."""
    content = b"".join(items)
    length = len(content) if defined else 0xFFFFFFFF
    header = struct.pack("<HH2sHI", CODE_SEQUENCE >> 16, CODE_SEQUENCE & 0xFFFF, b"SQ", 0, length)
    return header + content + (b"" if defined else SEQUENCE_END)


def outcome(read: Callable[[], Any]) -> Any:
    """What ``read`` returns, or the type of what it raises."""
    try:
        return read()
    except Exception as exc:
        return type(exc)


def read(data: bytes, cache: RecordCache) -> record.Record:
    return record_reading.read_dataset(data, 0, False, cache)[0]


def test_a_library_read_in_bulk_equals_its_general_reading_with_fewer_item_reads(
    monkeypatch: pytest.MonkeyPatch, records: RecordCache
) -> None:
    files = [stored(ds) for ds in make_library(40, seed=901)]
    expected = [full_record(data, records) for data in files]
    reads = 0
    read_item = record_reading._read_item

    def counted(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return read_item(*args)

    monkeypatch.setattr(record_reading, "_read_item", counted)
    with records.bulk_reading():
        assert [fast_record(data, records) for data in files] == expected
        assert records._item_cache
    assert not records._item_cache and records._item_cache_bytes == 0  # dropped after the load
    remembering = reads

    reads = 0
    # remembers nothing:
    monkeypatch.setattr(record_reading, "_bulk_item", lambda *args: counted(*args))
    monkeypatch.setattr(records, "_sequence_cache", OrderedDict())
    monkeypatch.setattr(records, "_cache_bytes", 0)
    with records.bulk_reading():
        assert [fast_record(data, records) for data in files] == expected
    assert remembering < 0.8 * reads


def test_identical_items_are_one_object_except_nan_and_negative_zero(records: RecordCache) -> None:
    """As without bulk reading: NaN and -0.0 items are never shared (they compare equal to
    others), so remembering them by their bytes would change what records compare equal."""
    code = item(element(0x00080100, b"SH", b"CODE"))
    nan = item(element(0x00720074, b"FD", struct.pack("<d", float("nan"))))
    minus_zero = item(element(0x00720076, b"FL", struct.pack("<f", -0.0)))  # Selector FL Value
    first, second = dataset(code, nan, minus_zero), dataset(nan, minus_zero, code, item(b""))
    outside = (read(first, records), read(second, records))
    with records.bulk_reading():
        inside = (read(first, records), read(second, records))
    for a, b in (outside, inside):
        items_a, items_b = a.values(CODE_SEQUENCE) or (), b.values(CODE_SEQUENCE) or ()
        assert items_a[0] is items_b[2]
        assert items_a[1] is not items_b[0] and items_a[2] is not items_b[1]
        assert str(items_a[2].first(0x00720076)) == "-0.0"
    assert (outside[0] == outside[1]) == (inside[0] == inside[1])


def test_an_item_cut_short_by_the_end_of_its_sequence_fails_as_without_bulk_reading(
    records: RecordCache,
) -> None:
    content = element(0x00080100, b"SH", b"CODE")
    whole = item(content)
    data = dataset(item(content, len(content) + 8), defined=True)  # 8 bytes more than there are
    assert outcome(lambda: read(data, records)) is record_reading.UnreadableBytes
    with records.bulk_reading():
        read(dataset(whole), records)  # remembers the item's bytes
        assert records._item_cache
        assert outcome(lambda: read(data, records)) is record_reading.UnreadableBytes


def test_an_item_whose_value_runs_past_its_end_reads_as_without_bulk_reading(
    records: RecordCache,
) -> None:
    """A value longer than its item takes bytes after the item, so the same item bytes
    read differently in another sequence: such an item is not remembered."""
    overrun = item(struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 8) + b"CODE")
    first = dataset(overrun)[:-8] + b"WXYZ" + SEQUENCE_END
    second = dataset(overrun)[:-8] + b"QRST" + SEQUENCE_END
    expected = [outcome(lambda data=data: read(data, records)) for data in (first, second)]
    assert expected[0].values(CODE_SEQUENCE)[0].first(0x00080100) == "CODEWXYZ"
    assert expected[1].values(CODE_SEQUENCE)[0].first(0x00080100) == "CODEQRST"
    with records.bulk_reading():
        assert [
            outcome(lambda data=data: read(data, records)) for data in (first, second)
        ] == expected


def test_the_same_item_bytes_decode_with_each_inherited_character_set(records: RecordCache) -> None:
    name = item(element(0x00080104, b"LO", "Kopf über".encode()))  # Code Meaning, UTF-8 bytes
    utf8, latin1 = (
        element(0x00080005, b"CS", term) + dataset(name) for term in (b"ISO_IR 192", b"ISO_IR 100")
    )
    outside = [
        read(data, records).values(CODE_SEQUENCE)[0].first(0x00080104) for data in (utf8, latin1)
    ]
    assert outside == ["Kopf über", "Kopf Ã¼ber"]
    with records.bulk_reading():
        inside = [
            read(data, records).values(CODE_SEQUENCE)[0].first(0x00080104)
            for data in (utf8, latin1)
        ]
    assert inside == outside


def test_unknown_and_unreadable_value_representations(records: RecordCache) -> None:
    """A VR the standard lacks is kept as too large to keep (its value cannot be read);
    VR bytes that are not ASCII make the file unreadable here (pydicom then reads it)."""
    unknown = element(0x00081030, b"XX", b"abcd") + element(0x00181030, b"LO", b"P")
    got = read(unknown, records)
    assert got.get(0x00081030) == record.Element("XX", None)
    assert got.values(0x00181030) == ("P",)
    with pytest.raises(record_reading.UnreadableBytes):
        read(element(0x00081030, b"\xc3\xa9", b"abcd"), records)
