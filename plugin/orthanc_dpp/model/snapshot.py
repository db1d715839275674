"""The protocol index saved in Orthanc's database, for a fast start-up.

Building a record means reading and decoding the instance's file: about
4 ms each, so 100,000 protocols would take minutes. The feed therefore saves
the records, with the change-log position they reflect, as one Orthanc
global property (shared by every node on one database) and starts from it;
what changed since is caught up from ``/changes`` and the reconciliation.

Format 3 holds plain data only, as consecutive pickles in one compressed
stream: a header (``MAGIC``, ``FORMAT``, change-log position, the table of
record layouts (tags and VRs), how many records and entries follow), then
the table of records in chunks of ``CHUNK`` (layout number and values, each
distinct record once: sequence items are shared between protocols), then
per protocol its Orthanc ID and record number. The value of a sequence (VR
``SQ`` in its layout) is a tuple of record numbers, always of earlier
records (so there are no cycles); a value too large to keep is ``{}``.

Reading one chunk at a time keeps the memory a restart needs close to the
index's own: format 2 unpickled the whole table first, several hundred MiB
for 100,000 protocols that the process then kept. Pickle is used for speed,
read back with an unpickler that refuses every class and function, so the
property can hold data but never run code. Every part is then checked
(types, lengths, tag order, VRs, record numbers); anything wrong, in the
whole or in one record, raises :class:`SnapshotError` and the feed rebuilds
the index from Orthanc instead, with a log line saying why (a snapshot of
another format too: the next save writes this one).
"""

from __future__ import annotations

import base64
import io
import pickle
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Final, NoReturn, Protocol

from orthanc_dpp.model.record import BULK, SHARED_TEXT, Layout, Record
from orthanc_dpp.model.record_cache import RecordCache

#: Orthanc global property holding the snapshot (plugins use numbers >= 1024).
PROPERTY = 20511
#: Marks our snapshots, and the version of their layout.
MAGIC = "orthanc-dpp-index"
FORMAT = 3
#: Records per pickle: what a restart holds undecoded at a time.
CHUNK = 8192

_VR = re.compile(r"^[A-Z]{2}$")
_SCALARS = frozenset({str, int, float, bytes})
_INT: Final = {int}
_TAG = 0xFFFFFFFF

_Layouts = list[tuple[tuple[int, ...], tuple[str, ...]]]


class SnapshotError(ValueError):
    """The stored snapshot cannot be used; the message says why."""


class SnapshotStore(Protocol):
    """Where snapshots live (Orthanc's global properties, or a test double)."""

    def read(self) -> str: ...

    def write(self, text: str) -> None: ...


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> NoReturn:
        raise SnapshotError(f"snapshot refers to {module}.{name}: a snapshot holds data only")


# -- writing --------------------------------------------------------------------------


class _Writer:
    """Flattens records into a table, each distinct record once (items are shared)."""

    def __init__(self) -> None:
        self.layouts: _Layouts = []
        self.records: list[tuple[int, tuple[Any, ...]]] = []
        self._layout_numbers: dict[int, int] = {}
        self._record_numbers: dict[int, int] = {}
        self._keep: list[Any] = []  # ids stay valid while the writer lives

    def record(self, record: Record) -> int:
        number = self._record_numbers.get(id(record))
        if number is not None:
            return number
        layout = self._layout(record)
        values = tuple(
            [
                self._sequence(vr, value) if vr == "SQ" else self._value(value)
                for vr, value in zip(record.vrs, record.raw_values, strict=True)
            ]
        )
        number = self._record_numbers[id(record)] = len(self.records)
        self._keep.append(record)
        self.records.append((layout, values))
        return number

    def _layout(self, record: Record) -> int:
        layout = record.layout  # one object per shape (record_cache.py): numbered by identity
        number = self._layout_numbers.get(id(layout))
        if number is None:
            number = self._layout_numbers[id(layout)] = len(self.layouts)
            self.layouts.append((layout.tags, layout.vrs))
            self._keep.append(layout)
        return number

    def _sequence(self, vr: str, value: Any) -> tuple[int, ...]:
        if not (isinstance(value, tuple) and all(isinstance(v, Record) for v in value)):
            raise ValueError(f"a {vr} value is not a tuple of records: {type(value).__name__}")
        return tuple([self.record(item) for item in value])

    @staticmethod
    def _value(value: Any) -> Any:
        if value is BULK:
            return {}
        if isinstance(value, Record) or (
            isinstance(value, tuple) and any(isinstance(v, Record) for v in value)
        ):
            raise ValueError("a record outside a sequence")
        return value


