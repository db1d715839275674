"""How often each Defined Procedure Protocol was performed, and when last.

PS3.3 C.34.2.3 names the way: the Referenced Defined Protocol Sequence
(0018,990C) of the Performed Procedure Protocol instances (CT and XA) tells
which defined protocols each performance followed, so counting it over the
performed instances gives the frequency of use. Those instances are
ordinary patient instances in Orthanc, not part of the library: this model
only remembers, per performed instance (its Orthanc ID), the defined
protocols it references and when it was performed, so that a deletion
takes back exactly what its instance added.

When it was performed is read from the first of these pairs with a date
(:data:`WHEN`): Performed Procedure Step Start Date/Time (General Series
Module, the moment the performance began, Type 3), then Series, Study,
Content and Instance Creation Date/Time (later fallbacks describe the
series, the study or the file rather than the performance). The value is
the date followed by the time without its fraction, ``YYYYMMDDHHMMSS`` or
shorter, which orders as text.

The counts survive a restart in an Orthanc global property of their own
(:data:`PROPERTY`, beside the index snapshot's), saved with the index
snapshot and at the same change-log position (:func:`dump`, :func:`load`):
the feed uses the two together or neither, so a start-up never reads the
performed instances again unless it rebuilds the index too.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pynetdicom import sop_class as sc

#: Orthanc global property holding the usage (the index snapshot's is 20511).
PROPERTY = 20512
MAGIC = "orthanc-dpp-usage"

CT_PERFORMED: Final = str(sc.CTPerformedProcedureProtocolStorage)
XA_PERFORMED: Final = str(sc.XAPerformedProcedureProtocolStorage)
#: The SOP classes whose instances are counted.
PERFORMED_CLASSES: Final = frozenset({CT_PERFORMED, XA_PERFORMED})

#: (date keyword, time keyword), in the order they are tried for "when performed".
WHEN: Final = (
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
    ("SeriesDate", "SeriesTime"),
    ("StudyDate", "StudyTime"),
    ("ContentDate", "ContentTime"),
    ("InstanceCreationDate", "InstanceCreationTime"),
)
#: Every attribute :func:`performed` reads: all a reader needs to decode.
KEYWORDS: Final = ("ReferencedDefinedProtocolSequence", *(k for pair in WHEN for k in pair))


@dataclass(frozen=True, slots=True)
class Performed:
    """One performed instance: the defined protocols it references, and when.

    The UIDs are interned: many performed instances name the same few
    protocols, so a million of them hold each UID once.
    """

    defined: tuple[str, ...]
    when: str


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    return str(value).strip(" \0") if value is not None else ""


def performed(ds: Any) -> Performed:
    """What a Performed Procedure Protocol dataset (pydicom) says of its use."""
    uids: list[str] = []
    for item in ds.get("ReferencedDefinedProtocolSequence", None) or ():
        uid = _text(item, "ReferencedSOPInstanceUID")
        if uid and uid not in uids:
            uids.append(sys.intern(uid))
    when = ""
    for date_keyword, time_keyword in WHEN:
        date = _text(ds, date_keyword)
        if date:
            when = date + _text(ds, time_keyword).partition(".")[0]
            break
    return Performed(tuple(uids), when)


class ProtocolUsage:
    """Counts and last use per defined protocol's SOP Instance UID; thread-safe."""

    def __init__(self) -> None:
        self._performed: dict[str, Performed] = {}  # Orthanc ID -> what it references
        self._users: dict[str, set[str]] = {}  # defined UID -> Orthanc IDs referencing it
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Changes with every add or remove (for the snapshot: save when it moved).
        self.version = 0

    def __len__(self) -> int:
        return len(self._performed)

    def add(self, orthanc_id: str, found: Performed) -> None:
        """Count a performed instance (again: a second add replaces the first)."""
        with self._lock:
            self._drop(orthanc_id)
            self._performed[orthanc_id] = found
            for uid in found.defined:
                self._users.setdefault(uid, set()).add(orthanc_id)
                if found.when > self._last.get(uid, ""):
                    self._last[uid] = found.when
            self.version += 1

    def remove(self, orthanc_id: str) -> bool:
        """Take back what a deleted performed instance counted; False if it was not counted."""
        with self._lock:
            removed = self._drop(orthanc_id)
            if removed:
                self.version += 1
            return removed

    def _drop(self, orthanc_id: str) -> bool:
        """Lock held."""
        found = self._performed.pop(orthanc_id, None)
        if found is None:
            return False
        for uid in found.defined:
            users = self._users[uid]
            users.discard(orthanc_id)
            if not users:
                del self._users[uid]
                self._last.pop(uid, None)
            elif found.when and found.when == self._last.get(uid):
                # The latest use went: the next latest, from the instances left.
                self._last[uid] = max(self._performed[other].when for other in users)
        return True

    def count(self, uid: str) -> int:
        return len(self._users.get(uid, ()))

    def of(self, uid: str) -> dict[str, Any]:
        """``{"Count": n, "LastUsed": "YYYYMMDD..." or None}`` for a defined protocol."""
        with self._lock:
            return {"Count": len(self._users.get(uid, ())), "LastUsed": self._last.get(uid) or None}

    def orthanc_ids(self) -> set[str]:
        with self._lock:
            return set(self._performed)

    def rows(self) -> list[Row]:
        """Every counted instance as plain data (the snapshot keeps them)."""
        with self._lock:
            return [(k, p.defined, p.when) for k, p in self._performed.items()]

    def load(self, rows: Iterable[Row]) -> None:
        """Replace the content with :meth:`rows` of an earlier run."""
        with self._lock:
            self._performed, self._users, self._last = {}, {}, {}
        for orthanc_id, defined, when in rows:
            self.add(orthanc_id, Performed(defined, when))


Row = tuple[str, tuple[str, ...], str]


class UsageSnapshotError(ValueError):
    """The stored usage cannot be used; the message says why."""


def dump(rows: Iterable[Row], last_seq: int) -> str:
    """Text for the global property: the rows of :meth:`ProtocolUsage.rows` and the position."""
    data = {"Magic": MAGIC, "LastChange": last_seq, "Rows": [list(row) for row in rows]}
    text = json.dumps(data, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(text, 1)).decode("ascii")


def load(text: str) -> tuple[list[Row], int]:
    """The rows and change-log position of a text made by :func:`dump`, every part checked."""
    if not text:
        raise UsageSnapshotError("no usage stored yet")
    try:
        data = json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    except Exception as exc:
        raise UsageSnapshotError(f"usage unreadable: {exc}") from exc
    if not (isinstance(data, dict) and data.get("Magic") == MAGIC):
        raise UsageSnapshotError("not the usage of this plugin")
    last_seq, raw = data.get("LastChange"), data.get("Rows")
    if type(last_seq) is not int or last_seq < 0 or not isinstance(raw, list):
        raise UsageSnapshotError("usage header is malformed")
    rows: list[Row] = []
    for position, row in enumerate(raw):
        if not (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and isinstance(row[1], list)
            and all(isinstance(uid, str) for uid in row[1])
            and isinstance(row[2], str)
        ):
            raise UsageSnapshotError(f"usage row {position} is malformed")
        rows.append((row[0], tuple([sys.intern(uid) for uid in row[1]]), row[2]))
    return rows, last_seq
