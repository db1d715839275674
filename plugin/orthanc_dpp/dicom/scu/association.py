"""The association of one DPP query or retrieve on another archive.

:func:`open_association` requests it through :mod:`orthanc_dpp.dicom.outbound`
(TLS, the modality's own AE title and timeout, the listener's limits),
proposing the query/retrieve context and, for a C-GET, the DPP storage
contexts in the SCP role; a refusal becomes a
:class:`~orthanc_dpp.dicom.scu.answers.RemoteError` worded by
:data:`~orthanc_dpp.dicom.scu.answers.SCU_WORDS`. Each association carries one
request, :data:`MESSAGE_ID`, and ends with :func:`close_association`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pynetdicom import Association, build_context, build_role

from orthanc_dpp.dicom.connections import ConnectionGuard
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import (
    AssociationFailed,
    AssociationRequest,
    Calling,
    Handler,
    request_association,
)
from orthanc_dpp.dicom.scu.answers import RemoteError, refusal_reason
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES, QUERY_TRANSFER_SYNTAXES, TRANSFER_SYNTAXES

#: Message ID of our one request per association (C-CANCEL names it).
MESSAGE_ID = 1


def open_association(
    caller: Calling,
    modality: Modality,
    sop_class: str,
    *,
    storage: bool = False,
    handlers: Sequence[Handler] = (),
    guard: ConnectionGuard | None = None,
) -> Association:
    """An association for ``sop_class`` (plus the DPP storage classes in the SCP role
    with ``storage``, for C-GET), within the limits of ``guard`` (by default
    :func:`~orthanc_dpp.dicom.outbound.guard_for`); raises :class:`RemoteError` saying why not."""
    contexts = [build_context(sop_class, QUERY_TRANSFER_SYNTAXES)]
    roles: list[Any] = []
    if storage:
        # One context per transfer syntax: the remote sends each protocol as it holds it.
        contexts += [
            build_context(storage_class, ts)
            for storage_class in sorted(DPP_STORAGE_CLASSES)
            for ts in TRANSFER_SYNTAXES
        ]
        roles = [build_role(c, scp_role=True) for c in sorted(DPP_STORAGE_CLASSES)]
    request = AssociationRequest(
        modality, contexts, roles=roles, handlers=handlers, required=sop_class, guard=guard
    )
    try:
        return request_association(caller, request)
    except AssociationFailed as failed:
        raise RemoteError(refusal_reason(modality, failed)) from None


def close_association(assoc: Association, abort: bool) -> None:
    """Release an association that ended as agreed, abort one that did not."""
    if not assoc.is_established:
        return
    if abort:
        assoc.abort()
    else:
        assoc.release()
