"""Records: compact, immutable copies of a protocol's public attributes
(orthanc_dpp.model.record)."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from dpp_tools.samples import CHARSETS, TRANSFER_SYNTAXES, make_protocol, to_bytes
from orthanc_dpp.model import sop
from orthanc_dpp.model.record import BULK_BYTES, BULK_TEXT
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record
from tests.datasets import build

CT = sop.CT_DPP_STORAGE


@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES)
def test_records_read_from_bytes_equal_records_of_datasets(
    charset: str, syntax: str, records: RecordCache
) -> None:
    ds = make_protocol(11, "CT", charset=charset)
    from_bytes = to_record(dcmread(io.BytesIO(to_bytes(ds, syntax))), records)
    assert from_bytes == to_record(ds, records)


def test_records_keep_public_attributes_only(records: RecordCache) -> None:
    ds = build({"SOPClassUID": CT, "ProtocolName": "P", "SelectorOBValue": b"\x00" * 8})
    ds.add_new(0x00091010, "LO", "private")
    ds.add_new(0x00080000, "UL", 42)  # group length
    ds.add_new(0x7FE00010, "OB", b"\x00" * (BULK_BYTES + 2))
    ds.add_new(0x00324000, "LT", "x" * (BULK_TEXT + 1))  # Study Comments
    record = to_record(ds, records)
    assert 0x00091010 not in record and 0x00080000 not in record
    assert record.get(0x7FE00010).values is None and record.get(0x00324000).values is None
    assert record.values(0x00720065) == (b"\x00" * 8,)
    assert to_record(record.to_dataset(), records).values(0x00181030) == ("P",)


def test_identical_items_are_shared_between_records(records: RecordCache) -> None:
    a, b = to_record(make_protocol(1, "CT"), records), to_record(make_protocol(1, "CT"), records)
    assert a == b and a is not b
    items_a = a.values(0x00189912) or ()
    items_b = b.values(0x00189912) or ()
    assert all(x is y for x, y in zip(items_a, items_b, strict=True))
    plus_zero = to_record(
        build({"ModelSpecificationSequence": [{"SelectorFDValue": 0.0}]}), records
    ).values(0x00189912)
    minus_zero = to_record(
        build({"ModelSpecificationSequence": [{"SelectorFDValue": -0.0}]}), records
    ).values(0x00189912)
    assert plus_zero and minus_zero and plus_zero[0] is not minus_zero[0]
    assert str(minus_zero[0].first(0x00720074)) == "-0.0"  # kept exactly, not shared


def test_sequence_cache_is_bounded_in_bytes(monkeypatch, records: RecordCache) -> None:
    from orthanc_dpp.model import record_cache

    monkeypatch.setattr(record_cache, "SEQUENCE_CACHE_BYTES", 64 << 10)
    for seed in range(60):  # read from bytes: sequences still encoded, as from Orthanc
        to_record(
            dcmread(io.BytesIO(to_bytes(make_protocol(seed, "CT", target_size=20_000)))), records
        )
    assert 0 < records.sequence_bytes <= 64 << 10
