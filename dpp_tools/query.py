"""C-FIND identifiers from command-line keys, and answers as a table or JSON.

The keys are those of PS3.4 Table HH.6-1: Protocol Name (0018,1030) and
Equipment Modality (0008,0221) at the top level; Manufacturer and
Manufacturer's Model Name inside Model Specification Sequence (0018,9912);
codes inside Potential Scheduled Protocol Code Sequence (0018,9906) and
Potential Requested Procedure Code Sequence (0018,9907). Any other attribute
may be given as ``Keyword=value`` (``Sequence.Keyword=value`` inside a
sequence's single item); an archive answers keys beyond the table as it
chooses (this project's plugin matches any attribute it stores).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

MODEL_SEQUENCE = "ModelSpecificationSequence"
SCHEDULED_CODES = "PotentialScheduledProtocolCodeSequence"
REQUESTED_CODES = "PotentialRequestedProcedureCodeSequence"

_INTEGER_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"}


class BadKey(ValueError):
    """A key the command line cannot turn into a C-FIND key; the message says why."""


@dataclass(frozen=True)
class FindKeys:
    """What the user asked for; None means "not given" (the key is then only returned)."""

    name: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    code: str | None = None
    scheme: str | None = None
    procedure_code: str | None = None
    uids: Sequence[str] = ()
    extra: Sequence[str] = ()  # "Keyword=value", "Sequence.Keyword=value" or "Keyword"


def _item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _typed(keyword: str, vr: str, text: str) -> Any:
    """`text` as the value pydicom expects for `vr`; backslashes separate values."""
    if vr in _BINARY_VRS:
        raise BadKey(f"{keyword} has VR {vr}: binary values cannot be query keys")
    if text == "":
        return None
    if vr in _INTEGER_VRS | _FLOAT_VRS:
        convert = int if vr in _INTEGER_VRS else float
        try:
            values = [convert(part) for part in text.split("\\")]
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise BadKey(f"{keyword} (VR {vr}) needs {kind}, not {text!r}") from None
        return values[0] if len(values) == 1 else values
    return text


def _set(ds: Dataset, keyword: str, text: str) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise BadKey(f"{keyword!r} is not a DICOM keyword (e.g. ProtocolName, Manufacturer)")
    vr = dictionary_VR(tag)
    if set(vr.split(" or ")) & _BINARY_VRS:
        raise BadKey(f"{keyword} has VR {vr}: binary values cannot be query keys")
    vr = vr.split(" or ")[0]  # "US or SS": the first, as pydicom does without context
    if vr == "SQ":
        if text:
            raise BadKey(f"{keyword} is a sequence: give {keyword}.Keyword=value")
        ds.add(DataElement(tag, vr, DicomSequence([])))
        return
    ds.add(DataElement(tag, vr, _typed(keyword, vr, text)))


def _apply(identifier: Dataset, key: str) -> None:
    """One ``[Sequence.]Keyword[=value]`` into `identifier`."""
    path, _, text = key.partition("=")
    parts = path.strip().split(".")
    if not all(parts) or len(parts) > 2:
        raise BadKey(f"{key!r}: write Keyword=value or Sequence.Keyword=value")
    target = identifier
    if len(parts) == 2:
        sequence, keyword = parts
        tag = tag_for_keyword(sequence)
        if tag is None or dictionary_VR(tag) != "SQ":
            raise BadKey(f"{key!r}: {sequence!r} is not a DICOM sequence keyword")
        if sequence not in identifier or not identifier[sequence].value:
            setattr(identifier, sequence, [Dataset()])
        target = identifier[sequence].value[0]
    else:
        keyword = parts[0]
    _set(target, keyword, text)


def build_identifier(keys: FindKeys) -> Dataset:
    """The C-FIND identifier: the table's columns as return keys, the given ones as matching."""
    identifier = Dataset()
    identifier.SOPClassUID = ""
    identifier.SOPInstanceUID = "\\".join(keys.uids)
    identifier.ProtocolName = keys.name or ""
    identifier.EquipmentModality = keys.modality or ""
    identifier.InstanceCreationDate = ""
    setattr(
        identifier,
        MODEL_SEQUENCE,
        [_item(Manufacturer=keys.manufacturer or "", ManufacturerModelName=keys.model or "")],
    )
    setattr(
        identifier,
        SCHEDULED_CODES,
        [
            _item(
                CodeValue=keys.code or "",
                CodingSchemeDesignator=keys.scheme or "",
                CodeMeaning="",
            )
        ],
    )
    if keys.procedure_code is not None:
        setattr(
            identifier,
            REQUESTED_CODES,
            [_item(CodeValue=keys.procedure_code, CodingSchemeDesignator="", CodeMeaning="")],
        )
    for key in keys.extra:
        _apply(identifier, key)
    if not all(_is_ascii(elem) for elem in identifier.iterall()):
        # Without it the values would be sent in the default repertoire, each
        # other character replaced by "?", which is a wild card.
        identifier.SpecificCharacterSet = "ISO_IR 192"
    return identifier


