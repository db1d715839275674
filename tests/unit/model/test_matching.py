"""Conformance of C-FIND matching and responses to PS3.4 HH.6, K.2.2 and C.2.2.2.

Table-driven: one stored protocol carries every attribute of Table HH.6-1;
``test_every_key_of_table_hh_6_1`` derives, for each row (nested rows and
coded entry macro rows included), a matching value, a non-matching value and
a universal key; the other tables cover each matching type, the response
shape, character sets and invalid identifiers.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from orthanc_dpp.model import dimse_status, sop
from orthanc_dpp.model.dimse_status import InvalidIdentifier
from orthanc_dpp.model.key_table import APPROVAL_MODEL, TABLE_HH_6_1, KeyRow
from orthanc_dpp.model.query import Query, compile_query
from orthanc_dpp.model.record import BULK_BYTES, Record
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record
from tests.datasets import build, code

CT = sop.CT_DPP_STORAGE


STORED_SPEC: dict[str, Any] = {
    "SpecificCharacterSet": "ISO_IR 192",
    "SOPClassUID": CT,
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1",
    "CustodialOrganizationSequence": [
        {
            "InstitutionName": "Hôpital Nord",
            "InstitutionCodeSequence": [code("HN1", "99LOCAL", "Hôpital Nord")],
        }
    ],
    "ResponsibleGroupCodeSequence": [
        code(
            "RG7",
            "99LOCAL",
            "Neuro group",
            CodingSchemeVersion="2024",
            MappingResource="99LOCAL",
            MappingResourceUID="1.2.826.0.1.3680043.8.498.77",
            ContextGroupVersion="20240101",
            ContextGroupExtensionFlag="Y",
            ContextGroupLocalVersion="20240201",
            ContextGroupExtensionCreatorUID="1.2.826.0.1.3680043.8.498.78",
        )
    ],
    "ProtocolName": "CT Kopf nativ",
    "PotentialScheduledProtocolCodeSequence": [
        code(
            "RPID16",
            "RADLEX",
            "CT HEAD WO IV CONTRAST",
            EquivalentCodeSequence=[code("HEAD-PLAIN", "99LOCAL", "Head plain")],
        ),
        code("RPID22", "RADLEX", "CT HEAD W IV CONTRAST"),
    ],
    "PotentialRequestedProcedureCodeSequence": [
        {
            "LongCodeValue": "A-VERY-LONG-PROCEDURE-CODE-123",
            "CodingSchemeDesignator": "99LOCAL",
            "CodeMeaning": "Head CT",
        },
        {"URNCodeValue": "urn:oid:1.2.3.4", "CodeMeaning": "Head CT (URN)"},
    ],
    "PotentialReasonsForProcedure": ["Headache", "Trauma"],
    "PotentialReasonsForProcedureCodeSequence": [code("25064002", "SCT", "Headache")],
    "PotentialDiagnosticTasks": "Exclude bleeding",
    "PredecessorProtocolSequence": [
        {"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.0"}
    ],
    "ContentCreatorName": "Müller^Hans",
    "InstanceCreationDate": "20240105",
    "InstanceCreationTime": "101500",
    "ClinicalTrialSponsorName": "ACME Research",
    "ClinicalTrialProtocolID": "TRIAL-42",
    "EquipmentModality": "CT",
    "ModelSpecificationSequence": [
        {
            "Manufacturer": "ACME",
            "ManufacturerRelatedModelGroup": "Scan Family",
            "ManufacturerModelName": "Scan 9000",
            "SoftwareVersions": ["VA10", "VB20"],
            "DeviceSerialNumber": "SN123",
            "DateOfManufacture": "20200101",  # not listed in Table HH.6-1
        },
        {"Manufacturer": "Other Corp", "ManufacturerModelName": "X1"},
    ],
    "AnatomicRegionSequence": [code("69536005", "SCT", "Head")],
    "PrimaryAnatomicStructureSequence": [code("12738006", "SCT", "Brain")],
    # Beyond the table:
    "SliceThickness": "1.50",
    "Rows": 512,
    "InstitutionName": "Hôpital Nord",
    "PatientSpecificationSequence": [{"PatientSex": "F", "PatientAge": "045Y"}],
}
STORED = build(STORED_SPEC)
RECORD = to_record(STORED, RecordCache())


def query(spec: dict[str, Any], **kwargs: Any) -> Query:
    return compile_query(build(spec), **kwargs)


def matches(spec: dict[str, Any], record: Record = RECORD) -> bool:
    return query(spec).matches(record)


def roundtrip(ds: Dataset, implicit: bool = True) -> Dataset:
    """The dataset as a peer receives it over the network."""
    data = encode(ds, implicit, True)
    assert data, "dataset failed to encode"
    return decode(io.BytesIO(data), implicit, True)


# -- one case per key of Table HH.6-1 ---------------------------------------------

OTHER_VALUE = {
    "AE": "NOAE",
    "CS": "ZZ",
    "DA": "19990101",
    "DT": "19990101",
    "TM": "000001",
    "UI": "1.2.3.999",
    "PN": "Nobody^None",
    "UR": "http://example.org/none",
}


def _paths(rows: tuple[KeyRow, ...] = TABLE_HH_6_1, prefix: tuple[KeyRow, ...] = ()) -> list:
    """Every row of the table as the path of rows leading to it."""
    found = []
    for row in rows:
        path = (*prefix, row)
        found.append(path)
        found.extend(_paths(row.items, path))
    return found


ALL_PATHS = [p for p in _paths() if p[-1].keyword != "SpecificCharacterSet"]


def _nest(path: tuple[KeyRow, ...], value: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {path[-1].keyword: value}
    for row in reversed(path[:-1]):
        spec = {row.keyword: [spec]}
    return spec


def _stored_values(record: Record, path: tuple[KeyRow, ...]) -> list[Any]:
    """Every stored value of the leaf of ``path`` (through all items)."""
    records = [record]
    for row in path[:-1]:
        records = [i for r in records for i in r.values(row.tag) or () if isinstance(i, Record)]
    return [v for r in records for v in r.values(path[-1].tag) or ()]


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: ">".join(r.keyword for r in p))
def test_every_key_of_table_hh_6_1(path: tuple[KeyRow, ...]) -> None:
    leaf = path[-1]
    stored = _stored_values(RECORD, path)
    universal = query(_nest(path, [] if leaf.vr == "SQ" else ""))
    assert universal.matches(RECORD), "universal matching"
    other = OTHER_VALUE.get(leaf.vr, "no such value")
    if leaf.vr != "SQ":
        assert not matches(_nest(path, other)), "a value the instance lacks"
    element = universal.respond(RECORD)[1]
    for row in path[:-1]:
        items = element[row.tag].value  # a requested sequence is always returned
        if not items:
            assert not stored  # the instance has no item here: nothing below
            return
        element = items[0]
    assert leaf.tag in element, "a requested key is always returned"
    if leaf.vr == "SQ":
        assert len(element[leaf.tag].value) == len(stored)
        return
    if not stored:
        assert element[leaf.tag].value in (None, ""), "absent: zero length"
        return
    value = stored[-1]  # the last value: multi-valued attributes match on any value
    assert matches(_nest(path, value)), "single value matching on the stored value"


# -- each matching type ----------------------------------------------------------

MATCHING_CASES = [
    # Single value (C.2.2.2.1): case-sensitive, trailing spaces insignificant.
    ("single", {"ProtocolName": "CT Kopf nativ"}, True),
    ("single, case differs", {"ProtocolName": "ct kopf nativ"}, False),
    ("single, trailing spaces", {"ProtocolName": "CT Kopf nativ  "}, True),
    ("single, LO leading spaces", {"ProtocolName": " CT Kopf nativ"}, True),
    ("single, UC leading space significant", {"PotentialReasonsForProcedure": " Trauma"}, False),
    ("single CS", {"EquipmentModality": "CT"}, True),
    ("single CS other", {"EquipmentModality": "MR"}, False),
    ("single DS by value", {"SliceThickness": "1.5"}, True),
    ("single US", {"Rows": 512}, True),
    ("single US other", {"Rows": 256}, False),
    # PN: case-insensitive (C.2.2.2.1.1 allows it).
    ("PN case-insensitive", {"ContentCreatorName": "MÜLLER^HANS"}, True),
    ("PN trailing delimiters", {"ContentCreatorName": "Müller^Hans^^"}, True),
    ("PN other", {"ContentCreatorName": "Müller^Anna"}, False),
    # List of UID (C.2.2.2.2).
    ("UID list", {"SOPInstanceUID": ["1.2.3", "1.2.826.0.1.3680043.8.498.1"]}, True),
    ("UID list, none", {"SOPInstanceUID": ["1.2.3", "1.2.4"]}, False),
    ("SOP class", {"SOPClassUID": CT}, True),
    ("SOP class, XA", {"SOPClassUID": sop.XA_DPP_STORAGE}, False),
    # Universal (C.2.2.2.3).
    ("universal", {"ProtocolName": ""}, True),
    ("universal on an absent attribute", {"StudyDescription": ""}, True),
    # Wild card (C.2.2.2.4).
    ("wild card prefix", {"ProtocolName": "CT*"}, True),
    ("wild card infix", {"ProtocolName": "*Kopf*"}, True),
    ("wild card ?", {"ProtocolName": "CT?Kopf*"}, True),
    ("wild card, case-sensitive", {"ProtocolName": "ct*"}, False),
    ("wild card ? is one character", {"ProtocolName": "CT?"}, False),
    ("wild card on non-ASCII", {"InstitutionName": "H?pital*"}, True),
    ("wild card PN ignores case", {"ContentCreatorName": "müller*"}, True),
    ("wild card PN ?", {"ContentCreatorName": "M?ller^Hans"}, True),
    ("wild card, several *", {"ProtocolName": "**K*f*v"}, True),
    ("wild card, no match", {"ProtocolName": "*Thorax*"}, False),
    ("lone * is universal, empty included", {"StudyDescription": "*"}, True),
    ("wild card CS", {"EquipmentModality": "C?"}, True),
    # Range (C.2.2.2.5).
    ("DA single", {"InstanceCreationDate": "20240105"}, True),
    ("DA range", {"InstanceCreationDate": "20240101-20240131"}, True),
    ("DA range before", {"InstanceCreationDate": "-20240104"}, False),
    ("DA range open end", {"InstanceCreationDate": "20240105-"}, True),
    ("DA range after", {"InstanceCreationDate": "20240106-"}, False),
    ("TM range", {"InstanceCreationTime": "1000-1100"}, True),
    ("TM range, bound precision", {"InstanceCreationTime": "-1015"}, True),
    ("TM range after", {"InstanceCreationTime": "1016-"}, False),
    ("TM single by meaning", {"InstanceCreationTime": "1015"}, True),
    (
        "DA+TM single values",
        {"InstanceCreationDate": "20240105", "InstanceCreationTime": "10"},
        True,
    ),
    # Instance Creation Date + Time ranges: one DateTime (Table HH.6-1).
    (
        "DA+TM combined range",
        {"InstanceCreationDate": "20240104-20240105", "InstanceCreationTime": "1200-1100"},
        True,
    ),
    (
        "DA+TM combined, starts later",
        {"InstanceCreationDate": "20240105-20240106", "InstanceCreationTime": "1100-0900"},
        False,
    ),
    (
        "DA+TM different forms: separate",
        {"InstanceCreationDate": "20240101-20240110", "InstanceCreationTime": "1016-"},
        False,
    ),
    # Sequence matching (C.2.2.2.6): all item keys on one stored item.
    (
        "sequence, second item",
        {
            "PotentialScheduledProtocolCodeSequence": [
                {"CodeValue": "RPID22", "CodingSchemeDesignator": "RADLEX"}
            ]
        },
        True,
    ),
    (
        "sequence, keys from different items",
        {
            "PotentialScheduledProtocolCodeSequence": [
                {"CodeValue": "RPID16", "CodeMeaning": "CT HEAD W IV CONTRAST"}
            ]
        },
        False,
    ),
    (
        "sequence, wild card inside",
        {"ModelSpecificationSequence": [{"Manufacturer": "AC*", "ManufacturerModelName": "*9000"}]},
        True,
    ),
    (
        "sequence, nested sequence",
        {"CustodialOrganizationSequence": [{"InstitutionCodeSequence": [{"CodeValue": "HN1"}]}]},
        True,
    ),
    ("sequence, empty item is universal", {"AnatomicRegionSequence": [{}]}, True),
    (
        "sequence, absent attribute",
        {"ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "1.2"}]},
        False,
    ),
    ("sequence beyond the table", {"PatientSpecificationSequence": [{"PatientSex": "F"}]}, True),
    # Multi-valued attributes (C.2.2.3) and multi-valued keys (any value).
    ("multi-valued attribute", {"PotentialReasonsForProcedure": "Trauma"}, True),
    ("multi-valued key", {"EquipmentModality": ["MR", "CT"]}, True),
    ("multi-valued key, none", {"EquipmentModality": ["MR", "XA"]}, False),
    # All keys must match.
    ("two keys", {"ProtocolName": "CT*", "EquipmentModality": "CT"}, True),
    ("two keys, one fails", {"ProtocolName": "CT*", "EquipmentModality": "MR"}, False),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in MATCHING_CASES], ids=[c[0] for c in MATCHING_CASES]
)
def test_matching_types(spec: dict[str, Any], expected: bool) -> None:
    assert matches(spec) is expected
    assert query(spec).status == dimse_status.PENDING


def test_each_model_answers_with_its_own_instances(records: RecordCache) -> None:
    approval = to_record(
        build({**STORED_SPEC, "SOPClassUID": sop.PROTOCOL_APPROVAL_STORAGE}), records
    )
    protocol = to_record(build(STORED_SPEC), records)
    assert not matches({"ProtocolName": ""}, approval)
    assert query({"ProtocolName": ""}).matches(protocol)
    approvals = query({"SOPInstanceUID": ""}, model=APPROVAL_MODEL)
    assert approvals.matches(approval) and not approvals.matches(protocol)


def test_empty_stored_values_fail_any_matching_key(records: RecordCache) -> None:
    record = to_record(
        build({"SOPClassUID": CT, "ProtocolName": "", "EquipmentModality": "CT"}), records
    )
    assert not matches({"ProtocolName": "?*"}, record)
    assert not matches({"ProtocolName": "x"}, record)
    assert matches({"ProtocolName": "*"}, record)
    assert matches({"ProtocolName": ""}, record)


def test_person_name_component_groups(records: RecordCache) -> None:
    record = to_record(
        build(
            {
                "SpecificCharacterSet": "ISO_IR 192",
                "SOPClassUID": CT,
                "ContentCreatorName": "Yamada^Tarou=山田^太郎=やまだ^たろう",
            }
        ),
        records,
    )
    assert matches({"ContentCreatorName": "山田^太郎"}, record)
    assert matches({"ContentCreatorName": "yamada^tarou"}, record)
    assert matches({"ContentCreatorName": "山田*"}, record)
    assert matches({"ContentCreatorName": "Yamada^Tarou=山田^太郎=やまだ^たろう"}, record)
    assert not matches({"ContentCreatorName": "Yamada^Tarou=山田^次郎"}, record)


def test_datetime_ranges_with_offsets(records: RecordCache) -> None:
    record = to_record(
        build({"SOPClassUID": CT, "ContextGroupLocalVersion": "20240105101500+0100"}), records
    )
    assert matches({"ContextGroupLocalVersion": "20240105091500"}, record)  # same instant, UTC
    assert matches({"ContextGroupLocalVersion": "20240105-20240105"}, record)
    assert matches({"ContextGroupLocalVersion": "20240105000000-0500-"}, record)
    assert not matches({"ContextGroupLocalVersion": "2023"}, record)
    assert matches({"ContextGroupLocalVersion": "2024"}, record)


# -- responses --------------------------------------------------------------------


def test_response_holds_exactly_the_requested_keys() -> None:
    q = query(
        {
            "SOPInstanceUID": "",
            "ProtocolName": "CT*",
            "PotentialDiagnosticTasks": "",
            "ClinicalTrialCoordinatingCenterName": "",  # type 2 beyond the table, absent
        }
    )
    response = q.respond(RECORD)[1]
    assert sorted(e.keyword for e in response) == [
        "ClinicalTrialCoordinatingCenterName",
        "PotentialDiagnosticTasks",
        "ProtocolName",
        "SOPInstanceUID",
    ]
    assert "SpecificCharacterSet" not in response  # all values are ASCII
    assert response.ClinicalTrialCoordinatingCenterName in (None, "")
    assert response.ProtocolName == "CT Kopf nativ"
    assert response.SOPInstanceUID == STORED.SOPInstanceUID
    assert roundtrip(response).ProtocolName == "CT Kopf nativ"


def test_response_values_are_the_stored_values() -> None:
    q = query({"SliceThickness": "", "Rows": "", "PotentialReasonsForProcedure": "Trauma"})
    response = roundtrip(q.respond(RECORD)[1], implicit=False)
    assert response["SliceThickness"].VR == "DS" and str(response.SliceThickness) == "1.50"
    assert response.Rows == 512
    assert list(response.PotentialReasonsForProcedure) == ["Headache", "Trauma"]


def test_sequence_response_returns_only_matching_items_and_requested_keys() -> None:
    q = query(
        {"PotentialScheduledProtocolCodeSequence": [{"CodeValue": "RPID22", "CodeMeaning": ""}]}
    )
    (item,) = q.respond(RECORD)[1].PotentialScheduledProtocolCodeSequence
    assert sorted(e.keyword for e in item) == ["CodeMeaning", "CodeValue"]
    assert item.CodeMeaning == "CT HEAD W IV CONTRAST"


def test_return_only_item_keys_return_every_item() -> None:
    q = query({"ModelSpecificationSequence": [{"Manufacturer": ""}]})
    items = q.respond(RECORD)[1].ModelSpecificationSequence
    assert [i.Manufacturer for i in items] == ["ACME", "Other Corp"]
    assert all(list(i.keys()) == [tag_for_keyword("Manufacturer")] for i in items)


@pytest.mark.parametrize("empty_item", [False, True])
def test_universal_sequence_returns_the_listed_attributes(empty_item: bool) -> None:
    q = query({"ModelSpecificationSequence": [{}] if empty_item else []})
    first, second = q.respond(RECORD)[1].ModelSpecificationSequence
    assert sorted(e.keyword for e in first) == [
        "DeviceSerialNumber",
        "Manufacturer",
        "ManufacturerModelName",
        "ManufacturerRelatedModelGroup",
        "SoftwareVersions",
    ]  # Date of Manufacture is not listed in Table HH.6-1
    assert second.ManufacturerRelatedModelGroup in (None, "")  # type 2, absent: empty
    assert second.DeviceSerialNumber in (None, "")


def test_universal_code_sequence_returns_macro_attributes_present() -> None:
    q = query({"ResponsibleGroupCodeSequence": []})
    (item,) = q.respond(RECORD)[1].ResponsibleGroupCodeSequence
    assert item.CodeValue == "RG7" and item.ContextGroupVersion == "20240101"
    assert "LongCodeValue" not in item  # type 1C, absent: left out
    q = query({"PotentialScheduledProtocolCodeSequence": []})
    first = q.respond(RECORD)[1].PotentialScheduledProtocolCodeSequence[0]
    assert first.EquivalentCodeSequence[0].CodeValue == "HEAD-PLAIN"


def test_universal_sequence_beyond_the_table_returns_whole_items() -> None:
    q = query({"PatientSpecificationSequence": []})
    (item,) = q.respond(RECORD)[1].PatientSpecificationSequence
    assert (item.PatientSex, item.PatientAge) == ("F", "045Y")


def test_absent_sequence_is_returned_empty() -> None:
    q = query({"ReferencedImageSequence": []})
    assert len(q.respond(RECORD)[1].ReferencedImageSequence) == 0


# -- character sets ------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_non_ascii_queries_and_responses(charset: str) -> None:
    ident = roundtrip(
        build(
            {
                "SpecificCharacterSet": charset,
                "InstitutionName": "Hôpital*",
                "ContentCreatorName": "",
            }
        )
    )
    q = compile_query(ident)
    assert q.matches(RECORD)
    response = q.respond(RECORD)[1]
    assert response.SpecificCharacterSet == charset  # the requester's own, it can encode it
    received = roundtrip(response)
    assert received.InstitutionName == "Hôpital Nord"
    assert str(received.ContentCreatorName) == "Müller^Hans"


def test_response_falls_back_to_utf8_when_needed(records: RecordCache) -> None:
    record = to_record(
        build(
            {
                "SpecificCharacterSet": "ISO_IR 192",
                "SOPClassUID": CT,
                "ProtocolName": "頭部 CT",
            }
        ),
        records,
    )
    q = compile_query(roundtrip(build({"SpecificCharacterSet": "ISO_IR 100", "ProtocolName": ""})))
    response = q.respond(record)[1]
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert roundtrip(response).ProtocolName == "頭部 CT"


def test_latin1_instance_matches_utf8_query(records: RecordCache) -> None:
    latin = Dataset()
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.SOPClassUID = CT
    latin.ProtocolName = "Schädel"
    record = to_record(roundtrip(latin, implicit=False), records)
    assert record.first(0x00181030) == "Schädel"
    ident = roundtrip(build({"SpecificCharacterSet": "ISO_IR 192", "ProtocolName": "Sch?del"}))
    assert compile_query(ident).matches(record)


# -- invalid identifiers ----------------------------------------------------------------

INVALID_CASES = [
    (
        {"QueryRetrieveLevel": "STUDY"},
        dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        "QueryRetrieveLevel",
    ),
    (
        {"StudyInstanceUID": ""},
        dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        "StudyInstanceUID",
    ),
    (
        {"PatientID": "", "ProtocolName": ""},
        dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        "PatientID",
    ),
    ({}, dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no keys"),
    (
        {"SpecificCharacterSet": "ISO_IR 100"},
        dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        "no keys",
    ),
    ({"InstanceCreationDate": "20241301"}, dimse_status.UNABLE_TO_PROCESS, "InstanceCreationDate"),
    ({"InstanceCreationDate": "2024*"}, dimse_status.UNABLE_TO_PROCESS, "InstanceCreationDate"),
    (
        {"InstanceCreationDate": "20240110-20240101"},
        dimse_status.UNABLE_TO_PROCESS,
        "InstanceCreationDate",
    ),
    ({"InstanceCreationDate": "-"}, dimse_status.UNABLE_TO_PROCESS, "InstanceCreationDate"),
    ({"InstanceCreationTime": "2500"}, dimse_status.UNABLE_TO_PROCESS, "InstanceCreationTime"),
    ({"InstanceCreationTime": "1200-1100"}, dimse_status.UNABLE_TO_PROCESS, "InstanceCreationTime"),
    ({"SOPInstanceUID": "1.2.*"}, dimse_status.UNABLE_TO_PROCESS, "SOPInstanceUID"),
    ({"SOPInstanceUID": "1.02.3"}, dimse_status.UNABLE_TO_PROCESS, "SOPInstanceUID"),
    ({"EquipmentModality": "ct"}, dimse_status.UNABLE_TO_PROCESS, "EquipmentModality"),
    (
        {"PotentialScheduledProtocolCodeSequence": [{"CodeValue": "A"}, {"CodeValue": "B"}]},
        dimse_status.UNABLE_TO_PROCESS,
        "PotentialScheduledProtocolCodeSequence",
    ),
    (
        {"PredecessorProtocolSequence": [{"ReferencedSOPInstanceUID": "x.y"}]},
        dimse_status.UNABLE_TO_PROCESS,
        "ReferencedSOPInstanceUID",
    ),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of the invalid values
@pytest.mark.parametrize(
    ("spec", "code", "named"), INVALID_CASES, ids=[c[2] for c in INVALID_CASES]
)
def test_invalid_identifiers(spec: dict[str, Any], code: int, named: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        compile_query(build(spec))
    assert caught.value.status == code
    assert named in caught.value.comment
    assert len(caught.value.comment) <= 64


def test_wrong_vr_is_unprocessable() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00181030, "SQ", Sequence([Dataset()])))  # Protocol Name as a sequence
    with pytest.raises(InvalidIdentifier) as caught:
        compile_query(ds)
    assert caught.value.status == dimse_status.UNABLE_TO_PROCESS
    assert "ProtocolName" in caught.value.comment


def explicit_element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, whatever its value (short header VRs)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("tag", "vr", "value", "named"),
    [
        (0x00180050, "DS", b"thick ", "SliceThickness"),
        (0x00280010, "US", b"\x01\x02\x03\x00\x05\x00\x07", "Rows"),
        (0x00080012, "DA", b"2024-1-1", "InstanceCreationDate"),
    ],
)
def test_undecodable_values_are_unprocessable(tag: int, vr: str, value: bytes, named: str) -> None:
    data = explicit_element(0x00181030, "LO", b"") + explicit_element(tag, vr, value)
    if tag < 0x00181030:
        data = explicit_element(tag, vr, value) + explicit_element(0x00181030, "LO", b"")
    with pytest.raises(InvalidIdentifier) as caught:
        compile_query(decode(io.BytesIO(data), False, True))
    assert caught.value.status == dimse_status.UNABLE_TO_PROCESS
    assert named in caught.value.comment


# -- keys that cannot be honoured: 0xFF01 -------------------------------------------------


def test_private_keys_are_not_supported() -> None:
    ds = build({"ProtocolName": "CT*"})
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "anything")
    q = compile_query(ds)
    assert q.status == dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED
    assert q.matches(RECORD)  # ignored for matching (K.2.2.1.1.2)
    assert 0x00091001 not in q.respond(RECORD)[1]


def test_binary_keys_are_returned_but_not_matched(records: RecordCache) -> None:
    spec = {**STORED_SPEC, "SelectorOBValue": b"\x01\x02"}
    record = to_record(build(spec), records)
    q = query({"SelectorOBValue": b"\x09\x09"})
    assert q.status == dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED
    assert q.matches(record)
    assert q.respond(record)[1].SelectorOBValue == b"\x01\x02"


def test_bulk_values_are_not_returned(records: RecordCache) -> None:
    record = to_record(
        build({**STORED_SPEC, "SelectorOBValue": b"\x00" * (BULK_BYTES + 2)}), records
    )
    code, response = query({"SelectorOBValue": "", "ProtocolName": ""}).respond(record)
    assert code == dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED
    assert "SelectorOBValue" not in response and response.ProtocolName == "CT Kopf nativ"
    assert query({"ProtocolName": ""}).respond(record)[0] == dimse_status.PENDING
