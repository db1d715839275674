"""Compact, immutable copies of a stored protocol's attributes.

The index holds one :class:`Record` per stored DPP instance, up to 100,000 or
more, so a record keeps decoded values, not pydicom objects:

- every public, non-bulk attribute at every nesting level is kept (any of
  them may be a matching key, docs/design.md, "The DPP model");
- a record's tags and VRs live in a shared :class:`Layout` (protocols and
  their sequence items repeat the same shapes), so a record itself is a
  tuple of values;
- a value is stored bare when there is one, as a tuple when there are
  several or none, as a tuple of records for a sequence, and as
  :data:`BULK` when it was too large to keep;
- identical sequence items (the same code, the same constraint) are shared
  between records, and short strings are interned.

Private attributes are left out: their tags depend on each instance's
private creator blocks, so they cannot be matched or returned reliably.
Values are decoded with the instance's Specific Character Set; text keeps
leading spaces and loses trailing padding, so a response element rebuilt
with :func:`to_data_element` carries the stored value.

Records compare their layouts by identity, so layouts, shared items and the
caches of encoded sequences live in a :class:`RecordCache`, one per index
(``ProtocolIndex.records``): every reader is handed the cache, and records
compared with each other must come from the same one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import sys
import threading
import weakref
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from orthanc_dpp.keys import SPECIFIC_CHARACTER_SET

log = logging.getLogger("orthanc_dpp.record")

#: Binary values longer than this (bytes) are not kept.
BULK_BYTES: Final = 256
#: Text values longer than this (characters) are not kept.
BULK_TEXT: Final = 4096
#: Text values up to this length (characters) are interned: one object for equal values.
SHARED_TEXT: Final = 64


class _Bulk:
    """Marks a value that existed but was too large to keep."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BULK"

    def __reduce__(self) -> str:
        return "BULK"  # pickled by name: one BULK, compared by identity


BULK: Final = _Bulk()

#: Text VRs whose bytes are decoded with the Specific Character Set.
CHARSET_TEXT: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
#: Text VRs in the default repertoire.
PLAIN_TEXT: Final = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
TEXT: Final = CHARSET_TEXT | PLAIN_TEXT
#: Text VRs where a backslash is a character, not a value delimiter.
SINGLE_VALUED_TEXT: Final = frozenset({"LT", "ST", "UT", "UR"})
#: Fixed-size binary numbers, with their struct codes.
NUMBERS: Final = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "UV": "Q",
    "SV": "q",
    "FL": "f",
    "FD": "d",
}
BINARY: Final = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


class Element(NamedTuple):
    """One attribute as the matcher sees it.

    ``values`` is a tuple (empty for a zero-length value; records for a
    sequence) or ``None`` when the value was too large to keep.
    """

    vr: str
    values: tuple[Any, ...] | None


class Layout:
    """The tags (ascending) and VRs of a record, shared by every record of that shape.

    Top-level layouts are nearly as many as the protocols (optional
    attributes vary), so a layout holds no lookup dict: a binary search of
    the sorted tags costs less memory for about the same time.
    """

    __slots__ = ("__weakref__", "tags", "vrs")

    def __init__(self, tags: tuple[int, ...], vrs: tuple[str, ...]) -> None:
        self.tags = tags
        self.vrs = vrs

    def position(self, tag: int) -> int | None:
        """Where ``tag`` is in the record's values, or None."""
        tags = self.tags
        i = bisect_left(tags, tag)
        return i if i < len(tags) and tags[i] == tag else None