def dump(entries: Iterable[tuple[str, Record]], last_seq: int) -> str:
    """Text for the global property: header and layouts, records in chunks, entries."""
    writer = _Writer()
    ids = [(orthanc_id, writer.record(record)) for orthanc_id, record in entries]
    records = writer.records
    stream = io.BytesIO()
    header = (MAGIC, FORMAT, last_seq, writer.layouts, len(records), len(ids))
    pickle.dump(header, stream, protocol=5)
    for start in range(0, len(records), CHUNK):
        pickle.dump(records[start : start + CHUNK], stream, protocol=5)
    pickle.dump(ids, stream, protocol=5)
    return base64.b64encode(zlib.compress(stream.getvalue(), 1)).decode("ascii")


# -- reading ----------------------------------------------------------------------------


def _bad(message: str) -> NoReturn:
    raise SnapshotError(message)


def _layouts(raw: Any, cache: RecordCache) -> list[Layout]:
    if not isinstance(raw, list):
        _bad("snapshot layouts are not a list")
    layouts = []
    for number, layout in enumerate(raw):
        if not (isinstance(layout, tuple) and len(layout) == 2):
            _bad(f"layout {number} is malformed")
        tags, vrs = layout
        if not (isinstance(tags, tuple) and isinstance(vrs, tuple) and len(tags) == len(vrs)):
            _bad(f"layout {number} is malformed")
        if tags and not (set(map(type, tags)) == _INT and 0 <= min(tags) <= max(tags) <= _TAG):
            _bad(f"layout {number} has a tag that is not a tag")
        if sorted(set(tags)) != list(tags):
            _bad(f"layout {number} has tags out of order")
        if not all(isinstance(vr, str) and _VR.match(vr) for vr in vrs):
            _bad(f"layout {number} has a VR that is not a VR")
        layouts.append(cache.layout(tags, tuple([sys.intern(vr) for vr in vrs])))
    return layouts


class _RecordReader:
    """Builds records from their table, checking each value against its layout."""

    def __init__(self, layouts: list[Layout]) -> None:
        self.layouts = layouts
        self.built: list[Record] = []
        # Per layout: positions holding sequences (most item layouts have none).
        self._sequences = [
            frozenset(i for i, vr in enumerate(layout.vrs) if vr == "SQ") for layout in layouts
        ]

    def add(self, entry: Any) -> None:
        number = len(self.built)
        if not (type(entry) is tuple and len(entry) == 2):
            _bad(f"record {number} is malformed")
        layout_number, values = entry
        if type(layout_number) is not int or not 0 <= layout_number < len(self.layouts):
            _bad(f"record {number} names layout {layout_number!r}, which does not exist")
        layout = self.layouts[layout_number]
        if type(values) is not tuple or len(values) != len(layout.tags):
            _bad(f"record {number}: its values do not fit its layout")
        sequences = self._sequences[layout_number]
        value, items, intern, shared = self._value, self._items, sys.intern, SHARED_TEXT
        try:
            if sequences:
                checked = [items(v) if i in sequences else value(v) for i, v in enumerate(values)]
            else:  # most records; text, the usual value, checked here
                checked = [
                    (intern(v) if len(v) <= shared else v) if type(v) is str else value(v)
                    for v in values
                ]
        except SnapshotError as exc:
            _bad(f"record {number}: {exc}")
        self.built.append(Record(layout, tuple(checked)))

    def _items(self, numbers: Any) -> tuple[Record, ...]:
        built = self.built
        if type(numbers) is not tuple or (
            numbers
            and not (
                set(map(type, numbers)) == _INT and min(numbers) >= 0 and max(numbers) < len(built)
            )
        ):
            _bad("a sequence is not a tuple of earlier record numbers")
        return tuple(map(built.__getitem__, numbers))

    @staticmethod
    def _value(item: Any) -> Any:
        kind = type(item)
        if kind is str:
            return sys.intern(item) if len(item) <= SHARED_TEXT else item
        if kind in _SCALARS:
            return item
        if kind is tuple:
            if not set(map(type, item)) <= _SCALARS:
                _bad("a value holds something that is not a value")
            return tuple(
                [sys.intern(v) if type(v) is str and len(v) <= SHARED_TEXT else v for v in item]
            )
        if kind is dict and not item:
            return BULK
        _bad(f"a value is a {kind.__name__} that is not a value")


