"""Records read from stored files equal those of the general way
(orthanc_dpp.storage.stored_record).

The index's start-up reads every stored protocol with ``fast_record``; C-FIND
must answer exactly as if each had been read with pydicom, normalization
undone (``full_record``, the previous loader). So every sample below is
compared record for record, and the fast reader must actually be used for
the usual files (or the start-up would silently be as slow as before).
"""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dpp_tools.samples import (
    CHARSETS,
    TRANSFER_SYNTAXES,
    make_library,
    make_non_dpp,
    make_protocol,
    to_bytes,
)
from orthanc_dpp.model import normalization, record, record_cache
from orthanc_dpp.model.key_table import tag
from orthanc_dpp.model.normalization import RECORD_CREATOR
from orthanc_dpp.model.record import BULK_BYTES, BULK_TEXT
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import UnreadableBytes
from orthanc_dpp.storage.stored_record import fast_record, full_record, original_record
from tests.datasets import LABELS, stored

READABLE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)


def same_record(data: bytes, *, fast: bool) -> None:
    """Both readers agree on ``data``; ``fast``: the fast reader did read it."""
    cache = RecordCache()
    expected = full_record(data, cache)
    if fast:
        assert fast_record(data, cache) == expected
    assert original_record(data, cache) == expected


def test_a_library_of_protocols_and_approvals_reads_the_same() -> None:
    kinds = ("CT", "XA", "APPROVAL")
    for ds in make_library(60, seed=300, kinds=kinds):
        same_record(stored(ds), fast=True)


@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("syntax", TRANSFER_SYNTAXES)
def test_every_character_set_and_transfer_syntax(
    charset: str, syntax: str, records: RecordCache
) -> None:
    """Little endian files are read fast; Deflated and big endian ones by pydicom, equally."""
    data = stored(make_protocol(12, "XA", charset=charset, target_size=30_000), syntax)
    same_record(data, fast=syntax in READABLE)
    if syntax not in READABLE:
        with pytest.raises(UnreadableBytes):
            fast_record(data, records)


def test_normalization_is_undone_added_removed_and_filled_emptied(records: RecordCache) -> None:
    ds = make_protocol(3, "CT")
    ds.PatientID = ""  # present but empty: normalize fills it, reverse empties it again
    ds.StudyInstanceUID = "1.2.3.4"  # present: kept as it is
    data = stored(ds)
    got = fast_record(data, records)
    assert got == full_record(data, records)
    assert got.get(tag("PatientID")) == record.Element("LO", ())
    assert got.values(tag("StudyInstanceUID")) == ("1.2.3.4",)
    assert tag("SeriesInstanceUID") not in got and tag("PatientName") not in got
    assert normalization.has_record(normalization.normalize(make_protocol(3, "CT"), LABELS).dataset)


@pytest.mark.parametrize(
    "filled",
    [
        "00100020",  # Patient ID, filled and also added: not in the record once added ones go
        "00181030",  # Protocol Name, absent
        "00080081",  # Institution Address, absent (before Referring Physician's Name, text)
        "00280106",  # Smallest Image Pixel Value: US, not text
        "00080090",  # Referring Physician's Name: text, present
    ],
)
@pytest.mark.filterwarnings("ignore:A value of type 'str' cannot be assigned")
def test_a_normalization_record_naming_other_attributes_reads_the_same(
    filled: str, records: RecordCache
) -> None:
    """Whatever the Filled list names, both readers agree; the fast one gives up unless it
    names present text attributes (which it empties as normalization.reverse does)."""
    ds = make_protocol(9, "CT")
    del ds.ProtocolName
    ds.ReferringPhysicianName = "Who^Ever"
    assert 0x00080081 not in ds
    ds.add_new(0x00280106, "US", 7)
    result = normalization.normalize(ds, LABELS)
    creator = next(e.tag for e in ds if e.tag.group == 0x0099 and e.value == RECORD_CREATOR)
    ds.add_new((creator & 0xFFFF0000) | ((creator & 0xFF) << 8) | 0x02, "LT", filled)
    data = to_bytes(ds)
    assert tag("PatientID") in result.added
    readable = filled == "00080090"
    if not readable:
        assert isinstance(full_record(data, records), record.Record)
        with pytest.raises(UnreadableBytes):
            fast_record(data, records)
    same_record(data, fast=readable)
    if readable:
        got = fast_record(data, records)
        assert got.get(tag("ReferringPhysicianName")) == record.Element("PN", ())
        assert tag("PatientID") not in got and got.values(0x00280106) == (7,)


