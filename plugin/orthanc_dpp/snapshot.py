"""The protocol index saved in Orthanc's database, for a fast start-up.

Building a record means reading and decoding the instance's file: about
4 ms each, so 100,000 protocols would take minutes. The feed therefore saves
the records, with the change-log position they reflect, as one Orthanc
global property (shared by every node on one database) and starts from it;
what changed since is caught up from ``/changes`` and the reconciliation.

The payload is a pickle of records only. It is read with an unpickler that
accepts nothing but the record classes, so a tampered property cannot run
code; anything unreadable is reported and the index is rebuilt from Orthanc.
"""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from collections.abc import Iterable
from typing import Any, Protocol

from orthanc_dpp.record import Record

#: Orthanc global property holding the snapshot (plugins use numbers >= 1024).
PROPERTY = 20511
#: Bumped whenever the record layout changes; older snapshots are ignored.
FORMAT = 1

_ALLOWED = {
    ("orthanc_dpp.record", "Record"),
    ("orthanc_dpp.record", "_layout"),
    ("orthanc_dpp.record", "BULK"),
}


class SnapshotError(ValueError):
    """The stored snapshot cannot be used; the message says why."""


class SnapshotStore(Protocol):
    """Where snapshots live (Orthanc's global properties, or a test double)."""

    def read(self) -> str: ...

    def write(self, text: str) -> None: ...


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise SnapshotError(f"snapshot refers to {module}.{name}, which is not a record class")
        return super().find_class(module, name)


def dump(entries: Iterable[tuple[str, Record]], last_seq: int) -> str:
    """Text for the global property: format, change-log position, records."""
    payload = pickle.dumps((FORMAT, last_seq, list(entries)), protocol=5)
    return base64.b64encode(zlib.compress(payload, 1)).decode("ascii")


def load(text: str) -> tuple[list[tuple[str, Record]], int]:
    """The entries and change-log position of a snapshot made by :func:`dump`."""
    if not text:
        raise SnapshotError("no snapshot stored yet")
    try:
        payload = zlib.decompress(base64.b64decode(text, validate=True))
        stored = _RecordUnpickler(io.BytesIO(payload)).load()
    except SnapshotError:
        raise
    except Exception as exc:
        raise SnapshotError(f"snapshot unreadable: {exc}") from exc
    if not (isinstance(stored, tuple) and len(stored) == 3):
        raise SnapshotError("snapshot has an unknown shape")
    version, last_seq, entries = stored
    if version != FORMAT:
        raise SnapshotError(f"snapshot format {version}, this plugin reads format {FORMAT}")
    if not isinstance(last_seq, int) or not isinstance(entries, list):
        raise SnapshotError("snapshot has an unknown shape")
    for entry in entries:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], Record)
        ):
            raise SnapshotError("snapshot holds something other than records")
    return entries, last_seq
