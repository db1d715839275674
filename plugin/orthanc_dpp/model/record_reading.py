"""Records built from pydicom datasets or straight from little endian bytes.

:func:`to_record` builds the record of a Dataset (a received instance);
:func:`read_dataset` and :func:`read_parts` build the same record from the
encoded bytes without pydicom (the index's start-up reads every stored
protocol that way). Both are handed the index's ``RecordCache``: sequence
items are shared through it, and sequences already read are found by their
bytes.
"""

from __future__ import annotations

import logging
import struct
import sys
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from orthanc_dpp.model.key_table import SPECIFIC_CHARACTER_SET
from orthanc_dpp.model.record import (
    BINARY,
    BULK,
    BULK_BYTES,
    BULK_TEXT,
    CHARSET_TEXT,
    NUMBERS,
    PLAIN_TEXT,
    SHARED_TEXT,
    SINGLE_VALUED_TEXT,
    TEXT,
    Record,
)
from orthanc_dpp.model.record_cache import LARGEST_CACHED, Charset, RecordCache

log = logging.getLogger("orthanc_dpp.record")  # the logger's name of before the split


def to_record(ds: Dataset, cache: RecordCache) -> Record:
    """A record of ``ds``'s public attributes, decoded with its character set."""
    return _record(ds, _encodings(ds, None), cache, nested=False)


def _encodings(ds: Dataset, inherited: Charset) -> Charset:
    """The dataset's Specific Character Set terms, or the inherited ones."""
    elem = ds.get_item(SPECIFIC_CHARACTER_SET)
    if elem is None:
        return inherited
    if isinstance(elem, RawDataElement):
        raw = elem.value or b""
        terms = raw.decode("latin_1").split("\\")
    else:
        value = elem.value
        terms = [] if value is None else [value] if isinstance(value, str) else list(value)
    return tuple(term.strip() for term in terms)


def _record(ds: Dataset, charset: Charset, cache: RecordCache, *, nested: bool) -> Record:
    codec = cache.codec(charset)
    tags: list[int] = []
    vrs: list[str] = []
    values: list[Any] = []
    for key in sorted(ds.keys()):
        tag = int(key)
        group, element = tag >> 16, tag & 0xFFFF
        if group & 1 or element == 0 or group in (0x0000, 0x0002, 0xFFFE):
            continue  # private, group length, command, file meta, delimiters
        try:
            converted = _convert(ds, tag, charset, codec, cache)
        except Exception as exc:  # one damaged element must not lose the instance
            log.warning("Attribute %08X left out of the index: %s", tag, exc)
            continue
        if converted is None:
            continue
        tags.append(tag)
        vrs.append(converted[0])
        values.append(converted[1])
    record = Record(cache.layout(tuple(tags), tuple(vrs)), tuple(values))
    return cache.share(record) if nested else record


