"""Key attributes of the Defined Procedure Protocol Information Model, as data.

Source: DICOM PS3.4 2024d, Annex HH, Table HH.6-1 "Attributes for the Defined
Procedure Protocol Information Model", and PS3.4 chapter 8, Tables 8-1a/8-1b
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

from pydicom.datadict import dictionary_VR, keyword_for_tag

#: Edition and tables the rows below were taken from.
STANDARD: Final = "DICOM PS3.4 2024d, Table HH.6-1 with Tables 8-1a/8-1b"


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
    tag: int,
    matching: str,
    returning: str,
    types: frozenset[Matching] = frozenset(),
    items: tuple[KeyRow, ...] = (),
) -> KeyRow:
    return KeyRow(tag, matching, returning, types, items)


# PS3.4 Table 8-1b: Basic SCU/SCP Coded Entry Macro with SCU Support,
# Matching Key Support and Mandatory Meaning.
BASIC_CODED_ENTRY: Final[tuple[KeyRow, ...]] = (
    _row(0x00080100, "RC", "1C"),  # Code Value
    _row(0x00080102, "RC", "1C"),  # Coding Scheme Designator
    _row(0x00080103, "RC", "1C"),  # Coding Scheme Version
    _row(0x00080104, "-", "1"),  # Code Meaning
    _row(0x00080119, "RC", "1C"),  # Long Code Value
    _row(0x00080120, "RC", "1C"),  # URN Code Value
    _row(0x00080105, "-", "3"),  # Mapping Resource
    _row(0x00080118, "-", "3"),  # Mapping Resource UID
    _row(0x00080106, "-", "3"),  # Context Group Version
    _row(0x0008010B, "-", "3"),  # Context Group Extension Flag
    _row(0x00080107, "-", "3"),  # Context Group Local Version
    _row(0x0008010D, "-", "3"),  # Context Group Extension Creator UID
)

# PS3.4 Table 8-1a: Enhanced SCU/SCP Coded Entry Macro with SCU Support,
# Matching Key Support and Mandatory Meaning = 8-1b + Equivalent Code Sequence.
CODED_ENTRY: Final[tuple[KeyRow, ...]] = (
    *BASIC_CODED_ENTRY,
    _row(0x00080121, "O", "3", items=BASIC_CODED_ENTRY),  # Equivalent Code Sequence
)


def _module(name: str, rows: tuple[KeyRow, ...]) -> tuple[KeyRow, ...]:
    return tuple(KeyRow(r.tag, r.matching, r.returning, r.types, r.items, name) for r in rows)


#: PS3.4 Table HH.6-1, in the table's order, grouped by the table's modules.
TABLE_HH_6_1: Final[tuple[KeyRow, ...]] = (
    *_module(
        "SOP Common",
        (
            _row(0x00080005, "-", "1C"),  # Specific Character Set
            _row(0x00080016, "R", "1"),  # SOP Class UID
            _row(0x00080018, "U", "1"),  # SOP Instance UID
        ),
    ),
    *_module(
        "Protocol Context",
        (
            _row(  # Custodial Organization Sequence
                0x0040A07C,
                "R",
                "2",
                items=(
                    _row(0x00080080, "R", "2"),  # >Institution Name
                    _row(0x00080082, "R", "2", _SEQ, CODED_ENTRY),  # >Institution Code Seq
                ),
            ),
            _row(0x00080220, "R", "2", _SEQ, CODED_ENTRY),  # Responsible Group Code Seq
            _row(0x00181030, "R", "1", _TEXT),  # Protocol Name
            _row(0x00189906, "R", "1", _SEQ, CODED_ENTRY),  # Potential Scheduled Protocol
            _row(0x00189907, "R", "1", _SEQ, CODED_ENTRY),  # Potential Requested Procedure
            _row(0x00189908, "-", "2"),  # Potential Reasons for Procedure
            _row(0x00189909, "R", "2", _SEQ, CODED_ENTRY),  # Potential Reasons ... Code Seq
            _row(0x0018990A, "-", "2"),  # Potential Diagnostic Tasks
            _row(  # Predecessor Protocol Sequence
                0x0018990E,
                "R",
                "2",
                items=(
                    _row(0x00081150, "R", "1", _UIDS),  # >Referenced SOP Class UID
                    _row(0x00081155, "R", "1", _UIDS),  # >Referenced SOP Instance UID
                ),
            ),
            _row(0x00700084, "R", "1", _TEXT),  # Content Creator's Name
            _row(0x00080012, "R", "1", _DATE),  # Instance Creation Date
            _row(0x00080013, "R", "1", _DATE),  # Instance Creation Time
        ),
    ),
    *_module(
        "Clinical Trial Context",
        (
            _row(0x00120010, "R", "1", _TEXT),  # Clinical Trial Sponsor Name
            _row(0x00120020, "R", "1", _TEXT),  # Clinical Trial Protocol ID
        ),
    ),
    *_module(
        "Equipment Specification",
        (
            _row(0x00080221, "R", "1"),  # Equipment Modality
            _row(  # Model Specification Sequence
                0x00189912,
                "R",
                "2",
                items=(
                    _row(0x00080070, "R", "1", _TEXT),  # >Manufacturer
                    _row(0x00080222, "R", "2", _TEXT),  # >Manufacturer's Related Model Group
                    _row(0x00081090, "R", "2", _TEXT),  # >Manufacturer's Model Name
                    _row(0x00181020, "R", "2", _TEXT),  # >Software Versions
                    _row(0x00181000, "-", "2"),  # >Device Serial Number
                ),
            ),
        ),
    ),
    *_module(
        "Patient Positioning",
        (
            _row(0x00082218, "R", "2", _SEQ, CODED_ENTRY),  # Anatomic Region Sequence
            _row(0x00082228, "R", "2", _SEQ, CODED_ENTRY),  # Primary Anatomic Structure Seq
        ),
    ),
)

#: Top-level rows by tag.
TOP_LEVEL: Final[dict[int, KeyRow]] = {row.tag: row for row in TABLE_HH_6_1}

#: Pairs that Table HH.6-1 says are range-matched together as one DateTime
#: when both are given as ranges (Instance Creation Date / Time).
COMBINED_DATE_TIME: Final[tuple[tuple[int, int], ...]] = ((0x00080012, 0x00080013),)

#: Keys that belong to other information models (hierarchical Q/R, worklist):
#: an identifier carrying them was not meant for this one (PS3.4 HH.4.2 says
#: Query/Retrieve Level shall not be present). Answered with 0xA900.
FOREIGN_KEYS: Final[frozenset[int]] = frozenset(
    {
        0x00080052,  # Query/Retrieve Level
        0x00080053,  # Query/Retrieve View
        0x00100010,  # Patient's Name
        0x00100020,  # Patient ID
        0x0020000D,  # Study Instance UID
        0x0020000E,  # Series Instance UID
        0x00400100,  # Scheduled Procedure Step Sequence (Modality Worklist)
    }
)

#: Present in an identifier but never matched (PS3.4 C.2.2.2, K.2.2.2).
NOT_MATCHED: Final[frozenset[int]] = frozenset(
    {
        0x00080005,  # Specific Character Set
        0x00080201,  # Timezone Offset From UTC
    }
)


def walk(rows: tuple[KeyRow, ...] = TABLE_HH_6_1, depth: int = 0) -> Iterator[tuple[int, KeyRow]]:
    """Every row with its nesting depth, depth first, in table order."""
    for row in rows:
        yield depth, row
        yield from walk(row.items, depth + 1)
