"""Protocol Approval Query/Retrieve (PS3.4 Annex II) and approval state over REST, in the real
Orthanc."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model.key_table import APPROVAL_MODEL, DPP_MODEL
from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE
from tests.orthanc_server import HttpError, OrthancServer, free_port
from tests.peers import (
    STORE_AET,
    associate,
    c_find,
    c_get,
    qr_modalities,
    store_protocols,
    storescp,
)


def approval_of(
    protocol: Dataset, seed: int, code: str, meaning: str, expires: str = ""
) -> Dataset:
    """A realistic approval from the sample generator, about ``protocol``, asserting ``code``."""
    ds = make_protocol(seed, "APPROVAL")
    subject = ds.ApprovalSubjectSequence[0]
    subject.ReferencedSOPClassUID = protocol.SOPClassUID
    subject.ReferencedSOPInstanceUID = protocol.SOPInstanceUID
    item = ds.ApprovalSequence[0]
    item.AssertionCodeSequence[0].CodeValue = code
    item.AssertionCodeSequence[0].CodingSchemeDesignator = "DCM"
    item.AssertionCodeSequence[0].CodeMeaning = meaning
    item.AssertionExpirationDateTime = expires
    ds.ApprovalSequence = Sequence([item])
    return ds


@pytest.fixture(scope="module")
def library() -> dict[str, Dataset]:
    head, chest, abdomen = (make_protocol(seed, "CT") for seed in (7101, 7102, 7103))
    return {
        "head": head,
        "chest": chest,
        "abdomen": abdomen,
        # head: approved; chest: approved, then deprecated; abdomen: approval expired.
        "head ok": approval_of(head, 7201, "128603", "Approved for use at the institution"),
        "chest ok": approval_of(chest, 7202, "128603", "Approved for use at the institution"),
        "chest gone": approval_of(chest, 7203, "128610", "Deprecated protocol"),
        "abdomen old": approval_of(
            abdomen, 7204, "128603", "Approved for use at the institution", "20200101000000"
        ),
    }


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, library: dict[str, Dataset]) -> Iterator:
    folder = tmp_path_factory.mktemp("approvals")
    store_port = free_port()
    server = OrthancServer(
        folder,
        dpp={"ApprovalStorers": ["TEST_SCU"]},  # "head ok" is C-STOREd by TEST_SCU
        config={"DicomModalities": qr_modalities(store_port)},
    )
    server.store_port = store_port  # type: ignore[attr-defined]
    with server:
        # Protocols and two approvals over DICOM, the other approvals over REST.
        store_protocols(server, [library[k] for k in ("head", "chest", "abdomen", "head ok")])
        for key in ("chest ok", "chest gone", "abdomen old"):
            server.post("/dpp/protocols", to_bytes(library[key]))
        yield server


def approvals_identifier(subject_uid: str = "") -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = ""
    subject = Dataset()
    subject.ReferencedSOPInstanceUID = subject_uid
    ds.ApprovalSubjectSequence = [subject]
    approval = Dataset()
    approval.AssertionDateTime = ""
    code = Dataset()
    code.CodeValue = ""
    approval.AssertionCodeSequence = [code]
    ds.ApprovalSequence = [approval]
    return ds


def test_c_find_finds_the_approvals_of_one_protocol(
    orthanc: OrthancServer, library: dict[str, Dataset]
) -> None:
    answers = c_find(orthanc, approvals_identifier(library["chest"].SOPInstanceUID), APPROVAL_MODEL)
    *pending, (final, _) = answers
    assert final == 0x0000
    found = {str(ds.SOPInstanceUID): ds for code, ds in pending if code == 0xFF00 and ds}
    expected = {library[k].SOPInstanceUID: library[k] for k in ("chest ok", "chest gone")}
    assert set(found) == set(expected)
    for uid, ds in found.items():
        sent = expected[uid].ApprovalSequence[0]
        (item,) = ds.ApprovalSequence
        assert item.AssertionCodeSequence[0].CodeValue == sent.AssertionCodeSequence[0].CodeValue
        assert item.AssertionDateTime == sent.AssertionDateTime
        assert (
            ds.ApprovalSubjectSequence[0].ReferencedSOPInstanceUID
            == library["chest"].SOPInstanceUID
        )


def test_each_model_finds_only_its_own_instances(
    orthanc: OrthancServer, library: dict[str, Dataset]
) -> None:
    universal = Dataset()
    universal.SOPInstanceUID = ""
    universal.SOPClassUID = ""
    approvals = {
        str(ds.SOPInstanceUID)
        for code, ds in c_find(orthanc, universal, APPROVAL_MODEL)
        if code == 0xFF00 and ds is not None
    }
    protocols = {
        str(ds.SOPInstanceUID)
        for code, ds in c_find(orthanc, universal, DPP_MODEL)
        if code == 0xFF00 and ds is not None
    }
    assert approvals == {ds.SOPInstanceUID for k, ds in library.items() if " " in k}
    assert protocols == {ds.SOPInstanceUID for k, ds in library.items() if " " not in k}


def test_a_dpp_key_on_the_approval_model_is_refused(orthanc: OrthancServer) -> None:
    ds = Dataset()
    ds.PatientID = ""
    ((code, _),) = c_find(orthanc, ds, APPROVAL_MODEL)
    assert code == 0xA900


def test_c_get_returns_the_stored_approvals(
    orthanc: OrthancServer, library: dict[str, Dataset]
) -> None:
    wanted = [library["head ok"].SOPInstanceUID, library["chest gone"].SOPInstanceUID]
    final, received = c_get(orthanc, wanted, model=APPROVAL_MODEL)
    assert int(final.Status) == 0x0000 and final.NumberOfCompletedSuboperations == 2
    by_uid = {str(ds.SOPInstanceUID): ds for ds in received}
    for key in ("head ok", "chest gone"):
        sent = copy.deepcopy(library[key])
        got = by_uid[sent.SOPInstanceUID]
        assert got.SOPClassUID == PROTOCOL_APPROVAL_STORAGE
        assert "PatientID" not in got  # normalization undone
        assert got == sent


def test_c_get_of_a_protocol_on_the_approval_model_fails_that_sub_operation(
    orthanc: OrthancServer, library: dict[str, Dataset]
) -> None:
    protocol = library["head"].SOPInstanceUID
    final, received = c_get(orthanc, [protocol], model=APPROVAL_MODEL)
    assert int(final.Status) == 0xA702 and not received
    assert final.FailedSOPInstanceUIDList == protocol


def test_c_move_sends_approvals_to_a_declared_destination(
    orthanc: OrthancServer, library: dict[str, Dataset], tmp_path: Path
) -> None:
    uid = library["abdomen old"].SOPInstanceUID
    with storescp(tmp_path, profile=True, port=orthanc.store_port, aet=STORE_AET) as (_, out):
        assoc = associate(orthanc, [APPROVAL_MODEL.move])
        identifier = Dataset()
        identifier.SOPInstanceUID = uid
        statuses = [
            int(status.Status)
            for status, _ in assoc.send_c_move(identifier, STORE_AET, APPROVAL_MODEL.move)
            if status is not None
        ]
        assoc.release()
        files = list(out.iterdir())
    assert statuses[-1] == 0x0000
    (received,) = [pydicom.dcmread(f) for f in files]
    assert received.SOPInstanceUID == uid and received.SOPClassUID == PROTOCOL_APPROVAL_STORAGE
    assert received.ApprovalSequence[0].AssertionExpirationDateTime == "20200101000000"


def test_rest_shows_approvals_and_filters_approved_protocols(
    orthanc: OrthancServer, library: dict[str, Dataset]
) -> None:
    chest = orthanc.get_json(f"/dpp/protocols/{library['chest'].SOPInstanceUID}")
    codes = sorted(
        a["AssertionCode"]["CodeValue"] for s in chest["Approvals"] for a in s["Assertions"]
    )
    assert codes == ["128603", "128610"] and chest["Approved"] is False  # deprecated
    head = orthanc.get_json(f"/dpp/protocols/{library['head'].SOPInstanceUID}")
    (approval,) = head["Approvals"]
    (assertion,) = approval["Assertions"]
    assert assertion["Current"] and assertion["Approves"] and head["Approved"] is True
    assert assertion["Asserter"] == str(
        library["head ok"].ApprovalSequence[0].AsserterIdentificationSequence[0].PersonName
    )
    abdomen = orthanc.get_json(f"/dpp/protocols/{library['abdomen'].SOPInstanceUID}")
    assert abdomen["Approvals"][0]["Assertions"][0]["Current"] is False  # expired in 2020
    assert abdomen["Approved"] is False

    approved = orthanc.get_json("/dpp/protocols?approved=true")
    assert [p["SOPInstanceUID"] for p in approved["Protocols"]] == [library["head"].SOPInstanceUID]
    assert approved["Total"] == 1
    others = orthanc.get_json("/dpp/protocols?approved=false")
    assert {p["SOPInstanceUID"] for p in others["Protocols"]} == {
        library["chest"].SOPInstanceUID,
        library["abdomen"].SOPInstanceUID,
    }
    with pytest.raises(HttpError) as refused:
        orthanc.get("/dpp/protocols?approved=maybe")
    assert refused.value.status == 400 and b"approved" in refused.value.body
