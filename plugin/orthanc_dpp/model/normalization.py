"""Give DPP instances the identity Orthanc needs, and take it away again.

DPP IODs have no Patient, Study or Series modules, but Orthanc files every
instance under a patient, study and series and refuses one without
PatientID, StudyInstanceUID and SeriesInstanceUID (docs/design.md, fact 3).
:func:`normalize` adds only what is missing and records, inside the dataset,
in a private block, exactly which attributes it added or filled.
:func:`reverse` uses that record to give back the dataset as received,
element for element, which is what C-GET, C-MOVE and downloads send.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.datadict import add_private_dict_entries, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag, Tag
from pydicom.uid import generate_uid

from orthanc_dpp.model.sop import STORAGE_CLASSES

#: Private group and creator of the normalization record. The creator names
#: the plugin so that anybody dumping a stored file knows who added it.
RECORD_GROUP = 0x0099
RECORD_CREATOR = "ORTHANC DPP NORMALIZATION"
_ADDED = 0x01  # LT: tags (8 hex digits, backslash-separated) added by normalize
_FILLED = 0x02  # LT: tags that were present with an empty value and were filled

add_private_dict_entries(
    RECORD_CREATOR,
    {
        (RECORD_GROUP << 16) | 0x1000 | _ADDED: ("LT", "1", "Attributes Added By Plugin", ""),
        (RECORD_GROUP << 16) | 0x1000 | _FILLED: ("LT", "1", "Attributes Filled By Plugin", ""),
    },
)


@dataclass(frozen=True)
class Normalization:
    """Identity given to DPP instances that lack patient/study/series.

    Orthanc files every instance under a patient, study and series; DPP IODs
    have none, so they are grouped under one "protocol library" patient and
    study, with one series per storage SOP class.
    """

    patient_id: str = "DPP-PROTOCOL-LIBRARY"
    patient_name: str = "Defined Procedure Protocol Library"
    study_description: str = "Defined Procedure Protocols"


#: Orthanc refuses instances without these (its resource identity).
REQUIRED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
#: Added alongside, so Orthanc Explorer shows a readable library tree.
DESCRIPTIVE = ("PatientName", "StudyDescription", "SeriesDescription")


class NormalizationError(ValueError):
    """The dataset cannot be normalized reversibly; the message says why."""


@dataclass(frozen=True)
class Normalized:
    """Outcome of :func:`normalize`: the dataset and what was changed."""

    dataset: Dataset
    added: tuple[BaseTag, ...]
    filled: tuple[BaseTag, ...]
    #: The private creator and the elements of the normalization record.
    record: tuple[BaseTag, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.filled)

    @property
    def touched(self) -> tuple[BaseTag, ...]:
        """Every top-level element normalization added or changed, ascending.

        What a stored file holds beyond the dataset as received: the store
        path encodes only these and splices them into the received bytes.
        """
        return tuple(sorted({*self.added, *self.filled, *self.record}))


def library_uids(labels: Normalization, sop_class_uid: str) -> tuple[str, str]:
    """Deterministic study and series UIDs of the protocol library.

    Derived from the configured patient ID (and SOP class for the series),
    so every Orthanc node sharing a database files instances identically.
    """
    study = generate_uid(entropy_srcs=["orthanc-dpp", "study", labels.patient_id])
    series = generate_uid(entropy_srcs=["orthanc-dpp", "series", labels.patient_id, sop_class_uid])
    return str(study), str(series)


#: DICOM pads values with spaces (and UIs with NUL); nothing else is padding.
PADDING = " \x00"


def _is_empty(ds: Dataset, keyword: str) -> bool:
    value = ds[keyword].value
    if isinstance(value, bytes):
        return not value.strip(PADDING.encode())
    return value is None or (isinstance(value, str) and not value.strip(PADDING))


def has_record(ds: Dataset) -> bool:
    """Whether ``ds`` carries our normalization record."""
    return _find_record(ds) is not None


def _find_record(ds: Dataset) -> int | None:
    """Element offset (0x10..0xFF) of our private block, or None."""
    for offset in range(0x10, 0x100):
        creator_tag = Tag(RECORD_GROUP, offset)
        if creator_tag in ds and _text(ds[creator_tag].value).strip() == RECORD_CREATOR:
            return offset
    return None


def _text(value: object) -> str:
    """Text of an LO/LT element, also when read as UN (implicit VR, no dictionary)."""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").rstrip("\x00 ")
    return "" if value is None else str(value)


def normalize(ds: Dataset, labels: Normalization) -> Normalized:
    """Add the patient/study/series identity ``ds`` lacks, in place.

    An instance that already carries all of :data:`REQUIRED` with values is
    left untouched. Raises :class:`NormalizationError` if the dataset already
    holds our private creator while still needing normalization (the record
    would be ambiguous) or lacks a SOP Class UID.
    """
    missing = [kw for kw in REQUIRED if kw not in ds or _is_empty(ds, kw)]
    if not missing:
        return Normalized(ds, (), ())
    if _find_record(ds) is not None:
        raise NormalizationError(
            f"private creator '{RECORD_CREATOR}' in group {RECORD_GROUP:04X} is reserved by the "
            "plugin, but this dataset already has it and lacks " + ", ".join(missing)
        )
    sop_class_uid = str(ds.get("SOPClassUID", "")).strip()
    if not sop_class_uid:
        raise NormalizationError("SOP Class UID (0008,0016) is missing")
    study_uid, series_uid = library_uids(labels, sop_class_uid)
    values = {
        "PatientID": labels.patient_id,
        "PatientName": labels.patient_name,
        "StudyInstanceUID": study_uid,
        "StudyDescription": labels.study_description,
        "SeriesInstanceUID": series_uid,
        "SeriesDescription": STORAGE_CLASSES.get(sop_class_uid, "Defined Procedure Protocols"),
    }
    added: list[BaseTag] = []
    filled: list[BaseTag] = []
    for keyword in (*REQUIRED, *DESCRIPTIVE):
        if keyword not in ds:
            setattr(ds, keyword, values[keyword])
            added.append(ds[keyword].tag)
        elif keyword in REQUIRED and _is_empty(ds, keyword):
            ds[keyword].value = values[keyword]
            filled.append(ds[keyword].tag)
    block = ds.private_block(RECORD_GROUP, RECORD_CREATOR, create=True)
    block.add_new(_ADDED, "LT", _format_tags(added))
    record = [Tag(RECORD_GROUP, block.block_start >> 8), block.get_tag(_ADDED)]
    if filled:
        block.add_new(_FILLED, "LT", _format_tags(filled))
        record.append(block.get_tag(_FILLED))
    return Normalized(ds, tuple(added), tuple(filled), tuple(record))


def reverse(ds: Dataset) -> Dataset:
    """Remove what :func:`normalize` added, in place; return ``ds``.

    A dataset without our record is returned unchanged.
    """
    offset = _find_record(ds)
    if offset is None:
        return ds
    base = (RECORD_GROUP << 16) | (offset << 8)
    added = _parse_tags(ds.get(base | _ADDED))
    filled = _parse_tags(ds.get(base | _FILLED))
    for tag in added:
        if tag in ds:
            del ds[tag]
    for tag in filled:
        if tag in ds:
            element = ds[tag]
            ds[tag] = DataElement(tag, element.VR, "")
    for tag in [t for t in ds.keys() if t.group == RECORD_GROUP]:  # noqa: SIM118 (no decoding)
        if tag == Tag(RECORD_GROUP, offset) or (tag.element >> 8) == offset:
            del ds[tag]
    return ds


def _format_tags(tags: list[BaseTag]) -> str:
    return "\\".join(f"{int(t):08X}" for t in tags)


def _parse_tags(element: DataElement | None) -> list[BaseTag]:
    if element is None:
        return []
    text = _text(element.value)
    return [Tag(int(part, 16)) for part in text.split("\\") if part.strip()]


def describe(tags: tuple[BaseTag, ...]) -> list[str]:
    """Keywords of ``tags`` for log lines and JSON answers."""
    return [keyword_for_tag(t) or str(t) for t in tags]