class Record:
    """The attributes of one dataset (or sequence item), immutable."""

    __slots__ = ("__weakref__", "_hash", "_layout", "_values")

    def __init__(self, layout: Layout, values: tuple[Any, ...]) -> None:
        self._layout = layout
        self._values = values
        self._hash: int | None = None

    # -- reading -------------------------------------------------------------

    def get(self, tag: int) -> Element | None:
        """The element for ``tag``, or None if the dataset lacks it."""
        i = self._layout.position(tag)
        if i is None:
            return None
        return Element(self._layout.vrs[i], stored_values(self._values[i]))

    def values(self, tag: int) -> tuple[Any, ...] | None:
        """The values of ``tag``: () if absent or empty, None if bulk (not kept)."""
        i = self._layout.position(tag)
        if i is None:
            return ()
        return stored_values(self._values[i])

    def first(self, tag: int) -> Any:
        """The first value of ``tag`` or None: for single-valued attributes."""
        values = self.values(tag)
        return values[0] if values else None

    @property
    def tags(self) -> tuple[int, ...]:
        return self._layout.tags

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, int) and self._layout.position(tag) is not None

    def __iter__(self) -> Iterator[tuple[int, Element]]:
        layout = self._layout
        for tag, vr, value in zip(layout.tags, layout.vrs, self._values, strict=True):
            yield tag, Element(vr, stored_values(value))

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Record):
            return NotImplemented
        return self._layout is other._layout and self._values == other._values

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash((id(self._layout), self._values))
        return self._hash

    def __repr__(self) -> str:
        return f"Record({len(self)} attributes)"

    @property
    def vrs(self) -> tuple[str, ...]:
        return self._layout.vrs

    @property
    def layout(self) -> Layout:
        """The shared tags and VRs (one object for every record of that shape)."""
        return self._layout

    @property
    def raw_values(self) -> tuple[Any, ...]:
        """The stored values, one per tag: a value, a tuple of values, or BULK."""
        return self._values

    def to_dataset(self) -> Dataset:
        """The record as a pydicom Dataset (tests, REST summaries, debugging)."""
        ds = Dataset()
        for tag, element in self:
            if element.values is not None:
                ds.add(to_data_element(tag, element.vr, element.values))
        return ds


def stored_values(value: Any) -> tuple[Any, ...] | None:
    """A stored value as :meth:`Record.values` gives it: a tuple, None for a bulk one."""
    if value is BULK:
        return None
    if isinstance(value, tuple):
        return value
    return (value,)


# -- rebuilding elements ---------------------------------------------------------


def to_data_element(tag: int, vr: str, values: tuple[Any, ...]) -> DataElement:
    """A pydicom element with the stored VR and values (sequences included).

    Validation is off: the value is what the instance carried, and a
    response must return it as it is, not fail on it.
    """
    if vr == "SQ":
        value: Any = Sequence([item.to_dataset() for item in values])
    elif not values:
        value = None
    elif len(values) == 1 or vr in BINARY:
        value = values[0]
    else:
        value = list(values)
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


# -- the cache behind records ------------------------------------------------------

# Single-byte (or UTF-8) character sets where byte 0x5C is always the value
# delimiter, so bytes can be decoded in one call; others go through pydicom.
_FAST_CHARSETS: Final = frozenset(
    {
        "",
        "ISO_IR 6",
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 203",
        "ISO_IR 192",
    }
)
_CODECS_KEPT: Final = 256

# Encoded sequences are remembered by (bytes, implicit VR, inherited character set).
SequenceKey = tuple[bytes, bool, tuple[str, ...] | None]

_SEQUENCE_CACHE_SIZE: Final = 4096
#: Bytes of encoded sequences the cache may hold as keys (their records are
#: shared with the index, so this bounds what the cache adds).
SEQUENCE_CACHE_BYTES: Final = 8 << 20
_CACHED_BYTES: Final = 512  # only sequences at least this long are remembered
#: A larger sequence (or item) is read, not remembered.
LARGEST_CACHED: Final = 256 << 10
#: Bounds of the cache while a bulk read runs (:meth:`RecordCache.bulk_reading`).
BULK_CACHE_SIZE: Final = 65536
BULK_CACHE_BYTES: Final = 32 << 20
#: Bounds of the item cache (entries, bytes of the items' encodings).
ITEM_CACHE_SIZE: Final = 131072
ITEM_CACHE_BYTES: Final = 32 << 20


def fast_codec(charset: tuple[str, ...] | None) -> str | None:
    """The Python codec when bytes can be decoded in one call, else None."""
    if not charset:
        return "latin_1"  # pydicom's reading of the default repertoire
    if len(charset) != 1 or charset[0] not in _FAST_CHARSETS:
        return None
    return convert_encodings(list(charset))[0]


def shareable(record: Record) -> bool:
    """False when a value is NaN or -0.0: they would compare equal to other values."""
    vrs = record.layout.vrs
    if "FD" not in vrs and "FL" not in vrs:
        return True  # floats are only ever read for these VRs (most items have neither)
    for value in record.raw_values:
        if isinstance(value, float) and (value != value or math.copysign(1.0, value) < 0):
            return False
        if isinstance(value, tuple) and any(
            isinstance(v, float) and (v != v or math.copysign(1.0, v) < 0) for v in value
        ):
            return False
    return True