def test_files_stored_untouched_and_other_vendors_private_blocks(records: RecordCache) -> None:
    """An instance with its own patient/study/series has no normalization record to undo;
    private blocks (ours at another offset, another vendor's in our group) are left out."""
    untouched = make_protocol(4, "CT")
    untouched.PatientID, untouched.StudyInstanceUID, untouched.SeriesInstanceUID = "P", "1.2", "1.3"
    untouched.private_block(0x0099, "VENDOR X", create=True).add_new(0x01, "LO", "kept")
    data = to_bytes(untouched)
    same_record(data, fast=True)
    assert fast_record(data, records).values(tag("PatientID")) == ("P",)

    moved = make_protocol(5, "XA")  # another vendor took 0099,0010: ours goes to 0099,0011
    moved.private_block(0x0099, "OTHER VENDOR", create=True).add_new(0x01, "LO", "v")
    moved.add_new(0x00091010, "LO", "private element of another group")
    data = stored(moved, ImplicitVRLittleEndian)
    same_record(data, fast=True)
    assert tag("PatientID") not in fast_record(data, records)


def test_odd_values_bulk_empty_and_ambiguous(records: RecordCache) -> None:
    ds = make_protocol(6, "CT")
    ds.add_new(0x00324000, "LT", "x" * (BULK_TEXT + 1))  # too long to keep
    ds.add_new(0x00720065, "OB", b"\x01" * (BULK_BYTES + 1))  # Selector OB Value
    ds.add_new(0x00081030, "LO", None)  # Study Description, empty
    ds.add_new(0x00280106, "US", 7)  # Smallest Image Pixel Value: US or SS
    same_record(stored(ds, ExplicitVRLittleEndian), fast=True)
    same_record(stored(make_protocol(6, "CT"), ExplicitVRLittleEndian), fast=True)
    implicit = make_protocol(7, "CT")
    implicit.add_new(0x00280106, "US", 7)  # ambiguous without a VR in the file: pydicom reads it
    data = stored(implicit, ImplicitVRLittleEndian)
    same_record(data, fast=False)
    with pytest.raises(UnreadableBytes):
        fast_record(data, records)


def test_damaged_files_fail_as_before(records: RecordCache) -> None:
    data = stored(make_protocol(8, "CT"))
    with pytest.raises(UnreadableBytes):
        fast_record(data[:-7], records)  # truncated: left to pydicom, which reads it short
    assert original_record(data[:-7], records) == full_record(data[:-7], records)
    for broken in (b"", b"\x00" * 128 + b"DICX" + data[132:]):
        with pytest.raises(Exception) as fast_error:
            original_record(broken, records)
        with pytest.raises(type(fast_error.value)):
            full_record(broken, records)


def test_non_dpp_instance_reads_the_same() -> None:
    same_record(to_bytes(make_non_dpp(2)), fast=True)


def test_bulk_reading_remembers_small_sequences_then_trims_back(
    monkeypatch, records: RecordCache
) -> None:
    monkeypatch.setattr(record_cache, "SEQUENCE_CACHE_BYTES", 4 << 10)
    files = [stored(ds) for ds in make_library(20, seed=900)]
    with records.bulk_reading():
        for data in files:
            fast_record(data, records)
        during = records.sequence_bytes
        assert any(len(key[0]) < 512 for key in records._sequence_cache)
    assert during > 4 << 10 >= records.sequence_bytes
