"""The cache behind records: layouts, shared items and encoded sequences of one index.

Records compare layouts by identity (``record.Record``), so every record of
an index is built with that index's :class:`RecordCache`
(``ProtocolIndex.records``), which ``record_reading`` is handed. It interns
layouts, tag numbers and identical sequence items, remembers sequences (and,
during a bulk read, items) by their encoded bytes, and the codec of each
character set.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final

from pydicom.charset import convert_encodings

from orthanc_dpp.model.record import Layout, Record

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

#: The Specific Character Set terms a value is decoded with (None: not given).
Charset = tuple[str, ...] | None
# Encoded sequences are remembered by (bytes, implicit VR, inherited character set).
SequenceKey = tuple[bytes, bool, Charset]

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


def fast_codec(charset: Charset) -> str | None:
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
        self._codecs: dict[Charset, str | None] = {}  # fast_codec's answers

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

    def codec(self, charset: Charset) -> str | None:
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
