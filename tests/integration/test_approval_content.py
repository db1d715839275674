"""Approvals approve content, and only ApprovalStorers C-STORE them, in the real Orthanc.

A Protocol Approval names its protocol by SOP Instance UID. Replacing the
protocol with other content (``OverwriteInstances``, or delete and upload)
used to keep the approval: the changed protocol read as approved. And any
caller allowed to store protocols could C-STORE an approval.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from dpp_tools.samples import make_protocol, to_bytes
from tests.orthanc_server import OrthancServer
from tests.peers import associate

APPROVER = "APPROVER"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("approval-content"),
        dpp={"ApprovalStorers": [APPROVER]},
        config={
            "OverwriteInstances": True,
            "DicomModalities": {
                "scu": ["TEST_SCU", "127.0.0.1", 104],
                "approver": [APPROVER, "127.0.0.1", 104],
            },
        },
    )
    with server:
        yield server


def approval_of(protocol: Dataset, seed: int) -> Dataset:
    """An approval "Approved for use at the institution" of ``protocol``, not expiring."""
    ds = make_protocol(seed, "APPROVAL")
    subject = ds.ApprovalSubjectSequence[0]
    subject.ReferencedSOPClassUID = protocol.SOPClassUID
    subject.ReferencedSOPInstanceUID = protocol.SOPInstanceUID
    item = ds.ApprovalSequence[0]
    item.AssertionCodeSequence[0].CodeValue = "128603"
    item.AssertionCodeSequence[0].CodingSchemeDesignator = "DCM"
    item.AssertionCodeSequence[0].CodeMeaning = "Approved for use at the institution"
    item.AssertionExpirationDateTime = ""
    ds.ApprovalSequence = Sequence([item])
    return ds


def c_store(orthanc: OrthancServer, ds: Dataset, ae_title: str) -> Dataset:
    assoc = associate(orthanc, ae_title=ae_title)
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def approved(orthanc: OrthancServer, protocol: Dataset) -> bool:
    """``Approved`` of the protocol, checked against the approved list and each approval."""
    uid = protocol.SOPInstanceUID
    answer = orthanc.get_json(f"/dpp/protocols/{uid}")
    listed = {
        p["SOPInstanceUID"] for p in orthanc.get_json("/dpp/protocols?approved=true")["Protocols"]
    }
    assert (uid in listed) == answer["Approved"]
    assert answer["Approved"] == any(
        a.get("AppliesToStoredContent", True) for a in answer["Approvals"]
    )
    return bool(answer["Approved"])


def test_an_approval_applies_to_the_content_it_approved(orthanc: OrthancServer) -> None:
    protocol = make_protocol(8801, "CT")
    orthanc.post("/dpp/protocols", to_bytes(protocol))
    answer = c_store(orthanc, approval_of(protocol, 8901), APPROVER)
    assert int(answer.Status) == 0x0000
    assert approved(orthanc, protocol)

    # Same content again: still approved.
    orthanc.post("/dpp/protocols", to_bytes(protocol))
    assert approved(orthanc, protocol)

    # Replaced with other content (OverwriteInstances): not approved any more.
    changed = copy.deepcopy(protocol)
    changed.ProtocolName = "changed after the approval"
    orthanc.post("/dpp/protocols", to_bytes(changed))
    assert orthanc.get_json(f"/dpp/protocols/{protocol.SOPInstanceUID}")["ProtocolName"] == (
        "changed after the approval"
    )
    assert not approved(orthanc, protocol)

    # The approved content stored again: approved again.
    orthanc.post("/dpp/protocols", to_bytes(protocol))
    assert approved(orthanc, protocol)

    # Deleted and uploaded with other content: not approved; after a restart neither.
    orthanc.delete(f"/dpp/protocols/{protocol.SOPInstanceUID}")
    orthanc.post("/dpp/protocols", to_bytes(changed))
    assert not approved(orthanc, protocol)
    orthanc.restart()
    assert not approved(orthanc, protocol)

    # Approved again (over REST: whoever may upload protocols) applies to the new content.
    orthanc.post("/dpp/protocols", to_bytes(approval_of(changed, 8902)))
    assert approved(orthanc, protocol)
    orthanc.restart()  # the record is kept in Orthanc's database
    assert approved(orthanc, protocol)


def test_only_approval_storers_c_store_approvals(orthanc: OrthancServer) -> None:
    protocol = make_protocol(8802, "CT")
    answer = c_store(orthanc, protocol, "TEST_SCU")
    assert int(answer.Status) == 0x0000  # a declared modality stores protocols
    approval = approval_of(protocol, 8903)
    refused = c_store(orthanc, approval, "TEST_SCU")
    assert int(refused.Status) == 0x0124 and refused.ErrorComment == "Not authorised"
    assert (
        orthanc.wait_for_log("C-STORE of a Protocol Approval from TEST_SCU@127.0.0.1:")
        and "refused: AET TEST_SCU is not in ApprovalStorers" in orthanc.log()
    )
    assert orthanc.status_of("GET", f"/dpp/protocols/{approval.SOPInstanceUID}") == 404
    assert not approved(orthanc, protocol)
    assert int(c_store(orthanc, approval, APPROVER).Status) == 0x0000
    assert approved(orthanc, protocol)