def _pickles(text: str) -> Iterator[Any]:
    """The pickles of the stream, one at a time; SnapshotError if unreadable."""
    try:
        stream = io.BytesIO(zlib.decompress(base64.b64decode(text, validate=True)))
    except Exception as exc:
        raise SnapshotError(f"snapshot unreadable: {exc}") from exc
    end = len(stream.getbuffer())
    while stream.tell() < end:
        try:
            yield _DataOnlyUnpickler(stream).load()
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotError(f"snapshot unreadable: {exc}") from exc


def load(text: str, cache: RecordCache) -> tuple[list[tuple[str, Record]], int]:
    """The entries and change-log position of a snapshot made by :func:`dump`.

    The records' layouts come from ``cache`` (the index's that will hold them).
    """
    if not text:
        raise SnapshotError("no snapshot stored yet")
    pickles = _pickles(text)
    header = next(pickles, None)
    if not (isinstance(header, tuple) and len(header) >= 2 and header[0] == MAGIC):
        raise SnapshotError("not a snapshot of this plugin (or of an older format)")
    if header[1] != FORMAT:
        raise SnapshotError(f"snapshot format {header[1]}, this plugin reads format {FORMAT}")
    if len(header) != 6:
        raise SnapshotError("snapshot header is malformed")
    _, _, last_seq, raw_layouts, record_count, entry_count = header
    if not all(type(n) is int and n >= 0 for n in (last_seq, record_count, entry_count)):
        raise SnapshotError("snapshot header is malformed")
    reader = _RecordReader(_layouts(raw_layouts, cache))
    while len(reader.built) < record_count:
        chunk = next(pickles, None)
        if not isinstance(chunk, list) or not chunk:
            raise SnapshotError(
                f"snapshot ends after {len(reader.built)} of {record_count} records"
            )
        for entry in chunk:
            reader.add(entry)
        del chunk  # one chunk undecoded at a time
    if len(reader.built) != record_count:
        raise SnapshotError(f"snapshot has more records than the {record_count} announced")
    raw_entries = next(pickles, None)
    if not isinstance(raw_entries, list) or len(raw_entries) != entry_count:
        raise SnapshotError(f"snapshot does not end with its {entry_count} entries")
    if next(pickles, None) is not None:
        raise SnapshotError("snapshot has data after its entries")
    records = reader.built
    entries = []
    for position, entry in enumerate(raw_entries):
        if not (
            type(entry) is tuple
            and len(entry) == 2
            and type(entry[0]) is str
            and type(entry[1]) is int
            and 0 <= entry[1] < len(records)
        ):
            raise SnapshotError(f"snapshot entry {position} is malformed")
        entries.append((entry[0], records[entry[1]]))
    return entries, last_seq
