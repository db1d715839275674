"""Key attributes of the Defined Procedure Protocol and Protocol Approval models, as data.

Source: DICOM PS3.4 2024d, Annex HH, Table HH.6-1 "Attributes for the Defined
Procedure Protocol Information Model", Annex II, Table II.6-1 "Attributes for
the Protocol Approval Information Model", and PS3.4 chapter 8, Tables 8-1a/8-1b
(the SCU/SCP coded entry macros that Table HH.6-1 includes in its code
sequences). Read at dicom.nema.org (chtml sect_HH.6, chapter_8) and
cross-checked row by row against a DocBook-derived rendering of the same
tables; the one slip found there (Context Group Version shown with the tag of
Mapping Resource UID) is corrected from PS3.6: (0008,0106).

Why a table in code: C-FIND validation, responses (what a zero-length
sequence item asks for), the conformance statement and the tests all read
the same rows, so a correction is made once. Keywords and VRs come from
pydicom's data dictionary, never from here, so the table only holds what the
standard adds: the key types and the matching types it names.

Column meanings (PS3.4 HH.1.2, K.2.2):
- ``matching``: "R" required, "U" unique, "O" optional, "RC" required if the
  macro's condition holds, "-" not a matching key (return only);
- ``returning``: return key type "1", "1C", "2", "2C" or "3";
- ``types``: the matching types Table HH.6-1 names in its remark column;
  empty where it names none (matching then follows the VR, C.2.2.2).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from orthanc_dpp.model import sop

#: Edition and tables the rows below were taken from.
STANDARD: Final = "DICOM PS3.4 2024d, Table HH.6-1 with Tables 8-1a/8-1b"


def tag(keyword: str) -> int:
    """The tag of a DICOM keyword, from pydicom's dictionary; KeyError for a typo."""
    found = tag_for_keyword(keyword)
    if found is None:
        raise KeyError(f"not a DICOM keyword: {keyword}")
    return found


SOP_CLASS_UID: Final = tag("SOPClassUID")
SOP_INSTANCE_UID: Final = tag("SOPInstanceUID")
SPECIFIC_CHARACTER_SET: Final = tag("SpecificCharacterSet")
QUERY_RETRIEVE_LEVEL: Final = tag("QueryRetrieveLevel")


