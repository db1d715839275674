"""The protocol index saved in Orthanc's database, for a fast start-up.

Building a record means reading and decoding the instance's file: about
4 ms each, so 100,000 protocols would take minutes. The feed therefore saves
the records, with the change-log position they reflect, as one Orthanc
global property (shared by every node on one database) and starts from it;
what changed since is caught up from ``/changes`` and the reconciliation.

Format 2 holds plain data only: a header (``MAGIC``, ``FORMAT``, change-log
position), a table of record layouts (tags and VRs), a table of records
(layout number and values, each distinct record once: sequence items are
shared between protocols), and per protocol its Orthanc ID and record
number. Inside values, a nested record is ``[record number]`` (always an
earlier one, so there are no cycles) and a value too large to keep is
``{}``. It is serialized with pickle for
speed, and read back with an unpickler that refuses every class and
function, so the property can hold data but never run code. Every part is
then checked (types, lengths, tag order, VRs); anything wrong, in the whole
or in one record, raises :class:`SnapshotError` and the feed rebuilds the
index from Orthanc instead, with a log line saying why.
"""

from __future__ import annotations

import base64
import io
import itertools
import pickle
import re
import zlib
from collections.abc import Iterable
from typing import Any, NoReturn, Protocol

from orthanc_dpp.record import BULK, Record

#: Orthanc global property holding the snapshot (plugins use numbers >= 1024).
PROPERTY = 20511
#: Marks our snapshots, and the version of their layout.
MAGIC = "orthanc-dpp-index"
FORMAT = 2

_VR = re.compile(r"^[A-Z]{2}$")
_SCALARS = frozenset({str, int, float, bytes})


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
        self.layouts: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        self.records: list[tuple[int, tuple[Any, ...]]] = []
        self._layout_numbers: dict[tuple[tuple[int, ...], tuple[str, ...]], int] = {}
        self._record_numbers: dict[int, int] = {}
        self._keep: list[Record] = []  # ids stay valid while the writer lives

    def record(self, record: Record) -> int:
        number = self._record_numbers.get(id(record))
        if number is not None:
            return number
        key = (record.tags, record.vrs)
        layout = self._layout_numbers.get(key)
        if layout is None:
            layout = self._layout_numbers[key] = len(self.layouts)
            self.layouts.append(key)
        values = tuple(self.value(v) for v in record.raw_values)
        number = self._record_numbers[id(record)] = len(self.records)
        self._keep.append(record)
        self.records.append((layout, values))
        return number

    def value(self, value: Any) -> Any:
        if value is BULK:
            return {}
        if isinstance(value, Record):
            return [self.record(value)]
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        return value


def dump(entries: Iterable[tuple[str, Record]], last_seq: int) -> str:
    """Text for the global property: header, layouts, records."""
    writer = _Writer()
    ids = [(orthanc_id, writer.record(record)) for orthanc_id, record in entries]
    payload = pickle.dumps(
        (MAGIC, FORMAT, last_seq, writer.layouts, writer.records, ids), protocol=5
    )
    return base64.b64encode(zlib.compress(payload, 1)).decode("ascii")


# -- reading ----------------------------------------------------------------------------


def _bad(message: str) -> NoReturn:
    raise SnapshotError(message)


def _layouts(raw: Any) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    if not isinstance(raw, list):
        _bad("snapshot layouts are not a list")
    layouts = []
    for number, layout in enumerate(raw):
        if not (isinstance(layout, tuple) and len(layout) == 2):
            _bad(f"layout {number} is malformed")
        tags, vrs = layout
        if not (isinstance(tags, tuple) and isinstance(vrs, tuple) and len(tags) == len(vrs)):
            _bad(f"layout {number} is malformed")
        if not all(type(t) is int and 0 <= t <= 0xFFFFFFFF for t in tags):
            _bad(f"layout {number} has a tag that is not a tag")
        if any(a >= b for a, b in itertools.pairwise(tags)):
            _bad(f"layout {number} has tags out of order")
        if not all(isinstance(vr, str) and _VR.match(vr) for vr in vrs):
            _bad(f"layout {number} has a VR that is not a VR")
        layouts.append((tags, vrs))
    return layouts


def _records(raw: Any, layouts: list[tuple[tuple[int, ...], tuple[str, ...]]]) -> list[Record]:
    """Build the record table; a nested record may only name one built before it."""
    if not isinstance(raw, list):
        _bad("snapshot records are not a list")
    built: list[Record] = []
    scalars = _SCALARS

    def value(item: Any) -> Any:
        kind = type(item)
        if kind in scalars:
            return item
        if kind is tuple:
            return tuple([v if type(v) in scalars else value(v) for v in item])
        if kind is list and len(item) == 1 and type(item[0]) is int and 0 <= item[0] < len(built):
            return built[item[0]]
        if kind is dict and not item:
            return BULK
        _bad(f"a value is a {kind.__name__} that is not a value")

    for number, entry in enumerate(raw):
        if not (isinstance(entry, tuple) and len(entry) == 2):
            _bad(f"record {number} is malformed")
        layout, values = entry
        if type(layout) is not int or not 0 <= layout < len(layouts):
            _bad(f"record {number} names layout {layout!r}, which does not exist")
        tags, vrs = layouts[layout]
        if type(values) is not tuple or len(values) != len(tags):
            _bad(f"record {number}: its values do not fit its layout")
        try:
            checked = tuple([v if type(v) in scalars else value(v) for v in values])
            record = Record.from_parts(tags, vrs, checked)
        except SnapshotError as exc:
            _bad(f"record {number}: {exc}")
        built.append(record)
    return built


def load(text: str) -> tuple[list[tuple[str, Record]], int]:
    """The entries and change-log position of a snapshot made by :func:`dump`."""
    if not text:
        raise SnapshotError("no snapshot stored yet")
    try:
        payload = zlib.decompress(base64.b64decode(text, validate=True))
        stored = _DataOnlyUnpickler(io.BytesIO(payload)).load()
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"snapshot unreadable: {exc}") from exc
    if not (isinstance(stored, tuple) and len(stored) == 6 and stored[0] == MAGIC):
        raise SnapshotError("not a snapshot of this plugin (or of an older format)")
    _, version, last_seq, raw_layouts, raw_records, raw_entries = stored
    if version != FORMAT:
        raise SnapshotError(f"snapshot format {version}, this plugin reads format {FORMAT}")
    if type(last_seq) is not int or last_seq < 0 or not isinstance(raw_entries, list):
        raise SnapshotError("snapshot header is malformed")
    records = _records(raw_records, _layouts(raw_layouts))
    entries = []
    for position, entry in enumerate(raw_entries):
        if not (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and 0 <= entry[1] < len(records)
        ):
            raise SnapshotError(f"snapshot entry {position} is malformed")
        entries.append((entry[0], records[entry[1]]))
    return entries, last_seq
