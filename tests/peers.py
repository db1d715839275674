"""DICOM peers for the integration tests and benchmarks."""

from __future__ import annotations

from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification

from orthanc_dpp.listener import TRANSFER_SYNTAXES
from orthanc_dpp.sop import STORAGE_CLASSES
from tests.orthanc_server import OrthancServer


def associate(
    orthanc: OrthancServer,
    contexts: list[str] | None = None,
    transfer_syntaxes: list[str] | None = None,
    ae_title: str = "TEST_SCU",
) -> Association:
    """An established association with the plugin's DPP listener."""
    ae = AE(ae_title=ae_title)
    for context in contexts or [Verification, *STORAGE_CLASSES]:
        ae.add_requested_context(context, transfer_syntaxes or TRANSFER_SYNTAXES)
    assoc = ae.associate("127.0.0.1", orthanc.dpp_port, ae_title=orthanc.aet)
    assert assoc.is_established, "association with the DPP listener was not accepted"
    return assoc