class RecordCache:
    """Layouts, shared items and remembered sequences for the records of one index.

    Records compare layouts by identity, so every record of an index must be
    built with that index's cache (``ProtocolIndex.records``). The intern
    tables (layouts, tag numbers, sequence items) hold weak references or
    small ints and cost nearly nothing beyond the records; the sequence and
    item caches are bounded in entries and bytes. One lock guards the
    bounded caches' eviction and the bulk-read count; lookups and the intern
    tables rely on single dictionary operations, as reads of one index do.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layouts: weakref.WeakValueDictionary[
            tuple[tuple[int, ...], tuple[str, ...]], Layout
        ] = weakref.WeakValueDictionary()
        self._tags: dict[int, int] = {}  # one int object per tag, shared by every layout
        self._items: weakref.WeakValueDictionary[tuple[Layout, tuple[Any, ...]], Record] = (
            weakref.WeakValueDictionary()
        )
        # Oldest first; an OrderedDict drops its oldest entry in constant time (a
        # dict scans over the holes its earlier deletions left at the front).
        self._sequence_cache: OrderedDict[SequenceKey, tuple[Record, ...]] = OrderedDict()
        self._cache_bytes = 0
        # Items of defined length read during a bulk read, oldest first;
        # emptied when the bulk read ends.
        self._item_cache: OrderedDict[SequenceKey, Record] = OrderedDict()
        self._item_cache_bytes = 0
        self._bulk_readers = 0  # bulk reads running (changed under the lock)
        self._codecs: dict[tuple[str, ...] | None, str | None] = {}  # fast_codec's answers

    # -- interning ---------------------------------------------------------------

    def layout(self, tags: tuple[int, ...], vrs: tuple[str, ...]) -> Layout:
        """The one :class:`Layout` of these tags and VRs, its tag numbers shared.

        Tags come as fresh int objects (decoded from bytes or a snapshot, or
        from pydicom), and a layout of every record read keeps them: they are
        replaced by the shared ones only for a new layout (most records read
        have a layout seen before).
        """
        layout = self._layouts.get((tags, vrs))
        if layout is None:
            shared_tag = self._tags.setdefault
            layout = Layout(tuple([shared_tag(t, t) for t in tags]), vrs)
            self._layouts[(layout.tags, vrs)] = layout  # the key holds no other ints
        return layout

    def share(self, record: Record) -> Record:
        """One object for identical sequence items across the index's records."""
        if not shareable(record):
            return record
        key = (record.layout, record.raw_values)
        existing = self._items.get(key)
        if existing is not None:
            return existing
        self._items[key] = record
        return record

    def codec(self, charset: tuple[str, ...] | None) -> str | None:
        """:func:`fast_codec`, remembered: every item of a protocol asks it again."""
        try:
            return self._codecs[charset]
        except KeyError:
            codec = fast_codec(charset)
            if len(self._codecs) < _CODECS_KEPT:  # character sets come from the files: bounded
                self._codecs[charset] = codec
            return codec

    # -- encoded sequences and items -------------------------------------------------

    @property
    def bulk(self) -> bool:
        """Whether a bulk read runs (:meth:`bulk_reading`): items are remembered too."""
        return self._bulk_readers > 0

    @contextlib.contextmanager
    def bulk_reading(self) -> Iterator[None]:
        """Remember every sequence read meanwhile, small ones too, within larger bounds.

        For the index's start-up without a snapshot, which reads every stored
        protocol in a row: protocols repeat small sequences (codes, positioning,
        the constraint items inside acquisition elements) as well as large
        ones, and remembering them all cut the reading time per protocol by
        about a third on the benchmark's library. Afterwards the cache is
        trimmed back to its usual bounds, so the extra memory lasts only as
        long as the load.

        Meanwhile single items are remembered too (:meth:`remember_item`): a
        sequence read for the first time mostly holds items read before (on
        the benchmark's library, three item reads in four were of bytes read
        before). That cache is dropped once the load is over.
        """
        with self._lock:
            self._bulk_readers += 1
        try:
            yield
        finally:
            with self._lock:
                self._bulk_readers -= 1
                if not self._bulk_readers:
                    self._trim(None, _SEQUENCE_CACHE_SIZE, SEQUENCE_CACHE_BYTES)
                    self._item_cache.clear()
                    self._item_cache_bytes = 0

    def cached_sequence(self, key: SequenceKey) -> tuple[Record, ...] | None:
        """The items read before from these bytes, or None."""
        return self._sequence_cache.get(key)

    def remember_sequence(self, key: SequenceKey, items: tuple[Record, ...]) -> None:
        """Keep ``items`` for their bytes, first dropping the oldest entries past the bounds.

        Small sequences read faster than they churn (except in a bulk read);
        huge ones are rare.
        """
        smallest = 0 if self._bulk_readers else _CACHED_BYTES
        if not smallest <= len(key[0]) <= LARGEST_CACHED:
            return
        with self._lock:
            if key in self._sequence_cache:
                return
            if self._bulk_readers:
                self._trim(len(key[0]), BULK_CACHE_SIZE, BULK_CACHE_BYTES)
            else:
                self._trim(len(key[0]), _SEQUENCE_CACHE_SIZE, SEQUENCE_CACHE_BYTES)
            self._sequence_cache[key] = items
            self._cache_bytes += len(key[0])

    def _trim(self, adding: int | None, entries: int, size: int) -> None:
        """Drop the oldest entries until ``adding`` more bytes fit the bounds (lock held)."""
        new_entries, new_bytes = (0, 0) if adding is None else (1, adding)
        cache = self._sequence_cache
        while cache and (
            len(cache) + new_entries > entries or self._cache_bytes + new_bytes > size
        ):
            oldest, _ = cache.popitem(last=False)
            self._cache_bytes -= len(oldest[0])

    @property
    def sequence_bytes(self) -> int:
        """Bytes of encoded sequences the cache holds (for tests and /dpp/status)."""
        return self._cache_bytes

    def cached_item(self, key: SequenceKey) -> Record | None:
        """The item read before, during this bulk read, from these bytes, or None."""
        return self._item_cache.get(key)

    def remember_item(self, key: SequenceKey, record: Record) -> None:
        """Keep a shared item for its bytes during a bulk read (the oldest dropped past the bounds).

        Only a shared item is remembered: a later read of the same bytes
        would have given that very object (``_items`` keeps it alive).
        """
        if not shareable(record):
            return
        with self._lock:
            if key in self._item_cache:
                return
            size = len(key[0])
            cache = self._item_cache
            while cache and (
                len(cache) >= ITEM_CACHE_SIZE or self._item_cache_bytes + size > ITEM_CACHE_BYTES
            ):
                oldest, _ = cache.popitem(last=False)
                self._item_cache_bytes -= len(oldest[0])
            cache[key] = record
            self._item_cache_bytes += size