def _is_ascii(elem: DataElement) -> bool:
    if elem.VR == "SQ" or elem.value is None:
        return True
    values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
    return all(str(value).isascii() for value in values)


# --------------------------------------------------------------------------
# Answers


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _codes(answer: Dataset, keyword: str) -> str:
    items = answer.get(keyword) or []
    codes = []
    for item in items:
        value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
        if value:
            scheme = item.get("CodingSchemeDesignator")
            codes.append(f"{scheme}:{value}" if scheme else str(value))
    return " ".join(codes)


def _in_models(answer: Dataset, keyword: str) -> str:
    """The distinct non-empty `keyword` values of the Model Specification items."""
    values = [_text(item.get(keyword)) for item in answer.get(MODEL_SEQUENCE) or []]
    return " / ".join(dict.fromkeys(v for v in values if v))


def _kind(sop_class_uid: str) -> str:
    name = UID(sop_class_uid).name if sop_class_uid else ""
    for prefix in ("CT", "XA"):
        if name.startswith(prefix + " "):
            return prefix
    return name or "?"


#: The table's columns: title and how to read it from an answer.
COLUMNS: tuple[tuple[str, Any], ...] = (
    ("SOP Instance UID", lambda a: _text(a.get("SOPInstanceUID"))),
    ("Kind", lambda a: _kind(str(a.get("SOPClassUID") or ""))),
    ("Protocol Name", lambda a: _text(a.get("ProtocolName"))),
    ("Modality", lambda a: _text(a.get("EquipmentModality"))),
    ("Manufacturer", lambda a: _in_models(a, "Manufacturer")),
    ("Model", lambda a: _in_models(a, "ManufacturerModelName")),
    ("Codes", lambda a: _codes(a, SCHEDULED_CODES)),
)


def table(answers: Iterable[Dataset]) -> str:
    """The answers as an aligned text table, one protocol per line, with a header."""
    rows = [[title for title, _ in COLUMNS]]
    rows += [[read(answer) for _, read in COLUMNS] for answer in answers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def _plain(ds: Dataset) -> dict[str, Any]:
    """A dataset as keyword -> value: sequences as lists of objects, several values as lists."""
    out: dict[str, Any] = {}
    for elem in ds:
        key = elem.keyword or keyword_for_tag(elem.tag) or f"{elem.tag:08X}"
        value = elem.value
        if elem.VR == "SQ":
            out[key] = [_plain(item) for item in value]
        elif isinstance(value, bytes):
            out[key] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, MultiValue | list):
            out[key] = [_json_value(v) for v in value]
        else:
            out[key] = _json_value(value)
    return out


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


def to_json(answers: Sequence[Dataset], *, dicom: bool) -> str:
    """The answers as a JSON array: DICOM JSON (PS3.18 F.2) or keyword -> value objects."""
    if dicom:
        return json.dumps([answer.to_json_dict() for answer in answers], indent=2)
    return json.dumps([_plain(answer) for answer in answers], indent=2, ensure_ascii=False)
