"""The Protocol Approval the plugin makes for ``POST /dpp/protocols/{uid}/approvals``."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from typing import Any

import pydicom
import pytest

from orthanc_dpp.model import approvals
from orthanc_dpp.model.approval_instance import (
    ApprovalRequest,
    Asserter,
    BadApproval,
    build,
    parse_request,
)
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record
from orthanc_dpp.model.sop import CT_DPP_STORAGE, PROTOCOL_APPROVAL_STORAGE

NOW = datetime(2026, 12, 7, 18, 30, 15, 250000, tzinfo=UTC)
PLUGIN = Asserter(None, "DPP_ARCHIVE", "0.1.0")


def round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The instance as a Part 10 file and back, as Orthanc would keep it."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_an_approval_by_a_user_names_the_protocol_the_code_the_user_and_the_dates() -> None:
    wanted = ApprovalRequest("approved", "Reviewed by the committee", date(2027, 6, 30))
    ds = round_trip(
        build(CT_DPP_STORAGE, "1.2.3.4", wanted, Asserter("jdoe", "DPP_ARCHIVE", "0.1.0"), NOW)
    )
    assert ds.SOPClassUID == PROTOCOL_APPROVAL_STORAGE
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    (subject,) = ds.ApprovalSubjectSequence
    assert (subject.ReferencedSOPClassUID, subject.ReferencedSOPInstanceUID) == (
        CT_DPP_STORAGE,
        "1.2.3.4",
    )
    (item,) = ds.ApprovalSequence
    (code,) = item.AssertionCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "128603",
        "DCM",
        "Approved for use at the institution",
    )
    (person,) = item.AsserterIdentificationSequence
    assert (person.ObserverType, person.PersonName) == ("PSN", "jdoe")
    assert person.PersonIdentificationCodeSequence[0].CodeValue == "jdoe"
    assert item.AssertionDateTime == "20261207183015.250000+0000"
    assert item.AssertionExpirationDateTime == "20270630000000+0000"
    assert item.AssertionComments == "Reviewed by the committee"
    assert item.InstitutionCodeSequence[0].CodeValue == "DPP_ARCHIVE"  # C.34.15: 1C
    assert "PatientID" not in ds  # the store path's normalization adds it


def test_without_a_user_the_plugin_asserts_as_a_device_and_a_rejection_withdraws() -> None:
    ds = round_trip(build(CT_DPP_STORAGE, "1.2.3.4", ApprovalRequest("rejected"), PLUGIN, NOW))
    (item,) = ds.ApprovalSequence
    (device,) = item.AsserterIdentificationSequence
    assert (device.ObserverType, device.StationAETitle) == ("DEV", "DPP_ARCHIVE")
    assert "PersonName" not in device
    assert item.AssertionCodeSequence[0].CodeValue == "128609"  # Disapproved for any use
    assert item.AssertionExpirationDateTime == "" and "AssertionComments" not in item
    assert "InstitutionCodeSequence" not in item


@pytest.mark.parametrize(("word", "approves"), [("approved", True), ("rejected", False)])
def test_what_the_plugin_makes_is_read_back_as_the_word_asked_for(
    word: str, approves: bool
) -> None:
    ds = build(CT_DPP_STORAGE, "1.2.3.4", ApprovalRequest(word), PLUGIN, NOW)
    summary = approvals.summary("id", ds.SOPInstanceUID, to_record(ds, RecordCache()), NOW)
    (assertion,) = summary["Assertions"]
    assert (assertion["Approves"], assertion["Withdraws"]) == (approves, not approves)
    assert approvals.state([summary]) == word
    assert assertion["Asserter"] == "DPP_ARCHIVE"  # a device, by its AE title
    assert assertion["Comment"] is None


def test_the_comment_is_read_back_in_the_summary() -> None:
    wanted = ApprovalRequest("approved", "Reviewed: dose ≤ 10 mGy")
    ds = round_trip(build(CT_DPP_STORAGE, "1.2.3.4", wanted, PLUGIN, NOW))
    summary = approvals.summary("id", ds.SOPInstanceUID, to_record(ds, RecordCache()), NOW)
    assert summary["Assertions"][0]["Comment"] == "Reviewed: dose ≤ 10 mGy"


def test_a_user_name_with_name_delimiters_stays_one_name() -> None:
    ds = build(
        CT_DPP_STORAGE,
        "1.2.3.4",
        ApprovalRequest("approved"),
        Asserter("dr^who=x", "A", "1"),
        NOW,
    )
    person = ds.ApprovalSequence[0].AsserterIdentificationSequence[0]
    assert str(person.PersonName) == "dr who x"
    assert person.PersonIdentificationCodeSequence[0].CodeValue == "dr^who=x"


def test_each_instance_and_assertion_has_its_own_uid() -> None:
    first, second = (
        build(CT_DPP_STORAGE, "1.2.3.4", ApprovalRequest("approved"), PLUGIN, NOW) for _ in range(2)
    )
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.ApprovalSequence[0].AssertionUID != second.ApprovalSequence[0].AssertionUID


def test_a_full_body_is_read() -> None:
    body = {"Assertion": "approved", "Comment": "ok", "ExpiresOn": "20280229"}
    assert parse_request(body) == ApprovalRequest("approved", "ok", date(2028, 2, 29))
    assert parse_request({"Assertion": "rejected"}) == ApprovalRequest("rejected")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "Assertion"),
        ({"Assertion": "maybe"}, "Assertion"),
        ({"Assertion": True}, "Assertion"),
        ({"Assertion": "approved", "Comment": 3}, "Comment"),
        ({"Assertion": "approved", "Comment": "x" * 10241}, "Comment"),
        ({"Assertion": "approved", "ExpiresOn": "2027-01-01"}, "ExpiresOn"),
        ({"Assertion": "approved", "ExpiresOn": "20270230"}, "ExpiresOn"),
        ({"Assertion": "approved", "ExpiresOn": 20270101}, "ExpiresOn"),
        ({"Assertion": "approved", "Expires": "20270101"}, "Expires"),
        (["approved"], None),
    ],
)
def test_a_bad_body_names_the_member_at_fault(body: Any, field: str | None) -> None:
    with pytest.raises(BadApproval) as refused:
        parse_request(body)
    assert refused.value.field == field
    assert field is None or field in str(refused.value)
