"""Identifiers the DPP SCU sends, built from the JSON of a REST request.

:func:`build_identifier` turns the JSON keys of ``POST
/dpp/modalities/{id}/find`` (DICOM JSON, or keywords with plain values, as
Orthanc's ``/query`` takes them) into a C-FIND identifier, refusing a bad key
with :class:`BadKey` naming it, before any association is requested: a key
the remote would refuse halfway through a C-FIND is refused here.
:func:`retrieve_identifier` is the C-GET/C-MOVE identifier, and
:func:`answer_json` what a C-FIND answer becomes. :func:`is_uid` and
:func:`is_ae_title` check what a retrieve request names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue

_TAG_HEX = re.compile(r"^([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class BadKey(ValueError):
    """A query key that cannot become part of an identifier; ``key`` is as the caller wrote it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def is_uid(text: str) -> bool:
    """A valid UID (PS3.5 9.1): numbers without leading zeros and dots, at most 64 characters."""
    return len(text) <= 64 and bool(_UID.match(text))


def is_ae_title(text: str) -> bool:
    """A valid AE title (PS3.5 6.2): 1 to 16 printable ASCII characters, no backslash."""
    return (
        0 < len(text) <= 16
        and bool(text.strip())
        and all(" " <= c <= "~" and c != "\\" for c in text)
    )


def parse_tag(key: str) -> int:
    """The tag of a key written as a keyword, ``00181030`` or ``0018,1030``."""
    found = _TAG_HEX.match(key)
    if found:
        return int(found.group(1) + found.group(2), 16)
    tag = tag_for_keyword(key)
    if tag is None:
        raise BadKey(key, "not a DICOM keyword or tag")
    return tag


def build_identifier(keys: Mapping[str, Any]) -> Dataset:
    """A C-FIND identifier from JSON keys.

    Each key is a keyword (``ProtocolName``) or a tag (``00181030``,
    ``0018,1030``); its value is either a DICOM JSON element (``{"vr": "LO",
    "Value": [...]}``) or plain JSON: a string (empty: return this key), a
    number, a list for several values, an object or a list of objects for
    the items of a sequence (written the same way). Raises :class:`BadKey`.
    """
    if not isinstance(keys, Mapping):
        raise BadKey("", "the query must be a JSON object of keys")
    ds = Dataset()
    for key, value in keys.items():
        element = _element(str(key), value)
        ds.add(element)
        _check_encodable(str(key), element)
    if any(_non_ascii(element) for element in ds.iterall()) and "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


#: Groups no identifier holds: the command (0000) and file meta (0002)
#: groups belong to the message and the file, not to the dataset; items and
#: delimiters (FFFE) are not attributes; PS3.5 7.1 forbids the others.
_NOT_IN_IDENTIFIERS: Final = {
    0x0000: "a command element (group 0000)",
    0x0002: "a file meta element (group 0002)",
    0xFFFE: "an item or delimitation tag (group FFFE)",
    **{group: f"group {group:04X}, which PS3.5 7.1 reserves" for group in (1, 3, 5, 7, 0xFFFF)},
}


def _element(key: str, value: Any) -> DataElement:
    tag = parse_tag(key)
    if (what := _NOT_IN_IDENTIFIERS.get(tag >> 16)) is not None:
        # Sent, it would make the remote refuse the whole C-FIND (or misread it).
        raise BadKey(key, f"{what}: not a query key")
    if isinstance(value, Mapping) and "vr" in value:
        try:
            return Dataset.from_json({f"{tag:08X}": dict(value)})[tag]
        except Exception as exc:
            raise BadKey(key, f"not a DICOM JSON element: {exc}") from None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = ""
    if not vr:
        raise BadKey(key, 'unknown to the DICOM dictionary: give it as DICOM JSON with its "vr"')
    if " or " in vr:
        raise BadKey(key, f'its VR is {vr}: give it as DICOM JSON with its "vr"')
    if vr == "SQ":
        return DataElement(tag, vr, _items(key, value))
    if isinstance(value, Mapping):
        raise BadKey(key, f"VR {vr} takes a string, a number or a list, not an object")
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, Mapping | list) for v in values):
        raise BadKey(key, f"VR {vr} takes strings or numbers")
    if value is None or value == "" or value == []:
        return DataElement(tag, vr, empty_value_for_VR(vr))
    converted = [_plain(key, vr, v) for v in values]
    return DataElement(tag, vr, converted if len(converted) > 1 else converted[0])


def _plain(key: str, vr: str, value: Any) -> Any:
    if isinstance(value, bool):
        raise BadKey(key, f"VR {vr} does not take true or false")
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "AT"):
        if not isinstance(value, int):
            raise BadKey(key, f"VR {vr} takes whole numbers, got {value!r}")
        return value
    if vr in ("FL", "FD"):
        if not isinstance(value, int | float):
            raise BadKey(key, f"VR {vr} takes numbers, got {value!r}")
        return float(value)
    if vr in ("IS", "DS"):
        try:
            (int if vr == "IS" else float)(str(value).strip())
        except ValueError:
            number = "a whole number" if vr == "IS" else "a decimal number"
            raise BadKey(key, f"VR {vr}: {value!r} is not {number}") from None
        return str(value)
    if not isinstance(value, str):
        raise BadKey(key, f"VR {vr} takes strings, got {value!r}")
    if vr == "UI" and value and not is_uid(value):
        raise BadKey(key, f"not a UID: {value!r}")
    return value


def _items(key: str, value: Any) -> list[Dataset]:
    if value is None or value == "" or value == []:
        return []  # an empty sequence: return the whole sequence
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, Mapping) for item in items):
        raise BadKey(key, "a sequence takes an object or a list of objects (its items)")
    try:
        return [build_identifier(item) for item in items]
    except BadKey as exc:
        raise BadKey(f"{key}.{exc.key}", exc.reason) from None


def _check_encodable(key: str, element: DataElement) -> None:
    """Raise :class:`BadKey` now if the element cannot be sent (not halfway through a C-FIND)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    try:
        write_data_element(buffer, element)
    except Exception as exc:
        raise BadKey(key, f"cannot be encoded: {exc}") from None


def _non_ascii(element: DataElement) -> bool:
    values = element.value if isinstance(element.value, list | MultiValue) else [element.value]
    return any(isinstance(v, str) and not v.isascii() for v in values)


def retrieve_identifier(uids: Sequence[str]) -> Dataset:
    """The C-GET/C-MOVE identifier of PS3.4 HH.4.2: SOP Instance UIDs only."""
    ds = Dataset()
    ds.SOPInstanceUID = list(uids) if len(uids) > 1 else uids[0]
    return ds


def answer_json(identifier: Dataset) -> dict[str, Any]:
    """A C-FIND answer as DICOM JSON; binary values inline (Base64)."""
    return identifier.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)
