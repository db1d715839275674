"""C-GET of the DPP and Protocol Approval models (PS3.4 HH.4.2).

Its sub-operations go on the requesting association. Everything a C-GET
shares with a C-MOVE (permission, identifier, the sub-operation loop,
responses) is :class:`~orthanc_dpp.dicom.scp.retrieve.RetrieveHandler`'s.
"""

from __future__ import annotations

from pynetdicom.dimse_primitives import C_GET
from pynetdicom.service_class import QueryRetrieveServiceClass

from orthanc_dpp.dicom.access import Decision, Service
from orthanc_dpp.dicom.modalities import ModalityList
from orthanc_dpp.dicom.scp.retrieve import Reply, RequesterGone, RetrieveHandler, Tally, message_ids
from orthanc_dpp.dicom.scp.suboperations import Preparer
from orthanc_dpp.model.key_table import InformationModel


class GetHandler(RetrieveHandler[C_GET, bool]):
    """C-GET; bind it to ``evt.EVT_C_GET``. Its target: whether instances may be converted.

    A declared requester converts as its modality's ``AllowTranscoding``
    says; an unknown one admitted by ``UnknownCallers`` always may.
    """

    permission = Service.GET
    name = "C-GET"
    metric = "c_get"

    def _target(
        self,
        req: C_GET,
        modalities: ModalityList,
        decision: Decision,
        peer: str,
        reply: Reply,
    ) -> bool:
        return decision.modality is None or decision.modality.allow_transcoding

    def _retrieve(
        self,
        service: QueryRetrieveServiceClass,
        req: C_GET,
        reply: Reply,
        plan: list[tuple[str, str | None]],
        tally: Tally,
        target: bool,
        model: InformationModel,
    ) -> None:
        assoc = service.assoc
        preparer = Preparer(
            self.source.load,
            assoc,
            target,
            assoc.dimse.maximum_pdu_size,
            self.log,
        )

        def lost() -> str:
            self.log.error("C-GET: requester stopped answering C-STORE; giving up")
            return ""  # the association is gone: no one to answer

        ids = message_ids(int(req.MessageID or 0), avoid=req.MessageID)
        try:
            finished = self._run(service, req, reply, plan, tally, assoc, preparer, ids, lost)
        except RequesterGone:
            return
        if finished:
            reply.final(tally)
        else:
            self.log.info("C-GET cancelled by the requester: %s", tally.summary())
            reply.cancelled(tally)
