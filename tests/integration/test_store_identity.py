"""A C-STORE whose command announces one instance and whose dataset is another: the real Orthanc.

The command's Affected SOP Class UID, the presentation context's abstract
syntax and the dataset's SOP Class UID must agree (0xA900 otherwise), and
the dataset's SOP Instance UID must be the Affected SOP Instance UID
(0xC000 otherwise). Each refusal is logged with the caller and both UIDs,
and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dpp_tools.samples import make_library, make_protocol
from orthanc_dpp.dicom.pynetdicom_private import reactor_paused
from orthanc_dpp.model.sop import CT_DPP_STORAGE, PROTOCOL_APPROVAL_STORAGE, STORAGE_CLASSES
from tests import dicom_client
from tests.orthanc_server import HttpError, OrthancServer
from tests.peers import c_find, find_identifier, library_unchanged, store_protocols

ANNOUNCED = "1.2.826.0.1.3680043.8.498.424242"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("identity"),
        config={"DicomModalities": {"scu": ["TEST_SCU", "127.0.0.1", 104]}},
    )
    with server:
        store_protocols(server, make_library(4, seed=7600))
        yield server


@pytest.fixture
def unchanged(orthanc: OrthancServer) -> Iterator[None]:
    with library_unchanged(orthanc):
        yield


def announced_store(
    orthanc: OrthancServer,
    ds: Dataset,
    *,
    affected_uid: str,
    affected_class: str | None = None,
    context_class: str | None = None,
) -> Dataset:
    """C-STORE ``ds`` on ``context_class``'s context with a command naming the given UIDs.

    pynetdicom's ``send_c_store`` takes both UIDs from the dataset; a peer
    that lies builds the command itself, as here.
    """
    own_class = str(ds.SOPClassUID)
    assoc = dicom_client.associate(
        "127.0.0.1",
        orthanc.dpp_port,
        orthanc.aet,
        calling_aet="TEST_SCU",
        contexts=list(STORAGE_CLASSES),
        transfer_syntaxes=[ExplicitVRLittleEndian],
        timeout=60,
    )
    context = next(
        cx for cx in assoc.accepted_contexts if cx.abstract_syntax == (context_class or own_class)
    )
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = affected_class or context.abstract_syntax
    request.AffectedSOPInstanceUID = affected_uid
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, False, True) or b"")
    with reactor_paused(assoc):
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    assoc.release()
    assert response is not None, "no C-STORE response"
    return response


def refused_as_another_class(
    orthanc: OrthancServer,
    ds: Dataset,
    *,
    affected_class: str | None = None,
    context_class: str | None = None,
) -> Dataset:
    """Announce ``ds`` under its own instance UID but with another class (in the command or
    the context); the response, which must be 0xA900."""
    response = announced_store(
        orthanc,
        ds,
        affected_uid=str(ds.SOPInstanceUID),
        affected_class=affected_class,
        context_class=context_class,
    )
    assert response.Status == 0xA900
    return response


def nowhere(orthanc: OrthancServer, *uids: str) -> None:
    """Neither C-FIND nor the REST API knows any of ``uids``."""
    for uid in uids:
        assert c_find(orthanc, find_identifier(SOPInstanceUID=uid)) == [(0x0000, None)]
        with pytest.raises(HttpError) as error:
            orthanc.get(f"/dpp/protocols/{uid}")
        assert error.value.status == 404


def test_dataset_that_is_not_the_announced_instance_is_refused(orthanc, unchanged) -> None:
    impostor = make_protocol(7700, "CT")
    own = str(impostor.SOPInstanceUID)
    response = announced_store(orthanc, impostor, affected_uid=ANNOUNCED)
    assert response.Status == 0xC000
    assert response.ErrorComment == "SOP Instance UID is not the Affected SOP Instance UID"
    assert response.AffectedSOPInstanceUID == ANNOUNCED
    detail = (
        f"refused (0xC000): the dataset's SOP Instance UID {own} is not the Affected SOP "
        f"Instance UID {ANNOUNCED}"
    )
    assert orthanc.wait_for_log(detail)
    line = next(line for line in orthanc.log().splitlines() if detail in line)
    assert line.startswith("W")  # Orthanc's warning level
    assert "C-STORE from TEST_SCU@127.0.0.1:" in line  # the caller and its address
    nowhere(orthanc, own, ANNOUNCED)


def test_stored_instance_announced_as_another_is_refused(orthanc, unchanged) -> None:
    # The peer names a stored protocol in its command and sends a new one under another UID.
    stored = orthanc.get_json("/dpp/protocols?limit=1")["Protocols"][0]["SOPInstanceUID"]
    newcomer = make_protocol(7701, "XA")
    response = announced_store(orthanc, newcomer, affected_uid=stored)
    assert response.Status == 0xC000
    assert response.ErrorComment == "SOP Instance UID is not the Affected SOP Instance UID"
    nowhere(orthanc, str(newcomer.SOPInstanceUID))


def test_dataset_without_sop_instance_uid_is_refused(orthanc, unchanged) -> None:
    nameless = make_protocol(7702, "CT")
    del nameless.SOPInstanceUID
    response = announced_store(orthanc, nameless, affected_uid=ANNOUNCED)
    assert response.Status == 0xC000
    assert response.ErrorComment == "SOP Instance UID (0008,0018) missing from the dataset"
    assert orthanc.wait_for_log(
        f"refused (0xC000): the dataset announced as {ANNOUNCED} has no SOP Instance UID"
    )
    nowhere(orthanc, ANNOUNCED)


def test_command_announcing_another_class_is_refused(orthanc, unchanged) -> None:
    # A protocol on its own context, announced by the command as an approval.
    protocol = make_protocol(7703, "CT")
    response = refused_as_another_class(orthanc, protocol, affected_class=PROTOCOL_APPROVAL_STORAGE)
    assert response.ErrorComment == "Affected SOP Class UID is not the presentation context's"
    assert orthanc.wait_for_log(
        f"refused (0xA900): Affected SOP Class UID {PROTOCOL_APPROVAL_STORAGE} is not the "
        f"presentation context's {CT_DPP_STORAGE}"
    )
    nowhere(orthanc, str(protocol.SOPInstanceUID))


def test_dataset_of_another_class_than_announced_is_refused(orthanc, unchanged) -> None:
    # An approval sent on the CT protocol context, the command naming CT protocols.
    approval = make_protocol(7704, "APPROVAL")
    response = refused_as_another_class(orthanc, approval, context_class=CT_DPP_STORAGE)
    assert response.ErrorComment.startswith(f"SOP Class UID {PROTOCOL_APPROVAL_STORAGE}")
    assert orthanc.wait_for_log(f"does not match the presentation context ({CT_DPP_STORAGE})")
    nowhere(orthanc, str(approval.SOPInstanceUID))
