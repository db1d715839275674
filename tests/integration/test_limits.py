"""Deflate bombs, oversized and deeply nested datasets, huge identifiers: the real Orthanc.

Each ends with Orthanc answering, a new association working and the stored
library unchanged, and the bomb with Orthanc's peak memory barely moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelFind as DPP_FIND
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelGet as DPP_GET

from dpp_tools.samples import make_library, make_protocol
from orthanc_dpp.dicom.pynetdicom_private import reactor_paused
from orthanc_dpp.model.sop import CT_DPP_STORAGE
from tests import dicom_client
from tests.hostile import deflated_bomb, peak_memory_kb
from tests.orthanc_server import OrthancServer
from tests.peers import associate, store_protocols

MAXIMUM = 4 << 20  # MaximumDatasetSize of this server: 4 MiB


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("limits"),
        dpp={"MaximumDatasetSize": MAXIMUM, "MaximumPduSize": 0, "MaximumValuesPerKey": 100},
        config={"DicomModalities": {"scu": ["TEST_SCU", "127.0.0.1", 104]}},
    )
    with server:
        store_protocols(server, make_library(6, seed=7200))
        yield server


def raw_c_store(orthanc: OrthancServer, data: bytes, transfer_syntax: str) -> Dataset | None:
    """C-STORE already encoded dataset bytes; the response status, None if aborted."""
    assoc = dicom_client.associate(
        "127.0.0.1",
        orthanc.dpp_port,
        orthanc.aet,
        calling_aet="TEST_SCU",
        contexts=[CT_DPP_STORAGE],
        transfer_syntaxes=[transfer_syntax],
        timeout=60,
    )
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT_DPP_STORAGE
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    request.Priority = 2
    request.DataSet = BytesIO(data)
    context_id = assoc.accepted_contexts[0].context_id
    # As pynetdicom's own send_c_store: pause the association's reactor so
    # that it does not take the response for itself.
    with reactor_paused(assoc):
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    if assoc.is_established:
        assoc.release()
    return None if response is None else response


def test_deflate_bomb_is_refused_while_inflating(orthanc, unchanged) -> None:
    bomb = deflated_bomb(1 << 30)  # 1 GiB of zeros
    assert len(bomb) < 2 << 20
    before = peak_memory_kb(orthanc)
    response = raw_c_store(orthanc, bomb, DeflatedExplicitVRLittleEndian)
    assert response is not None
    assert response.Status == 0xA700
    assert response.ErrorComment.startswith("Dataset inflates to more than MaximumDatasetSize")
    # Inflation stopped at 4 MiB: Orthanc's peak memory did not grow by the gigabyte.
    assert peak_memory_kb(orthanc) - before < 200 * 1024
    assert "inflates to more than MaximumDatasetSize" in orthanc.log()


def test_dataset_larger_than_the_maximum_is_aborted_while_it_arrives(orthanc, unchanged) -> None:
    response = raw_c_store(orthanc, bytes(MAXIMUM + (1 << 20)), ExplicitVRLittleEndian)
    assert response is None  # aborted
    assert "(MaximumDatasetSize) was being sent" in orthanc.log()


def test_deeply_nested_dataset_is_refused(orthanc, unchanged) -> None:
    ds = make_protocol(9500, "CT")
    item = Dataset()
    item.CodeValue = "X"
    for _ in range(40):
        outer = Dataset()
        outer.ContentSequence = Sequence([item])
        item = outer
    ds.ContentSequence = item.ContentSequence
    assoc = associate(orthanc)
    answer = assoc.send_c_store(ds)
    assoc.release()
    assert answer.Status == 0xC000
    assert answer.ErrorComment == "Sequences nested deeper than MaximumNestingDepth (8)"


def test_identifier_with_too_many_values(orthanc, unchanged) -> None:
    identifier = Dataset()
    identifier.SOPInstanceUID = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(101)]
    assoc = associate(orthanc, [DPP_FIND, DPP_GET])
    ((find_status, _),) = list(assoc.send_c_find(identifier, DPP_FIND))
    get_responses = [s for s, _ in assoc.send_c_get(identifier, DPP_GET) if s is not None]
    assoc.release()
    assert find_status.Status == 0xA700
    assert find_status.ErrorComment.startswith("SOPInstanceUID has 101 values, more than")
    assert get_responses[-1].Status == 0xA701
