"""The in-memory protocol index that answers C-FIND (docs/design.md, "The protocol index").

One :class:`Entry` per stored instance (DPP and Protocol Approval alike; the
query decides which SOP classes it answers), keyed by Orthanc ID. Readers are
association threads, the writer is the feed's worker thread (and REST or
C-STORE handlers), so every structure is guarded by one lock, held only for
dictionary work: records are built before taking it, and :meth:`find` takes
a snapshot of its candidates under the lock and matches outside it. Entries
are immutable, so a snapshot stays valid while the index changes.

Secondary indexes map normalized values (``matching.normalizer``) of a few
attributes that queries usually constrain (SOP class, protocol name,
modality, manufacturer, codes) to entry numbers. They only narrow the
candidates: every candidate still goes through ``Query.matches``, so the
answer equals a brute-force filter over all entries.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from orthanc_dpp.model.key_table import SOP_CLASS_UID, SOP_INSTANCE_UID, tag
from orthanc_dpp.model.matching import Leaf, SequenceKey, normalizer
from orthanc_dpp.model.query import Query
from orthanc_dpp.model.record import Record, stored_values
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record

CODE_VALUE: Final = tag("CodeValue")
CODE_SEQUENCES: Final = (
    tag("PotentialScheduledProtocolCodeSequence"),
    tag("PotentialRequestedProcedureCodeSequence"),
    tag("PotentialReasonsForProcedureCodeSequence"),
    tag("ResponsibleGroupCodeSequence"),
    tag("AnatomicRegionSequence"),
    tag("PrimaryAnatomicStructureSequence"),
)

#: Where a Protocol Approval names the protocols it is about (PS3.4 II.6.1.3.2.1
#: suggests indexing it: "which approvals does this protocol have" is the usual query).
APPROVAL_SUBJECT: Final = (tag("ApprovalSubjectSequence"), tag("ReferencedSOPInstanceUID"))
#: Where a protocol names the protocols it replaces (PS3.3 C.34.2, Protocol
#: Context: SOP Instance Reference Macro items); indexed so that the versions
#: after a protocol are found without reading a file.
PREDECESSOR: Final = (tag("PredecessorProtocolSequence"), tag("ReferencedSOPInstanceUID"))

#: Top-level attributes with a value index.
INDEXED: Final = (
    tag("ProtocolName"),
    tag("EquipmentModality"),
    tag("Manufacturer"),
    tag("ManufacturerModelName"),
    tag("InstitutionName"),
    tag("ContentCreatorName"),
    tag("InstanceCreationDate"),
)
#: (sequence, item attribute) pairs with a value index.
INDEXED_ITEMS: Final = (
    *((seq, CODE_VALUE) for seq in CODE_SEQUENCES),
    (tag("ModelSpecificationSequence"), tag("Manufacturer")),
    (tag("ModelSpecificationSequence"), tag("ManufacturerModelName")),
    (tag("CustodialOrganizationSequence"), tag("InstitutionName")),
    APPROVAL_SUBJECT,
    PREDECESSOR,
)

# A wild card or range is tried on each distinct value of an index only when
# they are few compared with the entries; otherwise matching streams.
_SCAN_FRACTION: Final = 8
_CANCEL_CHECK_EVERY: Final = 64

Path = int | tuple[int, int]
IdSet = int | set[int]


class Entry:
    """One indexed instance. Immutable: a new version is a new Entry."""

    __slots__ = (
        "assertions",
        "number",
        "orthanc_id",
        "record",
        "search_keys",
        "sop_class_uid",
        "sop_instance_uid",
    )

    def __init__(self, number: int, orthanc_id: str, record: Record) -> None:
        self.number = number  # position in the index's stable order
        self.orthanc_id = orthanc_id
        self.record = record
        self.sop_instance_uid = str(record.first(SOP_INSTANCE_UID) or "")
        self.sop_class_uid = str(record.first(SOP_CLASS_UID) or "")
        #: What ``model.search`` compares, derived from ``record`` by that module on
        #: the entry's first search (not here: loading stays as fast as before, and
        #: entries never searched cost nothing). A pure function of the record, so
        #: threads racing to fill it store equal values and the entry stays
        #: immutable in every way a reader can tell.
        self.search_keys: Any = None
        #: A Protocol Approval's assertions as ``model.approvals`` parsed them on first
        #: use (the same way: derived from ``record``, filled once, equal if raced).
        self.assertions: Any = None

    def __repr__(self) -> str:
        return f"Entry({self.orthanc_id!r}, {self.sop_instance_uid!r})"

    def summary(self) -> dict[str, Any]:
        """Key attributes as JSON-able values, for the REST API."""
        r = self.record
        models = [
            i for i in r.values(tag("ModelSpecificationSequence")) or () if isinstance(i, Record)
        ]
        return {
            "OrthancID": self.orthanc_id,
            "SOPInstanceUID": self.sop_instance_uid,
            "SOPClassUID": self.sop_class_uid,
            "ProtocolName": _text(r.first(tag("ProtocolName"))),
            "EquipmentModality": _text(r.first(tag("EquipmentModality"))),
            "Manufacturer": _text(r.first(tag("Manufacturer"))),
            "ManufacturerModelName": _text(r.first(tag("ManufacturerModelName"))),
            "Manufacturers": _distinct(_text(m.first(tag("Manufacturer"))) for m in models),
            "ManufacturerModelNames": _distinct(
                _text(m.first(tag("ManufacturerModelName"))) for m in models
            ),
            "InstitutionName": _text(r.first(tag("InstitutionName"))),
            "ScheduledProtocolCodes": [
                {
                    "CodeValue": _text(c.first(tag("CodeValue")) or c.first(tag("LongCodeValue"))),
                    "CodingSchemeDesignator": _text(c.first(tag("CodingSchemeDesignator"))),
                    "CodeMeaning": _text(c.first(tag("CodeMeaning"))),
                }
                for c in r.values(tag("PotentialScheduledProtocolCodeSequence")) or ()
                if isinstance(c, Record)
            ],
            "InstanceCreationDate": _text(r.first(tag("InstanceCreationDate"))),
        }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _distinct(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


# -- multimaps that store a bare int for the usual single entry -----------------


def _add(index: dict[Any, IdSet], key: Any, number: int) -> None:
    current = index.get(key)
    if current is None:
        index[key] = number
    elif isinstance(current, int):
        if current != number:
            index[key] = {current, number}
    else:
        current.add(number)


def _discard(index: dict[Any, IdSet], key: Any, number: int) -> None:
    current = index.get(key)
    if current is None:
        return
    if isinstance(current, int):
        if current == number:
            del index[key]
        return
    current.discard(number)
    if len(current) == 1:
        index[key] = next(iter(current))
    elif not current:
        del index[key]


def _ids(value: IdSet | None) -> Iterable[int]:
    if value is None:
        return ()
    return (value,) if isinstance(value, int) else value


def _index_keys(record: Record) -> set[tuple[Path, Any]]:
    """(path, normalized value) pairs under which ``record`` is indexed.

    One pass over the record's attributes (a start-up indexes every stored
    protocol: a lookup per indexed path cost more than the pass).
    """
    found: set[tuple[Path, Any]] = set()
    add = found.add
    for attribute, value in zip(record.tags, record.raw_values, strict=True):
        if attribute in _TOP_LEVEL:
            norm = _NORMS[attribute]
            for one in stored_values(value) or ():
                key = norm(one)
                if key is not None:
                    add((attribute, key))
        in_items = _IN_ITEMS.get(attribute)
        if in_items is not None:
            for item in stored_values(value) or ():
                if isinstance(item, Record):
                    for path, item_attribute, norm in in_items:
                        for one in item.values(item_attribute) or ():
                            key = norm(one)
                            if key is not None:
                                add((path, key))
    return found


_NORMS: Final[dict[int, Callable[[Any], Any]]] = {
    attribute: normalizer(dictionary_VR(attribute))
    for attribute in {*INDEXED, *(t for _, t in INDEXED_ITEMS)}
}
_TOP_LEVEL: Final = frozenset(INDEXED)
#: Sequence -> (path, item attribute, normalizer) of each indexed attribute of its items.
_IN_ITEMS: Final[dict[int, list[tuple[Path, int, Callable[[Any], Any]]]]] = {}
for _seq, _attribute in INDEXED_ITEMS:
    _IN_ITEMS.setdefault(_seq, []).append(((_seq, _attribute), _attribute, _NORMS[_attribute]))


class ProtocolIndex:
    """Thread-safe index of stored protocols; see the module docstring."""

    def __init__(self, records: RecordCache | None = None, *, newest_wins: bool = False) -> None:
        #: Layouts, shared items and sequence caches of this index's records:
        #: every record put here must be built with it (records compare
        #: layouts by identity).
        self.records = RecordCache() if records is None else records
        #: One SOP Instance UID, one entry. When a second Orthanc instance
        #: holds a UID already indexed under another (stored through another
        #: node, or by a path the plugin does not guard), either the first
        #: stays (``newest_wins`` false: Orthanc keeps first copies) or the
        #: newcomer replaces it (Orthanc's OverwriteInstances).
        self.newest_wins = newest_wins
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self.version = 0  # bumped by every change: tells when a snapshot is stale
        self._entries: dict[int, Entry] = {}  # number -> entry, in stable order
        self._by_orthanc_id: dict[str, int] = {}
        self._by_uid: dict[str, IdSet] = {}
        self._by_class: dict[str, set[int]] = {}
        paths: tuple[Path, ...] = (*INDEXED, *INDEXED_ITEMS)
        self._values: dict[Path, dict[Any, IdSet]] = {path: {} for path in paths}

    # -- changes -----------------------------------------------------------------

    def put(self, orthanc_id: str, ds: Dataset) -> str | None:
        """Index ``ds`` (the instance as received) under ``orthanc_id``, replacing any.

        Returns the Orthanc ID of another instance with the same SOP Instance
        UID, if there was one: kept (and ``ds`` not indexed) or replaced,
        as ``newest_wins`` says.
        """
        # to_record: the slow part, unlocked
        return self.put_record(orthanc_id, to_record(ds, self.records))

    def put_record(self, orthanc_id: str, record: Record) -> str | None:
        """Index an already built record (from a snapshot) under ``orthanc_id``; see :meth:`put`.

        ``record`` must have been built with :attr:`records`.
        """
        keys = _index_keys(record)
        uid = str(record.first(SOP_INSTANCE_UID) or "")
        with self._lock:
            other = self._other_holder(orthanc_id, uid)
            if other is not None:
                if not self.newest_wins:
                    return other.orthanc_id
                self._by_orthanc_id.pop(other.orthanc_id, None)
                del self._entries[other.number]
                self._unindex(other)
            self._store(orthanc_id, record, keys)
            return None if other is None else other.orthanc_id

    def _other_holder(self, orthanc_id: str, uid: str) -> Entry | None:
        """The entry of another Orthanc instance with SOP Instance UID ``uid`` (lock held)."""
        for number in _ids(self._by_uid.get(uid)) if uid else ():
            entry = self._entries[number]
            if entry.orthanc_id != orthanc_id:
                return entry
        return None

    def _store(self, orthanc_id: str, record: Record, keys: set[tuple[Path, Any]]) -> None:
        """Index ``record`` under ``orthanc_id`` (lock held)."""
        self.version += 1
        number = self._by_orthanc_id.get(orthanc_id)
        if number is not None:
            self._unindex(self._entries[number])  # keeps its place in the order
        else:
            number = next(self._numbers)
        entry = Entry(number, orthanc_id, record)
        self._entries[number] = entry
        self._by_orthanc_id[orthanc_id] = number
        if entry.sop_instance_uid:
            _add(self._by_uid, entry.sop_instance_uid, number)
        self._by_class.setdefault(entry.sop_class_uid, set()).add(number)
        for path, key in keys:
            _add(self._values[path], key, number)

    def remove(self, orthanc_id: str) -> bool:
        """Forget ``orthanc_id``; False if it was not indexed."""
        with self._lock:
            number = self._by_orthanc_id.pop(orthanc_id, None)
            if number is None:
                return False
            self.version += 1
            entry = self._entries.pop(number)
            self._unindex(entry)
            return True

    def _unindex(self, entry: Entry) -> None:
        number = entry.number
        if entry.sop_instance_uid:
            _discard(self._by_uid, entry.sop_instance_uid, number)
        same_class = self._by_class.get(entry.sop_class_uid)
        if same_class is not None:
            same_class.discard(number)
            if not same_class:
                del self._by_class[entry.sop_class_uid]
        for path, key in _index_keys(entry.record):
            _discard(self._values[path], key, number)

    # -- lookups -----------------------------------------------------------------

    def get(self, sop_instance_uid: str) -> Entry | None:
        """The entry with this SOP Instance UID (one at most: see ``newest_wins``)."""
        with self._lock:
            numbers = list(_ids(self._by_uid.get(sop_instance_uid)))
            return self._entries[max(numbers)] if numbers else None

    def get_by_orthanc_id(self, orthanc_id: str) -> Entry | None:
        with self._lock:
            number = self._by_orthanc_id.get(orthanc_id)
            return None if number is None else self._entries[number]

    def approvals_of(self, sop_instance_uid: str) -> list[Entry]:
        """The Protocol Approval entries whose Approval Subject Sequence names this UID."""
        return self._naming(APPROVAL_SUBJECT, sop_instance_uid)

    def successors_of(self, sop_instance_uid: str) -> list[Entry]:
        """The entries whose Predecessor Protocol Sequence names this UID, in the stable order."""
        return self._naming(PREDECESSOR, sop_instance_uid)

    def _naming(self, path: tuple[int, int], sop_instance_uid: str) -> list[Entry]:
        key = _NORMS[path[1]](sop_instance_uid)
        with self._lock:
            numbers = sorted(_ids(self._values[path].get(key)))
            return [self._entries[n] for n in numbers]

    def approval_subjects(self) -> Callable[[str], bool]:
        """A test of a SOP Instance UID: may :meth:`approvals_of` it be non-empty?

        Taken once for a whole list request (one lock, not one per protocol):
        false means no approval in the index, as it is now, names that UID.
        """
        norm = _NORMS[APPROVAL_SUBJECT[1]]
        with self._lock:
            named = set(self._values[APPROVAL_SUBJECT])
        return lambda uid: norm(uid) in named

    def orthanc_ids(self) -> set[str]:
        with self._lock:
            return set(self._by_orthanc_id)

    def __len__(self) -> int:
        return len(self._entries)

    def counts_by_sop_class(self) -> dict[str, int]:
        with self._lock:
            return {uid: len(numbers) for uid, numbers in self._by_class.items()}

    def page(self, offset: int, limit: int) -> list[Entry]:
        """``limit`` entries from ``offset`` in a stable order (order of first indexing)."""
        with self._lock:
            return list(itertools.islice(self._entries.values(), max(offset, 0), offset + limit))

    def snapshot(self) -> list[Entry]:
        """Every entry, in the stable order."""
        with self._lock:
            return list(self._entries.values())

    # -- C-FIND ------------------------------------------------------------------

    def find(self, query: Query, is_cancelled: Callable[[], bool]) -> Iterator[Entry]:
        """Stream the entries that match ``query``, in the stable order.

        Candidates are fixed when iteration starts; matching then runs outside
        the lock, one entry at a time, so the first match is yielded before
        the others are computed. Stops (without raising) once ``is_cancelled``
        turns true.
        """
        with self._lock:
            numbers = self._candidates(query)
            if numbers is None:
                candidates = list(self._entries.values())
            else:
                candidates = [self._entries[n] for n in sorted(numbers)]
        for count, entry in enumerate(candidates):
            if count % _CANCEL_CHECK_EVERY == 0 and is_cancelled():
                return
            if query.matches(entry.record):
                yield entry

    def _candidates(self, query: Query) -> set[int] | None:
        """Entry numbers that may match (a superset), or None for all. Lock held."""
        found: set[int] | None = None
        for matcher in query.matchers:
            narrowed: set[int] | None = None
            if isinstance(matcher, Leaf):
                if matcher.tag == SOP_INSTANCE_UID and matcher.exact is not None:
                    narrowed = set()
                    for uid in matcher.exact:
                        narrowed.update(_ids(self._by_uid.get(uid)))
                elif matcher.tag in self._values:
                    narrowed = self._narrow(matcher, self._values[matcher.tag])
            elif isinstance(matcher, SequenceKey):
                for item in matcher.items:
                    path = (matcher.tag, item.tag)
                    if isinstance(item, Leaf) and path in self._values:
                        narrowed = _intersect(narrowed, self._narrow(item, self._values[path]))
            found = _intersect(found, narrowed)
            if found is not None and not found:
                return found
        if found is None:
            return None
        # Test the few candidates against each class rather than building the
        # union of the class sets: that was O(library) for every query.
        classes = [ids for uid in query.sop_classes if (ids := self._by_class.get(uid))]
        return {n for n in found if any(n in ids for ids in classes)}

    def _narrow(self, matcher: Leaf, values: dict[Any, IdSet]) -> set[int] | None:
        if matcher.exact is not None:
            keys: Iterable[Any] = (k for k in matcher.exact if k in values)
        elif len(values) * _SCAN_FRACTION <= max(len(self._entries), 1024):
            keys = [k for k in values if matcher.test(k)]
        else:
            return None
        found: set[int] = set()
        for key in keys:
            found.update(_ids(values[key]))
        return found


def _intersect(a: set[int] | None, b: set[int] | None) -> set[int] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b
