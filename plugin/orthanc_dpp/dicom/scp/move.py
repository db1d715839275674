"""C-MOVE of the DPP and Protocol Approval models (PS3.4 HH.4.3): sub-operations on a new
association with the destination.

The destination comes from Orthanc's modality list; its association is
requested through :mod:`orthanc_dpp.dicom.outbound`, from the listener's own AE.
Everything a C-MOVE shares with a C-GET is
:class:`~orthanc_dpp.dicom.scp.retrieve.RetrieveHandler`'s.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Final

from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.service_class import QueryRetrieveServiceClass

from orthanc_dpp.dicom.access import Decision, Gatekeeper, Service
from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.dicom.modalities import Modality, ModalityList
from orthanc_dpp.dicom.outbound import (
    AssociationFailed,
    AssociationRequest,
    Calling,
    Refusal,
    request_association,
)
from orthanc_dpp.dicom.scp.retrieve import (
    DEFAULT_OPTIONS,
    ProtocolSource,
    Reply,
    RequesterGone,
    RetrieveHandler,
    RetrieveOptions,
    Tally,
    message_ids,
)
from orthanc_dpp.dicom.scp.suboperations import FAILED, Preparer
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.key_table import InformationModel
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES
from orthanc_dpp.storage.decoding import DatasetLimits

#: How a C-MOVE words each refusal of its sub-association, after "destination {AET}: "
#: (the final response's Error Comment) and in the log line of the failed move.
MOVE_WORDS: Final[Mapping[Refusal, str]] = {
    Refusal.NO_TLS_SETUP: "UseDicomTls is set but the plugin has no DICOM TLS client setup",
    Refusal.CANNOT_REQUEST: "cannot request an association: {detail}",
    Refusal.NOT_CONNECTED: "cannot connect (refused or timed out)",
    Refusal.REJECTED: "association rejected",
    Refusal.GUARD_ABORTED: "association aborted: {detail}",
    Refusal.NO_CONTEXT: "none of the storage contexts accepted",
    Refusal.ABORTED: "association aborted",
    # Not requested by moves (no required context); worded like NO_CONTEXT.
    Refusal.NOT_ACCEPTED: "none of the storage contexts accepted",
}


class MoveHandler(RetrieveHandler[C_MOVE, Modality]):
    """C-MOVE; bind it to ``evt.EVT_C_MOVE``. Its target: the Move Destination's modality.

    ``tls_context`` is the client context for destinations with
    ``UseDicomTls``.
    """

    permission = Service.MOVE
    name = "C-MOVE"
    metric = "c_move"

    def __init__(
        self,
        source: ProtocolSource,
        gate: Gatekeeper,
        options: RetrieveOptions = DEFAULT_OPTIONS,
        *,
        tls_context: ssl.SSLContext | None = None,
        limits: DatasetLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(source, gate, options, limits=limits, metrics=metrics)
        self.tls_context = tls_context

    def _target(
        self,
        req: C_MOVE,
        modalities: ModalityList,
        decision: Decision,
        peer: str,
        reply: Reply,
    ) -> Modality | None:
        aet = (req.MoveDestination or "").strip()
        destination = modalities.resolve_destination(aet)
        if destination is None:
            comment = f"move destination {aet!r} is not in Orthanc's DicomModalities"
            self.log.warning("C-MOVE from %s refused: %s", peer, comment)
            reply.refuse(dimse_status.MOVE_DESTINATION_UNKNOWN, comment)
        return destination

    def _where(self, target: Modality) -> str:
        return f" to {target.describe()}"

    def _associate(
        self,
        service: QueryRetrieveServiceClass,
        destination: Modality,
        storage_classes: frozenset[str],
    ) -> tuple[Association | None, str]:
        """Open the sub-association; on failure return (None, why)."""
        contexts = [
            build_context(sop_class, ts)
            for sop_class in sorted(storage_classes)
            for ts in TRANSFER_SYNTAXES  # one context each: instances go out as stored
        ]
        request = AssociationRequest(
            destination,
            contexts,
            handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
            # From the listener's own AE: pynetdicom counts it with the listener's associations.
            ae=service.ae,
        )
        calling = Calling.like(service.ae, self.tls_context, self.limits)
        try:
            return request_association(calling, request), ""
        except AssociationFailed as failed:
            return None, failed.worded(MOVE_WORDS)

    def _retrieve(
        self,
        service: QueryRetrieveServiceClass,
        req: C_MOVE,
        reply: Reply,
        plan: list[tuple[str, str | None]],
        tally: Tally,
        target: Modality,
        model: InformationModel,
    ) -> None:
        destination = target
        store: Association | None = None
        if any(orthanc_id for _, orthanc_id in plan):
            store, why = self._associate(service, destination, model.storage_classes)
            if store is None:
                reason = f"destination {destination.aet}: {why}"
                self.log.error(
                    "C-MOVE from %s: cannot send to %s: %s",
                    service.assoc.requestor.ae_title,
                    destination.describe(),
                    why,
                )
                for uid, orthanc_id in plan:
                    tally.record(uid, FAILED, reason if orthanc_id else "not stored here")
                reply.final(tally, comment=reason)
                return
        # No store association means nothing is stored here: every
        # sub-operation fails as prepared and nothing is sent.
        sender = store if store is not None else service.assoc
        preparer = Preparer(
            self.source.load,
            sender,
            destination.allow_transcoding,
            sender.dimse.maximum_pdu_size,
            self.log,
            originator=(service.assoc.requestor.ae_title, int(req.MessageID or 0)),
        )

        def lost() -> str:
            self.log.error(
                "C-MOVE to %s: association lost after %d sub-operations",
                destination.describe(),
                tally.total - tally.remaining,
            )
            return f"destination {destination.aet}: association lost"

        try:
            finished = self._run(
                service, req, reply, plan, tally, sender, preparer, message_ids(0), lost
            )
            if store is not None and store.is_established:
                store.release()  # before the final response: everything is delivered
            if finished:
                reply.final(tally)
            else:
                self.log.info("C-MOVE cancelled by the requester: %s", tally.summary())
                reply.cancelled(tally)
        except RequesterGone:
            return  # the finally clause releases
        finally:
            if store is not None and store.is_established:
                store.release()
