"""The versions of a protocol: what it replaced, what replaced it (``GET .../{uid}/versions``).

A protocol names the protocols it was derived from in its Predecessor
Protocol Sequence (0018,990E), one SOP Instance Reference item each (PS3.3
C.34.2). Both directions are answered from the index alone: predecessors
from the protocol's record, successors from the index's value index of
those references (``ProtocolIndex.successors_of``); no file is read.

The chain is walked breadth first, nearest first, each protocol once, so a
cycle (two protocols naming each other, as a careless edit can make them)
ends the walk rather than looping. A predecessor that is not stored here is
listed with ``"Stored": false``: the chain is broken there, and the
physicist should know it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from orthanc_dpp.model.index import PREDECESSOR, Entry, ProtocolIndex
from orthanc_dpp.model.key_table import tag
from orthanc_dpp.model.record import Record

REFERENCED_SOP_CLASS_UID: Final = tag("ReferencedSOPClassUID")

#: What a link shows of a stored protocol beyond its UIDs: which one it is
#: and when and by whom that version was made.
SHOWN: Final = (
    "ProtocolName",
    "EquipmentModality",
    "Manufacturer",
    "ManufacturerModelName",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentCreatorName",
)
_SHOWN_TAGS: Final = tuple((keyword, tag(keyword)) for keyword in SHOWN)

#: A reference: (SOP Instance UID, SOP Class UID named with it, the entry if stored).
Link = tuple[str, str | None, Entry | None]


def predecessors(index: ProtocolIndex, entry: Entry) -> list[Link]:
    """The protocols ``entry`` names as its predecessors, in the sequence's order."""
    sequence, uid_tag = PREDECESSOR
    links: list[Link] = []
    for item in entry.record.values(sequence) or ():
        if not isinstance(item, Record):
            continue
        uid = item.first(uid_tag)
        if uid is None or not str(uid).strip():
            continue
        uid = str(uid)
        sop_class = item.first(REFERENCED_SOP_CLASS_UID)
        links.append((uid, None if sop_class is None else str(sop_class), index.get(uid)))
    return links


def successors(index: ProtocolIndex, entry: Entry) -> list[Link]:
    """The stored protocols that name ``entry`` as a predecessor."""
    return [
        (e.sop_instance_uid, e.sop_class_uid, e)
        for e in index.successors_of(entry.sop_instance_uid)
    ]


def versions(index: ProtocolIndex, entry: Entry) -> dict[str, list[dict[str, Any]]]:
    """``{"Predecessors": [...], "Successors": [...]}``, each nearest first."""
    return {
        "Predecessors": _walk(index, entry, predecessors),
        "Successors": _walk(index, entry, successors),
    }


def _walk(
    index: ProtocolIndex, start: Entry, step: Callable[[ProtocolIndex, Entry], Iterable[Link]]
) -> list[dict[str, Any]]:
    """Breadth first from ``start``; each UID once (``start`` included), which ends cycles."""
    seen = {start.sop_instance_uid}
    found: list[dict[str, Any]] = []
    frontier = [start]
    distance = 0
    while frontier:
        distance += 1
        following: list[Entry] = []
        for entry in frontier:
            for uid, sop_class, stored in step(index, entry):
                if uid in seen:
                    continue
                seen.add(uid)
                found.append(_link(uid, sop_class, stored, distance, entry.sop_instance_uid))
                if stored is not None:
                    following.append(stored)
        frontier = following
    return found


def _link(
    uid: str, sop_class: str | None, stored: Entry | None, distance: int, of: str
) -> dict[str, Any]:
    """One version; ``Of``: the protocol it was reached from; ``Distance``: steps from the start."""
    link: dict[str, Any] = {
        "SOPInstanceUID": uid,
        "Stored": stored is not None,
        "Distance": distance,
        "Of": of,
    }
    if stored is None:
        link["SOPClassUID"] = sop_class
        return link
    link["OrthancID"] = stored.orthanc_id
    link["SOPClassUID"] = stored.sop_class_uid
    for keyword, attribute in _SHOWN_TAGS:
        value = stored.record.first(attribute)
        link[keyword] = None if value is None else str(value)
    return link
