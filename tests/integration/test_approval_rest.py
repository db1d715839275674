"""Approving and rejecting protocols over REST (``POST /dpp/protocols/{uid}/approvals``) in the
real Orthanc, with HTTP Basic authentication: the instance made is a Protocol Approval any DICOM
peer finds and retrieves, and ``ApprovalState`` follows it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model.key_table import APPROVAL_MODEL
from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE
from tests.orthanc_server import HttpError, OrthancServer, free_port
from tests.peers import c_find, c_get, qr_modalities

USER = "physicist"


@pytest.fixture(scope="module")
def protocols() -> dict[str, Dataset]:
    return {name: make_protocol(seed, "CT") for name, seed in (("knee", 7301), ("spine", 7302))}


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, protocols: dict[str, Dataset]
) -> Iterator[OrthancServer]:
    config = {
        "DicomModalities": qr_modalities(free_port()),
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: "secret"},
    }
    with OrthancServer(tmp_path_factory.mktemp("approval-rest"), config=config) as server:
        for ds in protocols.values():
            server.post("/dpp/protocols", to_bytes(ds))
        yield server


def approve(orthanc: OrthancServer, uid: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST the body (as the requests of the library page do); the status and JSON answer."""
    try:
        status, _, answer = orthanc.request(
            "POST",
            f"/dpp/protocols/{uid}/approvals",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
    except HttpError as exc:
        return exc.status, exc.json()
    return status, json.loads(answer)


def state(orthanc: OrthancServer, uid: str) -> str:
    return orthanc.get_json(f"/dpp/protocols/{uid}")["ApprovalState"]


def listed(orthanc: OrthancServer, approval: str) -> set[str]:
    page = orthanc.get_json(f"/dpp/protocols?approval={approval}")
    return {p["SOPInstanceUID"] for p in page["Protocols"]}


def test_an_approval_made_over_rest_is_found_and_retrieved_over_dicom(
    orthanc: OrthancServer, protocols: dict[str, Dataset]
) -> None:
    knee = str(protocols["knee"].SOPInstanceUID)
    assert state(orthanc, knee) == "none" and knee in listed(orthanc, "none")
    status, answer = approve(
        orthanc, knee, {"Assertion": "approved", "Comment": "MPPG review", "ExpiresOn": "20991231"}
    )
    assert status == 201
    created = answer["SOPInstanceUID"]

    identifier = Dataset()
    identifier.SOPInstanceUID = ""
    subject = Dataset()
    subject.ReferencedSOPInstanceUID = knee
    identifier.ApprovalSubjectSequence = [subject]
    *pending, (final, _) = c_find(orthanc, identifier, APPROVAL_MODEL)
    assert final == 0x0000
    assert [str(ds.SOPInstanceUID) for code, ds in pending if ds is not None] == [created]

    done, received = c_get(orthanc, [created], model=APPROVAL_MODEL)
    assert int(done.Status) == 0x0000
    (approval,) = received
    assert approval.SOPClassUID == PROTOCOL_APPROVAL_STORAGE and "PatientID" not in approval
    assert approval.ApprovalSubjectSequence[0].ReferencedSOPInstanceUID == knee
    (item,) = approval.ApprovalSequence
    assert item.AssertionCodeSequence[0].CodeValue == "128603"
    assert item.AsserterIdentificationSequence[0].PersonName == USER  # the authenticated user
    assert item.AssertionExpirationDateTime == "20991231000000+0000"
    assert item.AssertionComments == "MPPG review"

    shown = orthanc.get_json(f"/dpp/protocols/{knee}")
    assert shown["ApprovalState"] == "approved" and shown["Approved"] is True
    assert shown["Approvals"][0]["AppliesToStoredContent"] is True  # bound to the content
    assert knee in listed(orthanc, "approved") and knee not in listed(orthanc, "none")
    row = orthanc.get_json(f"/dpp/protocols/{created}")
    assert row["Approves"] == [
        {"SOPInstanceUID": knee, "Stored": True, "ProtocolName": protocols["knee"].ProtocolName}
    ]


def test_a_rejection_or_a_lapsed_approval_changes_the_state_and_the_filter(
    orthanc: OrthancServer, protocols: dict[str, Dataset]
) -> None:
    spine = str(protocols["spine"].SOPInstanceUID)
    assert approve(orthanc, spine, {"Assertion": "approved", "ExpiresOn": "20200101"})[0] == 201
    assert state(orthanc, spine) == "expired" and spine in listed(orthanc, "expired")
    assert approve(orthanc, spine, {"Assertion": "rejected"})[0] == 201
    assert state(orthanc, spine) == "rejected"
    assert spine in listed(orthanc, "rejected") and spine not in listed(orthanc, "expired")


def test_bad_approvals_are_refused_and_store_nothing(
    orthanc: OrthancServer, protocols: dict[str, Dataset]
) -> None:
    knee = str(protocols["knee"].SOPInstanceUID)
    before = orthanc.get_json("/dpp/protocols")["Total"]
    status, answer = approve(orthanc, "1.2.3.4", {"Assertion": "approved"})
    assert status == 404 and "1.2.3.4" in answer["Error"]
    status, answer = approve(orthanc, knee, {"Assertion": "approved", "ExpiresOn": "31.12.2099"})
    assert status == 400 and answer["Field"] == "ExpiresOn"
    status, answer = approve(orthanc, knee, {"Assertion": "fine"})
    assert status == 400 and answer["Field"] == "Assertion"
    with pytest.raises(HttpError) as refused:
        orthanc.get("/dpp/protocols?approval=pending")
    assert refused.value.status == 400 and refused.value.json()["Parameter"] == "approval"
    assert orthanc.get_json("/dpp/protocols")["Total"] == before
