"""SOP classes and transfer syntaxes served by the plugin (docs/design.md, PS3.4 HH, II and GG)."""

from typing import Final

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import sop_class as sc

CT_DPP_STORAGE: Final = str(sc.CTDefinedProcedureProtocolStorage)
XA_DPP_STORAGE: Final = str(sc.XADefinedProcedureProtocolStorage)
PROTOCOL_APPROVAL_STORAGE: Final = str(sc.ProtocolApprovalStorage)

DPP_FIND: Final = str(sc.DefinedProcedureProtocolInformationModelFind)
DPP_MOVE: Final = str(sc.DefinedProcedureProtocolInformationModelMove)
DPP_GET: Final = str(sc.DefinedProcedureProtocolInformationModelGet)

APPROVAL_FIND: Final = str(sc.ProtocolApprovalInformationModelFind)
APPROVAL_MOVE: Final = str(sc.ProtocolApprovalInformationModelMove)
APPROVAL_GET: Final = str(sc.ProtocolApprovalInformationModelGet)

#: Storage SOP classes the plugin accepts over C-STORE and REST, with the
#: label used for their series in Orthanc's patient/study/series tree.
STORAGE_CLASSES: Final[dict[str, str]] = {
    CT_DPP_STORAGE: "CT Defined Procedure Protocols",
    XA_DPP_STORAGE: "XA Defined Procedure Protocols",
    PROTOCOL_APPROVAL_STORAGE: "Protocol Approvals",
}

#: Defined Procedure Protocol storage classes: what C-FIND/C-GET/C-MOVE on
#: the DPP information model answer with (approvals have their own model).
DPP_STORAGE_CLASSES: Final = frozenset({CT_DPP_STORAGE, XA_DPP_STORAGE})

#: The uncompressed transfer syntaxes of every protocol sent or received: what the
#: listener accepts, what C-MOVE sub-operations propose and what the plugin's own
#: C-GETs accept for the instances they receive.
TRANSFER_SYNTAXES: Final[list[str]] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
#: ... and for the C-FIND, C-GET and C-MOVE requests the plugin sends: not Deflated,
#: whose responses pynetdicom would inflate in one call, without a bound.
QUERY_TRANSFER_SYNTAXES: Final[list[str]] = [
    ts for ts in TRANSFER_SYNTAXES if ts != DeflatedExplicitVRLittleEndian
]