class Matching(enum.Enum):
    """Matching types of PS3.4 C.2.2.2."""

    SINGLE_VALUE = "single value"
    UID_LIST = "list of UID"
    UNIVERSAL = "universal"
    WILD_CARD = "wild card"
    RANGE = "range"
    SEQUENCE = "sequence"


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One row of a key table; ``items`` are the rows nested one level down."""

    tag: int
    matching: str
    returning: str
    types: frozenset[Matching] = frozenset()
    items: tuple[KeyRow, ...] = ()
    module: str = ""

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag)

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)

    def item(self, tag: int) -> KeyRow | None:
        """The nested row for ``tag``, if the table lists one."""
        for row in self.items:
            if row.tag == tag:
                return row
        return None


_S, _U, _W, _R, _Q, _L = (
    Matching.SINGLE_VALUE,
    Matching.UNIVERSAL,
    Matching.WILD_CARD,
    Matching.RANGE,
    Matching.SEQUENCE,
    Matching.UID_LIST,
)
_TEXT = frozenset({_S, _W, _U})  # "Single Value, Wild Card or Universal Matching"
_SEQ = frozenset({_Q, _U})  # "Sequence Matching or Universal Matching"
_DATE = frozenset({_S, _R})  # "Single Value Matching or Range Matching"
_UIDS = frozenset({_L})  # "List of UID Matching"


def _row(
    keyword: str,
    matching: str,
    returning: str,
    types: frozenset[Matching] = frozenset(),
    items: tuple[KeyRow, ...] = (),
) -> KeyRow:
    return KeyRow(tag(keyword), matching, returning, types, items)


# PS3.4 Table 8-1b: Basic SCU/SCP Coded Entry Macro with SCU Support,
# Matching Key Support and Mandatory Meaning.
BASIC_CODED_ENTRY: Final[tuple[KeyRow, ...]] = (
    _row("CodeValue", "RC", "1C"),
    _row("CodingSchemeDesignator", "RC", "1C"),
    _row("CodingSchemeVersion", "RC", "1C"),
    _row("CodeMeaning", "-", "1"),
    _row("LongCodeValue", "RC", "1C"),
    _row("URNCodeValue", "RC", "1C"),
    _row("MappingResource", "-", "3"),
    _row("MappingResourceUID", "-", "3"),
    _row("ContextGroupVersion", "-", "3"),
    _row("ContextGroupExtensionFlag", "-", "3"),
    _row("ContextGroupLocalVersion", "-", "3"),
    _row("ContextGroupExtensionCreatorUID", "-", "3"),
)

# PS3.4 Table 8-1a: Enhanced SCU/SCP Coded Entry Macro with SCU Support,
# Matching Key Support and Mandatory Meaning = 8-1b + Equivalent Code Sequence.
CODED_ENTRY: Final[tuple[KeyRow, ...]] = (
    *BASIC_CODED_ENTRY,
    _row("EquivalentCodeSequence", "O", "3", items=BASIC_CODED_ENTRY),
)


def _module(name: str, rows: tuple[KeyRow, ...]) -> tuple[KeyRow, ...]:
    return tuple(KeyRow(r.tag, r.matching, r.returning, r.types, r.items, name) for r in rows)


#: PS3.4 Table HH.6-1, in the table's order, grouped by the table's modules.
TABLE_HH_6_1: Final[tuple[KeyRow, ...]] = (
    *_module(
        "SOP Common",
        (
            _row("SpecificCharacterSet", "-", "1C"),
            _row("SOPClassUID", "R", "1"),
            _row("SOPInstanceUID", "U", "1"),
        ),
    ),
    *_module(
        "Protocol Context",
        (
            _row(
                "CustodialOrganizationSequence",
                "R",
                "2",
                items=(
                    _row("InstitutionName", "R", "2"),
                    _row("InstitutionCodeSequence", "R", "2", _SEQ, CODED_ENTRY),
                ),
            ),
            _row("ResponsibleGroupCodeSequence", "R", "2", _SEQ, CODED_ENTRY),
            _row("ProtocolName", "R", "1", _TEXT),
            _row("PotentialScheduledProtocolCodeSequence", "R", "1", _SEQ, CODED_ENTRY),
            _row("PotentialRequestedProcedureCodeSequence", "R", "1", _SEQ, CODED_ENTRY),
            _row("PotentialReasonsForProcedure", "-", "2"),
            _row("PotentialReasonsForProcedureCodeSequence", "R", "2", _SEQ, CODED_ENTRY),
            _row("PotentialDiagnosticTasks", "-", "2"),
            _row(
                "PredecessorProtocolSequence",
                "R",
                "2",
                items=(
                    _row("ReferencedSOPClassUID", "R", "1", _UIDS),
                    _row("ReferencedSOPInstanceUID", "R", "1", _UIDS),
                ),
            ),
            _row("ContentCreatorName", "R", "1", _TEXT),
            _row("InstanceCreationDate", "R", "1", _DATE),
            _row("InstanceCreationTime", "R", "1", _DATE),
        ),
    ),
    *_module(
        "Clinical Trial Context",
        (
            _row("ClinicalTrialSponsorName", "R", "1", _TEXT),
            _row("ClinicalTrialProtocolID", "R", "1", _TEXT),
        ),
    ),
    *_module(
        "Equipment Specification",
        (
            _row("EquipmentModality", "R", "1"),
            _row(
                "ModelSpecificationSequence",
                "R",
                "2",
                items=(
                    _row("Manufacturer", "R", "1", _TEXT),
                    _row("ManufacturerRelatedModelGroup", "R", "2", _TEXT),
                    _row("ManufacturerModelName", "R", "2", _TEXT),
                    _row("SoftwareVersions", "R", "2", _TEXT),
                    _row("DeviceSerialNumber", "-", "2"),
                ),
            ),
        ),
    ),
    *_module(
        "Patient Positioning",
        (
            _row("AnatomicRegionSequence", "R", "2", _SEQ, CODED_ENTRY),
            _row("PrimaryAnatomicStructureSequence", "R", "2", _SEQ, CODED_ENTRY),
        ),
    ),
)

# PS3.4 Table II.6-1. Unlike Table HH.6-1 it names no matching types for its
# code sequences (matching then follows the VR). Its Approval Subject
# Sequence is the key most queries use ("the approvals of this protocol"):
# the index keeps a value index on it.
TABLE_II_6_1: Final[tuple[KeyRow, ...]] = (
    *_module(
        "SOP Common",
        (
            _row("SpecificCharacterSet", "-", "1C"),
            _row("SOPClassUID", "R", "1"),
            _row("SOPInstanceUID", "U", "1"),
            _row("InstanceCreationDate", "R", "1", _DATE),
            _row("InstanceCreationTime", "R", "1", _DATE),
        ),
    ),
    *_module(
        "Protocol Approval",
        (
            _row(
                "ApprovalSubjectSequence",
                "R",
                "1",
                items=(
                    _row("ReferencedSOPClassUID", "R", "1", _UIDS),
                    _row("ReferencedSOPInstanceUID", "R", "1", _UIDS),
                ),
            ),
            _row(
                "ApprovalSequence",
                "R",
                "1",
                items=(
                    _row("AssertionCodeSequence", "R", "1", items=CODED_ENTRY),
                    _row("AssertionUID", "-", "1"),
                    _row(
                        "AsserterIdentificationSequence",
                        "R",
                        "1",
                        items=(
                            _row("ObserverType", "-", "1"),
                            _row("PersonName", "R", "1"),
                            _row("PersonIdentificationCodeSequence", "R", "1", items=CODED_ENTRY),
                            _row("OrganizationalRoleCodeSequence", "R", "2", items=CODED_ENTRY),
                            _row("StationName", "-", "3"),
                            _row("DeviceUID", "-", "3"),
                            _row("Manufacturer", "-", "3"),
                            _row("ManufacturerModelName", "-", "3"),
                            _row("StationAETitle", "-", "3"),
                            _row("InstitutionName", "R", "1"),
                            _row("InstitutionCodeSequence", "R", "1", items=CODED_ENTRY),
                            _row("InstitutionalDepartmentName", "U", "2"),
                            _row(
                                "InstitutionalDepartmentTypeCodeSequence",
                                "U",
                                "3",
                                items=CODED_ENTRY,
                            ),
                        ),
                    ),
                    _row("AssertionDateTime", "R", "1", _DATE),
                    _row("AssertionExpirationDateTime", "R", "2", _DATE),
                    _row("AssertionComments", "-", "2"),
                    _row(
                        "RelatedAssertionSequence",
                        "U",
                        "1",
                        items=(_row("ReferencedAssertionUID", "U", "1"),),
                    ),
                ),
            ),
        ),
    ),
    *_module(
        "Enhanced General Equipment",
        (
            _row("Manufacturer", "-", "1"),
            _row("ManufacturerModelName", "-", "2"),
            _row("SoftwareVersions", "-", "2"),
        ),
    ),
)

#: Top-level rows by tag.
TOP_LEVEL: Final[dict[int, KeyRow]] = {row.tag: row for row in TABLE_HH_6_1}


@dataclass(frozen=True)
class InformationModel:
    """One query/retrieve model the listener serves: its SOP classes, instances and keys."""

    name: str
    find: str
    move: str
    get: str
    #: The storage SOP classes of the instances it finds and retrieves.
    storage_classes: frozenset[str]
    table: tuple[KeyRow, ...]

    @property
    def sop_classes(self) -> tuple[str, str, str]:
        return (self.find, self.move, self.get)


DPP_MODEL: Final = InformationModel(
    "Defined Procedure Protocol",
    sop.DPP_FIND,
    sop.DPP_MOVE,
    sop.DPP_GET,
    sop.DPP_STORAGE_CLASSES,
    TABLE_HH_6_1,
)
APPROVAL_MODEL: Final = InformationModel(
    "Protocol Approval",
    sop.APPROVAL_FIND,
    sop.APPROVAL_MOVE,
    sop.APPROVAL_GET,
    frozenset({sop.PROTOCOL_APPROVAL_STORAGE}),
    TABLE_II_6_1,
)
MODELS: Final = (DPP_MODEL, APPROVAL_MODEL)


def model_of(sop_class: str) -> InformationModel | None:
    """The model a FIND, MOVE or GET SOP Class UID belongs to, if the listener serves it."""
    return next((m for m in MODELS if sop_class in m.sop_classes), None)


#: Pairs that Table HH.6-1 says are range-matched together as one DateTime
#: when both are given as ranges (Instance Creation Date / Time).
COMBINED_DATE_TIME: Final[tuple[tuple[int, int], ...]] = (
    (tag("InstanceCreationDate"), tag("InstanceCreationTime")),
)

#: Keys that belong to other information models (hierarchical Q/R, worklist):
#: an identifier carrying them was not meant for this one (PS3.4 HH.4.2 says
#: Query/Retrieve Level shall not be present). Answered with 0xA900.
FOREIGN_KEYS: Final[frozenset[int]] = frozenset(
    {
        tag("QueryRetrieveLevel"),
        tag("QueryRetrieveView"),
        tag("PatientName"),
        tag("PatientID"),
        tag("StudyInstanceUID"),
        tag("SeriesInstanceUID"),
        tag("ScheduledProcedureStepSequence"),  # (Modality Worklist)
    }
)

#: Present in an identifier but never matched (PS3.4 C.2.2.2, K.2.2.2).
NOT_MATCHED: Final[frozenset[int]] = frozenset(
    {
        tag("SpecificCharacterSet"),
        tag("TimezoneOffsetFromUTC"),
    }
)


def walk(rows: tuple[KeyRow, ...] = TABLE_HH_6_1, depth: int = 0) -> Iterator[tuple[int, KeyRow]]:
    """Every row with its nesting depth, depth first, in table order."""
    for row in rows:
        yield depth, row
        yield from walk(row.items, depth + 1)