# -- building records ----------------------------------------------------------


def to_record(ds: Dataset, cache: RecordCache) -> Record:
    """A record of ``ds``'s public attributes, decoded with its character set."""
    return _record(ds, _encodings(ds, None), cache, nested=False)


def _encodings(ds: Dataset, inherited: tuple[str, ...] | None) -> tuple[str, ...] | None:
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


def _record(
    ds: Dataset, charset: tuple[str, ...] | None, cache: RecordCache, *, nested: bool
) -> Record:
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
    ds: Dataset, tag: int, charset: tuple[str, ...] | None, codec: str | None, cache: RecordCache
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
    charset: tuple[str, ...] | None,
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
    data: bytes, implicit: bool, charset: tuple[str, ...] | None, cache: RecordCache
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
    data: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    charset: tuple[str, ...] | None,
    cache: RecordCache,
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
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    charset: tuple[str, ...] | None,
    cache: RecordCache,
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
    data: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    charset: tuple[str, ...] | None,
    cache: RecordCache,
) -> tuple[Record, int]:
    """One sequence item from its bytes, shared (:meth:`RecordCache.share`)."""
    tags, vrs, values, pos = _read_elements(data, pos, end, implicit, charset, None, cache)
    return cache.share(Record(cache.layout(tuple(tags), tuple(vrs)), tuple(values))), pos


def _read_elements(
    data: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    charset: tuple[str, ...] | None,
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
