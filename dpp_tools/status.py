"""DIMSE statuses by name, from pynetdicom's per-service tables (PS3.4, PS3.7 Annex C).

A user reading ``0xA801`` learns little; ``0xA801 Failure: Move destination
unknown`` says what happened. The service matters: 0xA700 is "Out of
Resources" for C-STORE and C-FIND, and 0xB000 a coercion warning for C-STORE
but "one or more failures" for C-GET and C-MOVE.
"""

from __future__ import annotations

import enum

from pydicom import Dataset
from pynetdicom import status as pynetdicom_status

_TABLES: dict[str, dict[int, tuple[str, str]]] = {
    "C-ECHO": pynetdicom_status.VERIFICATION_SERVICE_CLASS_STATUS,
    "C-STORE": pynetdicom_status.STORAGE_SERVICE_CLASS_STATUS,
    "C-FIND": pynetdicom_status.QR_FIND_SERVICE_CLASS_STATUS,
    "C-GET": pynetdicom_status.QR_GET_SERVICE_CLASS_STATUS,
    "C-MOVE": pynetdicom_status.QR_MOVE_SERVICE_CLASS_STATUS,
}


class Category(enum.Enum):
    """The status categories of PS3.7 C.1 as pynetdicom names them."""

    SUCCESS = pynetdicom_status.STATUS_SUCCESS
    WARNING = pynetdicom_status.STATUS_WARNING
    FAILURE = pynetdicom_status.STATUS_FAILURE
    CANCEL = pynetdicom_status.STATUS_CANCEL
    PENDING = pynetdicom_status.STATUS_PENDING
    UNKNOWN = pynetdicom_status.STATUS_UNKNOWN


def category(code: int, service: str) -> Category:
    """The category of `code` for `service` (``C-FIND``, ...); unlisted codes by range."""
    entry = _TABLES[service].get(code)
    return Category(entry[0] if entry else pynetdicom_status.code_to_category(code))


def name(code: int, service: str) -> str:
    """``0xA801 Failure: Move destination unknown``, or ``0x0000 Success``."""
    entry = _TABLES[service].get(code)
    label = entry[1] if entry else ""
    text = category(code, service).value + (f": {label}" if label else "")
    return f"0x{code:04X} {text}"


def describe(status: Dataset, service: str) -> str:
    """A response's status by name, with the Error Comment and Offending Element it carries."""
    text = name(int(status.Status), service)
    comment = status.get("ErrorComment")
    if comment:
        text += f" ({comment})"
    offending = status.get("OffendingElement")
    if offending:
        tags = [offending] if isinstance(offending, int) else list(offending)
        text += ", offending element " + ", ".join(
            f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in tags
        )
    return text
