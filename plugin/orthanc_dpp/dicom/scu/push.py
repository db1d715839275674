"""Pushing protocols to a modality with C-STORE: ``POST /dpp/modalities/{id}/store``.

A scanner gets its protocols the way Orthanc's own ``/modalities/{id}/store``
sends it images: this plugin requests an association with the modality of
Orthanc's modality list and sends each protocol as a C-STORE. The instances
go out as C-GET and C-MOVE send them: the stored original, normalization
undone (``ProtocolSource.load``), prepared one ahead and sent pre-encoded by
:mod:`orthanc_dpp.dicom.scp.suboperations`'s :class:`Preparer` and
:class:`StoreChannel` (what a C-MOVE sub-operation is, without a Move
Originator). The association is requested through
:mod:`orthanc_dpp.dicom.outbound` (TLS, the modality's ``LocalAet`` and
``Timeout``, the listener's limits).

Every requested SOP Instance UID gets an outcome: the modality's C-STORE
status, or why it was not sent (not stored here, cannot be loaded, no
accepted context, the association lost or cancelled). A modality that cannot
be reached fails each one with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pynetdicom import Association, build_context, evt
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING

from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import (
    AssociationFailed,
    AssociationRequest,
    Calling,
    request_association,
)
from orthanc_dpp.dicom.scp.move import MOVE_WORDS
from orthanc_dpp.dicom.scp.retrieve import ProtocolSource, message_ids
from orthanc_dpp.dicom.scp.suboperations import FAILED, Lookahead, Outcome, Preparer, StoreChannel
from orthanc_dpp.dicom.scu.retrieve import Control
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.sop import STORAGE_CLASSES, TRANSFER_SYNTAXES

log = logging.getLogger("orthanc_dpp.remote")

#: Protocols (and approvals) in one push request.
MAXIMUM_UIDS: Final = 1000
#: What a push sends: every class the library stores.
PUSHED_CLASSES: Final = frozenset(STORAGE_CLASSES)


@dataclass(frozen=True)
class PushOutcome:
    """How the push of one SOP Instance UID ended.

    ``status`` is the modality's C-STORE status, None when nothing was sent
    (``error`` says why).
    """

    uid: str
    category: str  # Success, Warning or Failure
    status: int | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "SOPInstanceUID": self.uid,
            "Outcome": self.category,
            "Status": None if self.status is None else f"0x{self.status:04X}",
            "Error": self.error,
        }


@dataclass
class PushResult:
    """What a push did: an outcome per requested UID, in request order."""

    modality: str
    outcomes: list[PushOutcome] = field(default_factory=list)
    cancelled: bool = False
    #: Why no association could be had (every outcome then fails with it).
    unreachable: str | None = None

    def count(self, category: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.category == category)

    @property
    def code(self) -> int:
        """A status as a C-MOVE would end: Success, Cancel, 0xB000 or 0xA702 (jobs read it)."""
        if self.cancelled:
            return dimse_status.CANCEL
        failed = len(self.outcomes) - self.count(STATUS_SUCCESS)
        if not failed:
            return dimse_status.SUCCESS
        if self.count(FAILED) == len(self.outcomes):
            return dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
        return dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "Method": "C-STORE",
            "Modality": self.modality,
            "Completed": self.count(STATUS_SUCCESS),
            "Warning": self.count(STATUS_WARNING),
            "Failed": self.count(FAILED),
            "Results": [outcome.as_json() for outcome in self.outcomes],
        }
        if self.cancelled:
            answer["Cancelled"] = True
        if self.unreachable is not None:
            answer["Error"] = self.unreachable
        return answer


def _outcome(uid: str, outcome: Outcome) -> PushOutcome:
    return PushOutcome(uid, outcome.category, outcome.status, outcome.reason)


def _associate(caller: Calling, modality: Modality) -> Association:
    contexts = [
        build_context(sop_class, ts)
        for sop_class in sorted(PUSHED_CLASSES)
        for ts in TRANSFER_SYNTAXES  # one context each: instances go out as stored
    ]
    request = AssociationRequest(
        modality, contexts, handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    )
    return request_association(caller, request)


def push(
    caller: Calling,
    modality: Modality,
    uids: Sequence[str],
    source: ProtocolSource,
    control: Control | None = None,
) -> PushResult:
    """C-STORE the protocols ``uids`` to ``modality``; an outcome per UID, never raises for
    the modality's sake (an unreachable one fails every UID with the reason)."""
    control = control or Control()
    progress = control.progress
    progress.requested = progress.remaining = len(uids)
    result = PushResult(modality.name)
    plan = source.resolve(list(uids), PUSHED_CLASSES)

    def record(outcome: PushOutcome) -> None:
        result.outcomes.append(outcome)
        if outcome.category == STATUS_SUCCESS:
            progress.completed += 1
        elif outcome.category == STATUS_WARNING:
            progress.warning += 1
        else:
            progress.failed += 1
        progress.remaining = len(uids) - len(result.outcomes)

    if not any(orthanc_id for _, orthanc_id in plan):
        for uid, _ in plan:
            record(PushOutcome(uid, FAILED, error="not stored here"))
        return result
    try:
        assoc = _associate(caller, modality)
    except AssociationFailed as failed:
        why = failed.worded(MOVE_WORDS)
        log.error("DPP C-STORE to %s: %s", modality.describe(), why)
        result.unreachable = f"{modality.describe()}: {why}"
        for uid, orthanc_id in plan:
            record(PushOutcome(uid, FAILED, error=why if orthanc_id else "not stored here"))
        return result
    lost = ""
    try:
        control.attach(assoc)
        preparer = Preparer(
            source.load, assoc, modality.allow_transcoding, assoc.dimse.maximum_pdu_size, log
        )
        ids = message_ids(0)
        ahead = Lookahead(((uid, oid, next(ids)) for uid, oid in plan), preparer)
        with StoreChannel(assoc) as channel:
            while (item := ahead.take()) is not None:
                if control.cancelled:
                    result.cancelled, lost = True, "cancelled"
                    break
                if item.failure:
                    record(_outcome(item.uid, item.failure))
                    continue
                outcome = channel.start(item)
                if outcome is None:
                    ahead.prepare_next()  # while the modality stores this one
                    outcome = channel.finish(item)
                record(_outcome(item.uid, outcome))
                if outcome.fatal:
                    lost = f"association lost: {outcome.reason}"
                    break
        # What follows a cancel or a lost association is not even loaded.
        for uid, _ in plan[len(result.outcomes) :]:
            record(PushOutcome(uid, FAILED, error=lost))
    finally:
        control.attach(None)
        if assoc.is_established:
            assoc.release()
    return result