def _convert(
    ds: Dataset, tag: int, charset: Charset, codec: str | None, cache: RecordCache
) -> tuple[str, Any] | None:
    """(VR, stored value) for one element, or None to leave it out."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        if elem.is_little_endian and isinstance(elem.value, bytes | None):
            try:
                return _decode(
                    tag, elem.VR, elem.value or b"", elem.is_implicit_VR, charset, codec, cache
                )
            except (_Unsupported, struct.error, UnicodeError, ValueError):
                pass
        elem = ds[tag]  # pydicom resolves ambiguous VRs, ISO 2022, big endian
    if elem is None:
        return None
    vr = elem.VR
    if " or " in vr:
        vr = vr.split(" or ")[0]
    if vr == "SQ":
        items = tuple(
            _record(item, _encodings(item, charset), cache, nested=True) for item in elem.value
        )
        return "SQ", items
    return sys.intern(vr), _from_value(vr, elem.value)


def _decode(
    tag: int,
    vr: str | None,
    value: bytes,
    implicit: bool,
    charset: Charset,
    codec: str | None,
    cache: RecordCache,
) -> tuple[str, Any] | None:
    """(VR, stored value) from little endian bytes; None for an unknown attribute."""
    if vr is None or vr == "UN":
        try:
            known = dictionary_VR(tag)
        except KeyError:
            return None if vr is None else ("UN", _from_bytes("UN", value, codec))
        if vr == "UN" and known == "SQ":
            implicit = True  # a sequence in UN is encoded in Implicit VR (PS3.5 6.2.2)
        vr = known
    if " or " in vr:
        raise _Unsupported(f"ambiguous VR {vr}")
    if vr == "SQ":
        items = _cached_sequence(bytes(value), implicit, charset, cache)
        if items is None:
            raise _Unsupported("sequence")
        return "SQ", items
    if vr in CHARSET_TEXT and codec is None:
        raise _Unsupported("character set with code extensions")
    return sys.intern(vr), _from_bytes(vr, value, codec)


# -- sequences read straight from their bytes ------------------------------------
#
# pydicom parses a sequence into Datasets and elements before we read them
# (most of the cost of building a record), and protocols repeat whole
# sequences (the same acquisition constraints, the same codes). So sequence
# values still in encoded form (little endian, character sets without code
# extensions) are read here, and identical bytes are read once.

_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
_LONG_HEADER: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UR", "UT", "UN"})
_HEADER = struct.Struct("<HHI")
_SHORT = struct.Struct("<HH2sH")


class _Unsupported(Exception):
    """Bytes this reader leaves to pydicom (ambiguous VRs, ISO 2022, ...)."""


def _cached_sequence(
    data: bytes, implicit: bool, charset: Charset, cache: RecordCache
) -> tuple[Record, ...] | None:
    key = (data, implicit, charset)
    items = cache.cached_sequence(key)
    if items is None:
        try:
            items, _ = _read_items(data, 0, len(data), implicit, charset, cache)
        except (_Unsupported, struct.error, UnicodeError, ValueError):
            return None
        cache.remember_sequence(key, items)
    return items


def _read_items(
    data: bytes, pos: int, end: int | None, implicit: bool, charset: Charset, cache: RecordCache
) -> tuple[tuple[Record, ...], int]:
    """Items from ``pos`` to ``end`` (None: up to the sequence delimiter)."""
    items = []
    limit = len(data) if end is None else end
    read = _bulk_item if cache.bulk else _read_item
    while pos < limit:
        group, element, length = _HEADER.unpack_from(data, pos)
        pos += 8
        tag = (group << 16) | element
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM:
            raise _Unsupported(f"item tag expected, found {tag:08X}")
        if length == _UNDEFINED:
            record, pos = _read_item(data, pos, None, implicit, charset, cache)
        else:
            record, pos = read(data, pos, pos + length, implicit, charset, cache)
        items.append(record)
    return tuple(items), pos


def _bulk_item(
    data: bytes, pos: int, end: int, implicit: bool, charset: Charset, cache: RecordCache
) -> tuple[Record, int]:
    """:func:`_read_item` of a nested item of defined length, remembering it by its bytes.

    Only a read that ended exactly at the item's end depended on nothing
    but the item's bytes (reads only move forward), and only a shared item
    is remembered: a later read of the same bytes would have given that
    very object (the cache keeps it alive). So a hit returns what reading
    again would, exceptions included (a failed read is not remembered;
    bytes cut short by the end of the data are not looked up).
    """
    if end > len(data) or end - pos > LARGEST_CACHED:
        return _read_item(data, pos, end, implicit, charset, cache)
    key = (data[pos:end], implicit, charset)
    record = cache.cached_item(key)
    if record is not None:
        return record, end
    record, after = _read_item(data, pos, end, implicit, charset, cache)
    if after == end:
        cache.remember_item(key, record)
    return record, after


def _read_item(
    data: bytes, pos: int, end: int | None, implicit: bool, charset: Charset, cache: RecordCache
) -> tuple[Record, int]:
    """One sequence item from its bytes, shared (:meth:`RecordCache.share`)."""
    tags, vrs, values, pos = _read_elements(data, pos, end, implicit, charset, None, cache)
    return cache.share(Record(cache.layout(tuple(tags), tuple(vrs)), tuple(values))), pos


def _read_elements(
    data: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    charset: Charset,
    top: list[tuple[int, bytes]] | None,
    cache: RecordCache,
) -> tuple[list[int], list[str], list[Any], int]:
    """The tags (ascending), VRs and values of an item or, with ``top``, a whole dataset.

    At the top level, elements pydicom would read differently (group
    0000/0002/FFFE, duplicates, item delimiters) make the read fail rather
    than guess; ``top`` receives the raw private elements of defined length
    (for the normalization record).

    The start-up runs this loop for every element of every protocol, so the
    usual elements (text, numbers, sequences of defined length, in Explicit
    VR) are decoded here as :func:`_decode` would, without its calls, and
    what the loop looks up is bound to locals.
    """
    codec_of = cache.codec
    codec = codec_of(charset)
    text_codec = codec or "latin_1"
    tags: list[int] = []
    vrs: list[str] = []
    values: list[Any] = []
    ordered, previous = True, -1  # tags ascending so far (as they should be)
    limit = len(data) if end is None else end
    unpack_header, unpack_short = _HEADER.unpack_from, _SHORT.unpack_from
    vr_names, long_vrs, intern = _VR_NAMES, _LONG_VRS, sys.intern
    text_vrs, plain_text, single_valued = TEXT, PLAIN_TEXT, SINGLE_VALUED_TEXT
    while pos < limit:
        if implicit:
            group, element, length = unpack_header(data, pos)
            pos += 8
            vr: str | None = None
        else:
            group, element, raw_vr, length = unpack_short(data, pos)
            vr = vr_names.get(raw_vr)
            if vr is None:
                vr = raw_vr.decode("ascii")
            pos += 8
            if raw_vr in long_vrs:
                length = unpack_header(data, pos - 4)[2]
                pos += 4
        tag = (group << 16) | element
        if top is not None and group in (0x0000, 0x0002, 0xFFFE):
            raise _Unsupported(f"element {tag:08X} in a top-level dataset")
        if tag == _ITEM_END:
            break
        keep = not (group & 1 or element == 0)  # private and group lengths are left out
        if length == _UNDEFINED:
            # Only sequences (SQ, UN, implicit private) may have an undefined length.
            known = vr or _dictionary_vr(tag)
            if known not in ("SQ", "UN", None) or (top is not None and known is None):
                raise _Unsupported(f"undefined length for {known}")
            nested, pos = _read_items(data, pos, None, implicit or known == "UN", charset, cache)
            if keep:
                ordered, previous = ordered and tag > previous, tag
                tags.append(tag)
                vrs.append("SQ")
                values.append(nested)
            continue
        value = data[pos : pos + length]
        pos += length
        if not keep:
            if top is not None and group & 1:
                top.append((tag, value))
            continue
        if tag == SPECIFIC_CHARACTER_SET:
            charset = tuple(t.strip() for t in value.decode("latin_1").split("\\"))
            codec = codec_of(charset)
            text_codec = codec or "latin_1"
        stored: Any
        if vr in text_vrs and (codec is not None or vr in plain_text):
            # Text of a known VR, most elements: what _from_bytes does.
            if not value:
                stored = ()
            elif len(value) > BULK_TEXT:
                stored = BULK
            else:
                text = value.decode(text_codec, errors="replace")
                if vr in single_valued or "\\" not in text:
                    text = text.rstrip(" \x00")
                    stored = intern(text) if len(text) <= SHARED_TEXT else text
                else:
                    stored = _pack([_text(v) for v in text.split("\\")])
        elif vr in _READ_AS_IS:  # numbers, tags, binary (explicit VR): no charset, no dictionary
            stored = _from_bytes(vr, value, codec)
        elif vr == "SQ":
            stored = _cached_sequence(value, implicit, charset, cache)
            if stored is None:
                raise _Unsupported("sequence")
        else:
            converted = _decode(tag, vr, value, implicit, charset, codec, cache)
            if converted is None:
                continue
            vr, stored = converted
        ordered, previous = ordered and tag > previous, tag
        tags.append(tag)
        vrs.append(vr)
        values.append(stored)
    if not ordered:
        order = sorted(range(len(tags)), key=tags.__getitem__)  # stable, as found.sort was
        tags = [tags[i] for i in order]
        vrs = [vrs[i] for i in order]
        values = [values[i] for i in order]
        if top is not None and any(tags[i] == tags[i + 1] for i in range(len(tags) - 1)):
            raise _Unsupported("an attribute given twice")
    return tags, vrs, values, pos


#: The VRs of the standard, as bytes in an encoded element, to their (interned) names.
_VR_NAMES: Final = {
    vr.encode("ascii"): sys.intern(vr) for vr in (*TEXT, *NUMBERS, *BINARY, "AT", "SQ")
}
_LONG_VRS: Final = frozenset(vr.encode("ascii") for vr in _LONG_HEADER)
#: Explicit VRs whose values :func:`_decode` hands to :func:`_from_bytes` unchanged.
_READ_AS_IS: Final = frozenset({*NUMBERS, "AT", *(BINARY - {"UN"})})


class UnreadableBytes(Exception):
    """Bytes :func:`read_dataset` leaves to pydicom (the caller then uses :func:`to_record`)."""


def read_dataset(
    data: bytes, pos: int, implicit: bool, cache: RecordCache
) -> tuple[Record, list[tuple[int, bytes]]]:
    """The record of the little endian dataset at ``data[pos:]``, without pydicom.

    The same record :func:`to_record` builds from ``dcmread`` of those
    bytes (both decode every value with :func:`_decode`), for the index's
    start-up, where pydicom's parse was half of the time spent per protocol.
    Also returns the raw (tag, value) private elements of the top level.
    Raises :class:`UnreadableBytes` for anything it does not read exactly as
    pydicom would (ambiguous VRs, ISO 2022 character sets, undefined lengths
    outside sequences, duplicates, truncation).
    """
    tags, vrs, values, private = read_parts(data, pos, implicit, cache)
    return Record(cache.layout(tags, vrs), values), private


def read_parts(
    data: bytes, pos: int, implicit: bool, cache: RecordCache
) -> tuple[tuple[int, ...], tuple[str, ...], tuple[Any, ...], list[tuple[int, bytes]]]:
    """:func:`read_dataset` before its record is made: tags (ascending), VRs, values, private.

    For a caller that changes the record first (``stored_record`` undoing
    the normalization): one layout is then looked up instead of two.
    """
    captured: list[tuple[int, bytes]] = []
    try:
        tags, vrs, values, end = _read_elements(
            data, pos, len(data), implicit, None, captured, cache
        )
    except (_Unsupported, struct.error, UnicodeError, ValueError, KeyError) as exc:
        raise UnreadableBytes(str(exc) or type(exc).__name__) from exc
    if end != len(data):
        raise UnreadableBytes("truncated")
    return tuple(tags), tuple(vrs), tuple(values), captured


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _pack(values: list[Any]) -> Any:
    """Bare value for one, tuple for none or several."""
    return values[0] if len(values) == 1 else tuple(values)


def _text(value: str) -> str:
    value = value.rstrip(" \x00")
    return sys.intern(value) if len(value) <= SHARED_TEXT else value


def _from_bytes(vr: str, raw: bytes | None, codec: str | None) -> Any:
    if not raw:
        return ()
    if vr in TEXT:
        if len(raw) > BULK_TEXT:
            return BULK
        text = raw.decode(codec or "latin_1", errors="replace")
        if vr in SINGLE_VALUED_TEXT or "\\" not in text:  # one value: the usual case
            return _text(text)
        return _pack([_text(v) for v in text.split("\\")])
    if vr in NUMBERS:
        code = NUMBERS[vr]
        size = struct.calcsize(code)
        count = len(raw) // size
        numbers = struct.unpack("<" + code * count, raw[: count * size])
        return _pack(list(numbers))
    if vr == "AT":
        count = len(raw) // 4
        pairs = struct.unpack("<" + "HH" * count, raw[: count * 4])
        return _pack([(pairs[i] << 16) | pairs[i + 1] for i in range(0, len(pairs), 2)])
    if vr in BINARY:
        return BULK if len(raw) > BULK_BYTES else bytes(raw)
    return BULK  # a VR we do not know how to read


def _from_value(vr: str, value: Any) -> Any:
    if value is None or value == "" or value == b"":
        return ()
    if vr in BINARY:
        data = bytes(value)
        return BULK if len(data) > BULK_BYTES else data
    many = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    if vr in TEXT:
        texts = [_text(str(v)) for v in many]
        if sum(len(t) for t in texts) > BULK_TEXT:
            return BULK
        return _pack(texts)
    if vr in ("FL", "FD"):
        return _pack([float(v) for v in many])
    if vr in NUMBERS or vr == "AT":
        return _pack([int(v) for v in many])
    return BULK
