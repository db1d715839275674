"""Index records straight from the Part 10 files Orthanc stores.

A start without an index snapshot reads every stored protocol. The general
way (``dcmread``, :func:`normalization.reverse`, :func:`record_reading.to_record`) spent
about half of its time in pydicom building Dataset objects that are thrown
away at once. :func:`original_record` reads the file's bytes directly
(:func:`record_reading.read_parts`) and undoes the normalization on the record,
giving the same record; anything that reader does not handle exactly as
pydicom would (another transfer syntax, ISO 2022 character sets, damaged
files...) goes the general way, so the answer never depends on the path.
"""

from __future__ import annotations

import io
import struct
from bisect import bisect_left
from typing import Any, Final

import pydicom

from orthanc_dpp.model import normalization
from orthanc_dpp.model.normalization import RECORD_CREATOR, RECORD_GROUP
from orthanc_dpp.model.record import TEXT, Record
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import UnreadableBytes, read_parts, to_record

IMPLICIT_LITTLE: Final = "1.2.840.10008.1.2"
EXPLICIT_LITTLE: Final = "1.2.840.10008.1.2.1"
TRANSFER_SYNTAX_UID: Final = 0x00020010
_LONG_HEADER: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN"}
)
_META_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
_ADDED: Final = 0x01  # element of the normalization record (normalization.py) listing added tags
_FILLED: Final = 0x02  # ... and filled ones


def original_record(data: bytes, cache: RecordCache) -> Record:
    """The record of the protocol as received, from the file Orthanc stores.

    Built with ``cache`` (the index's). Raises what ``dcmread`` raises for a
    file neither reader can read.
    """
    try:
        return fast_record(data, cache)
    except UnreadableBytes:
        return full_record(data, cache)


def full_record(data: bytes, cache: RecordCache) -> Record:
    """The general way: pydicom's Dataset, normalization undone, then its record."""
    return to_record(normalization.reverse(pydicom.dcmread(io.BytesIO(data))), cache)


def fast_record(data: bytes, cache: RecordCache) -> Record:
    """:func:`full_record` without pydicom; :class:`UnreadableBytes` when it cannot."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise UnreadableBytes("no DICM prefix")
    pos, syntax = _file_meta(data)
    if syntax == EXPLICIT_LITTLE:
        implicit = False
    elif syntax == IMPLICIT_LITTLE:
        implicit = True
    else:
        raise UnreadableBytes(f"transfer syntax {syntax}")
    if pos + 6 <= len(data) and _looks_explicit(data[pos + 4 : pos + 6]) == implicit:
        raise UnreadableBytes("dataset encoded otherwise than its transfer syntax says")
    return _undo_normalization(*read_parts(data, pos, implicit, cache), cache)


def _looks_explicit(vr: bytes) -> bool:
    return len(vr) == 2 and all(0x41 <= b <= 0x5A for b in vr)  # two capital letters


def _file_meta(data: bytes) -> tuple[int, str]:
    """Where the dataset starts, and the Transfer Syntax UID of the file meta."""
    pos, syntax = 132, ""
    try:
        while pos + 8 <= len(data):
            group, element, vr, length = _META_HEADER.unpack_from(data, pos)
            if group != 0x0002:
                break
            if not _looks_explicit(vr):
                raise UnreadableBytes("file meta not in Explicit VR")
            if vr in _LONG_HEADER:
                length = _LONG_LENGTH.unpack_from(data, pos + 8)[0]
                pos += 12
            else:
                pos += 8
            if length == 0xFFFFFFFF:
                raise UnreadableBytes("undefined length in the file meta")
            if (group << 16) | element == TRANSFER_SYNTAX_UID:
                syntax = data[pos : pos + length].decode("ascii").strip(" \x00")
            pos += length
    except (struct.error, UnicodeError) as exc:
        raise UnreadableBytes(f"file meta: {exc}") from exc
    return pos, syntax


def _undo_normalization(
    tags: tuple[int, ...],
    vrs: tuple[str, ...],
    values: tuple[Any, ...],
    private: list[tuple[int, bytes]],
    cache: RecordCache,
) -> Record:
    """The record without what ``normalization.normalize`` added (as its ``reverse`` does).

    ``tags`` ascend without duplicates (:func:`record_reading.read_parts`), so the
    few added and filled attributes are found by binary search.
    """
    found = dict(private)
    offset = next(
        (
            element
            for element in range(0x10, 0x100)
            if _text(found.get((RECORD_GROUP << 16) | element)) == RECORD_CREATOR
        ),
        None,
    )
    if offset is None:
        return Record(cache.layout(tags, vrs), values)
    base = (RECORD_GROUP << 16) | (offset << 8)
    try:
        added = _tags(found.get(base | _ADDED))
        filled = _tags(found.get(base | _FILLED))
    except ValueError as exc:
        raise UnreadableBytes(f"normalization record: {exc}") from exc
    kept = list(values)
    for tag in filled:
        i = bisect_left(tags, tag)
        if i == len(tags) or tags[i] != tag or tag in added:
            raise UnreadableBytes("a filled attribute the record does not hold")
        if vrs[i] not in TEXT:
            raise UnreadableBytes(f"filled attribute {tag:08X} of VR {vrs[i]}")
        kept[i] = ()
    dropped = sorted(
        i for tag in added if (i := bisect_left(tags, tag)) < len(tags) and tags[i] == tag
    )
    if not dropped:
        return Record(cache.layout(tags, vrs), tuple(kept))
    kept_tags, kept_vrs = list(tags), list(vrs)
    for i in reversed(dropped):
        del kept_tags[i], kept_vrs[i], kept[i]
    return Record(cache.layout(tuple(kept_tags), tuple(kept_vrs)), tuple(kept))


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("latin_1").rstrip("\x00 ").strip()


def _tags(value: bytes | None) -> set[int]:
    text = _text(value) or ""
    return {int(part, 16) for part in text.split("\\") if part.strip()}
