"""Table HH.6-1 as data: shape checks against pydicom's dictionary."""

from __future__ import annotations

import pytest

from orthanc_dpp.model import key_table
from orthanc_dpp.model.key_table import CODED_ENTRY, TABLE_HH_6_1, TOP_LEVEL, Matching, walk

CODE_SEQUENCES = {
    "ResponsibleGroupCodeSequence",
    "PotentialScheduledProtocolCodeSequence",
    "PotentialRequestedProcedureCodeSequence",
    "PotentialReasonsForProcedureCodeSequence",
    "AnatomicRegionSequence",
    "PrimaryAnatomicStructureSequence",
    "InstitutionCodeSequence",
}


def test_every_row_is_a_known_attribute_with_valid_key_types() -> None:
    for _, row in walk():
        assert row.keyword, f"{row.tag:08X} is not in the data dictionary"
        assert row.matching in {"R", "U", "O", "RC", "-"}
        assert row.returning in {"1", "1C", "2", "2C", "3"}
        assert (row.vr == "SQ") == bool(row.items), row.keyword


def test_top_level_rows_in_table_order() -> None:
    assert [row.keyword for row in TABLE_HH_6_1] == [
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "CustodialOrganizationSequence",
        "ResponsibleGroupCodeSequence",
        "ProtocolName",
        "PotentialScheduledProtocolCodeSequence",
        "PotentialRequestedProcedureCodeSequence",
        "PotentialReasonsForProcedure",
        "PotentialReasonsForProcedureCodeSequence",
        "PotentialDiagnosticTasks",
        "PredecessorProtocolSequence",
        "ContentCreatorName",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "EquipmentModality",
        "ModelSpecificationSequence",
        "AnatomicRegionSequence",
        "PrimaryAnatomicStructureSequence",
    ]
    assert {row.module for row in TABLE_HH_6_1} == {
        "SOP Common",
        "Protocol Context",
        "Clinical Trial Context",
        "Equipment Specification",
        "Patient Positioning",
    }


@pytest.mark.parametrize(
    ("keyword", "matching", "returning", "types"),
    [
        ("SpecificCharacterSet", "-", "1C", set()),
        ("SOPClassUID", "R", "1", set()),
        ("SOPInstanceUID", "U", "1", set()),
        ("ProtocolName", "R", "1", {Matching.SINGLE_VALUE, Matching.WILD_CARD, Matching.UNIVERSAL}),
        ("InstanceCreationDate", "R", "1", {Matching.SINGLE_VALUE, Matching.RANGE}),
        ("PotentialReasonsForProcedure", "-", "2", set()),
        ("CustodialOrganizationSequence", "R", "2", set()),
        ("EquipmentModality", "R", "1", set()),
        ("ModelSpecificationSequence", "R", "2", set()),
        (
            "PotentialScheduledProtocolCodeSequence",
            "R",
            "1",
            {Matching.SEQUENCE, Matching.UNIVERSAL},
        ),
    ],
)
def test_rows(keyword: str, matching: str, returning: str, types: set[Matching]) -> None:
    row = next(r for r in TABLE_HH_6_1 if r.keyword == keyword)
    assert (row.matching, row.returning, set(row.types)) == (matching, returning, types)
    assert TOP_LEVEL[row.tag] is row


def test_nested_rows() -> None:
    models = TOP_LEVEL[0x00189912]
    assert [(r.keyword, r.matching, r.returning) for r in models.items] == [
        ("Manufacturer", "R", "1"),
        ("ManufacturerRelatedModelGroup", "R", "2"),
        ("ManufacturerModelName", "R", "2"),
        ("SoftwareVersions", "R", "2"),
        ("DeviceSerialNumber", "-", "2"),
    ]
    predecessor = TOP_LEVEL[0x0018990E]
    assert all(Matching.UID_LIST in r.types for r in predecessor.items)
    custodial = TOP_LEVEL[0x0040A07C]
    assert custodial.item(0x00080082).items == CODED_ENTRY


def test_code_sequences_include_the_coded_entry_macro() -> None:
    found = {row.keyword for _, row in walk() if row.items == CODED_ENTRY}
    assert found == CODE_SEQUENCES
    macro = {r.keyword: (r.matching, r.returning) for r in CODED_ENTRY}
    assert macro["CodeValue"] == ("RC", "1C")
    assert macro["CodeMeaning"] == ("-", "1")
    assert macro["ContextGroupVersion"] == ("-", "3")
    equivalent = next(r for r in CODED_ENTRY if r.keyword == "EquivalentCodeSequence")
    assert equivalent.items == key_table.BASIC_CODED_ENTRY


def test_standard_is_cited() -> None:
    assert "HH.6-1" in key_table.STANDARD and "PS3.4" in key_table.STANDARD
