"""C-GET and C-MOVE for the Defined Procedure Protocol information model (PS3.4 HH.4.2/HH.4.3).

The identifier names SOP Instance UIDs (one, or a list); each requested
instance is one C-STORE sub-operation, sent on the requesting association
(C-GET) or on a new association to a destination from Orthanc's modality list
(C-MOVE). Datasets are loaded through a :class:`ProtocolSource` one step
ahead of sending (:mod:`orthanc_dpp.dicom.scp.suboperations`), so a large retrieve
holds at most two instances in memory.

Why this module runs its own sub-operation loop instead of pynetdicom's
generator protocol for ``EVT_C_GET``/``EVT_C_MOVE`` (pynetdicom 3.0.4,
``QueryRetrieveServiceClass._get_scp``/``_move_scp``):

* a known destination that cannot be reached or refuses the association is
  answered 0xA801 "Move Destination unknown", where PS3.4 C.4.2.3.1 counts
  the sub-operations as failed;
* 0xA801 for an unknown destination carries no Error Comment, and an error
  found before any sub-operation (bad identifier, not authorised) can only be
  sent after pynetdicom has associated with the destination, and always
  reports one failed sub-operation;
* the Move Originator AE Title of its C-STORE requests is the SCP's own title,
  not that of the C-MOVE requester (PS3.7 9.1.1.1.6).

So :func:`orthanc_dpp.dicom.scp.routing.route_dpp_services` routes the DPP GET/MOVE SOP
classes, and only those, to :meth:`RetrieveHandler.serve` when the handler
bound to the association's ``EVT_C_GET``/``EVT_C_MOVE`` is a
:class:`RetrieveHandler`; any other handler keeps pynetdicom's behaviour.
The handlers are still bound through ``evt_handlers`` like any pynetdicom
handler, so per-listener wiring is unchanged.
"""

from __future__ import annotations

import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
)
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.access import Decision, Gatekeeper, Service, describe_requestor
from orthanc_dpp.dicom.modalities import ModalityList
from orthanc_dpp.dicom.scp.suboperations import (
    FAILED,
    QUIET_POLL,
    Lookahead,
    Outcome,
    Preparer,
    StoreChannel,
)
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.dimse_status import InvalidIdentifier
from orthanc_dpp.model.key_table import (
    DPP_MODEL,
    QUERY_RETRIEVE_LEVEL,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    InformationModel,
    model_of,
)
from orthanc_dpp.storage.decoding import (
    DatasetLimits,
    LimitExceeded,
    check_values_per_key,
    decode_dimse_dataset,
)

log = logging.getLogger("orthanc_dpp.retrieve")


#: Sub-operation counters are US (PS3.7 9.3.3.2), so one request can name at most this many.
MAX_SUB_OPERATIONS = 65535
#: Failed sub-operations logged one by one before only the summary counts them.
LOGGED_FAILURES = 10


class ProtocolSource(Protocol):
    """Where retrieved instances come from (the adapter implements it over Orthanc)."""

    def resolve(
        self, uids: Sequence[str], storage_classes: frozenset[str]
    ) -> list[tuple[str, str | None]]:
        """For each SOP Instance UID, the Orthanc ID of the stored instance of one of
        ``storage_classes`` (the requested model's), or None."""
        ...

    def load(self, orthanc_id: str) -> Dataset:
        """The instance as originally received (normalization undone), with
        ``file_meta.TransferSyntaxUID`` saying how it was encoded."""
        ...


# --- identifier ---------------------------------------------------------------------------


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _shorten(text: str, length: int = 24) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


def parse_identifier(identifier: Dataset) -> list[str]:
    """The SOP Instance UIDs a C-GET/C-MOVE identifier asks for, in order, without repeats.

    PS3.4 HH.4.2: the only key is SOP Instance UID, one UID or a list, and
    Query/Retrieve Level shall not be present. Specific Character Set is
    tolerated (it changes nothing for UIDs) and so are group lengths. Every
    other problem raises :class:`InvalidIdentifier` with 0xA900 "Identifier
    does not match SOP Class" naming the offending elements, or 0xC000 if
    the identifier cannot even be decoded.
    """
    try:
        # pydicom decodes lazily: touch every element so bad data fails here.
        elements = {int(tag): identifier[tag] for tag in list(identifier.keys())}
        raw = elements[SOP_INSTANCE_UID].value if SOP_INSTANCE_UID in elements else None
    except Exception as exc:
        raise InvalidIdentifier(
            dimse_status.UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}"
        ) from exc
    if QUERY_RETRIEVE_LEVEL in elements:
        raise InvalidIdentifier(
            dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Query/Retrieve Level must be absent (PS3.4 HH.4.2)",
            [QUERY_RETRIEVE_LEVEL],
        )
    tolerated = {SOP_INSTANCE_UID, SPECIFIC_CHARACTER_SET}
    extra = [t for t in elements if t not in tolerated and t & 0xFFFF != 0]
    if extra:
        raise InvalidIdentifier(
            dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "only SOP Instance UID is a key; got " + " ".join(_tag(t) for t in extra),
            extra,
        )
    if SOP_INSTANCE_UID not in elements:
        raise InvalidIdentifier(
            dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID (0008,0018) is missing",
            [SOP_INSTANCE_UID],
        )
    values = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    uids = [str(v if v is not None else "").rstrip("\0 ") for v in values]
    if not any(uids):
        raise InvalidIdentifier(
            dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID is empty: name one UID or a list",
            [SOP_INSTANCE_UID],
        )
    for uid in uids:
        if not UID(uid).is_valid:
            raise InvalidIdentifier(
                dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"ill-formed SOP Instance UID {_shorten(uid)!r}",
                [SOP_INSTANCE_UID],
            )
    unique = list(dict.fromkeys(uids))
    if len(unique) > MAX_SUB_OPERATIONS:
        raise InvalidIdentifier(
            dimse_status.UNABLE_TO_PROCESS,
            f"{len(unique)} instances requested, at most {MAX_SUB_OPERATIONS} per request",
        )
    return unique


# --- sub-operation accounting ------------------------------------------------------------


@dataclass
class Tally:
    """Sub-operation counters and the Failed SOP Instance UID List (PS3.4 C.4.2.1.4-9)."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def record(self, uid: str, category: str, reason: str | None) -> None:
        if category == STATUS_SUCCESS:
            self.completed += 1
        elif category == STATUS_WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)
        if reason:
            self.reasons[reason] += 1

    def final_status(self) -> int:
        """Success; Warning 0xB000 if some failed or warned; 0xA702 if all failed.

        PS3.4 C.4.2.3.1 asks for "Failure or Refused" when every sub-operation
        failed; 0xA702 is the one such status whose related fields are the
        counters, and pynetdicom and DCMTK use it likewise.
        """
        if not self.failed and not self.warning:
            return dimse_status.SUCCESS
        if self.failed == self.total:
            return dimse_status.OUT_OF_RESOURCES_SUB_OPERATIONS
        return dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES

    def summary(self) -> str:
        text = (
            f"{self.completed} completed, {self.failed} failed, {self.warning} warning"
            f" of {self.total}"
        )
        if self.reasons:
            common = self.reasons.most_common(3)
            text += " (" + "; ".join(f"{n}x {r}" for r, n in common)
            text += "; ...)" if len(self.reasons) > len(common) else ")"
        return text


# --- helpers ------------------------------------------------------------------------------


def message_ids(after: int, avoid: int | None = None) -> Iterator[int]:
    """Message IDs for sub-operations: 1..65535, wrapping, never ``avoid``."""
    for n in itertools.count(after + 1):
        mid = (n - 1) % 65535 + 1
        if mid != avoid:
            yield mid


# --- responses ----------------------------------------------------------------------------


class Reply:
    """Builds and sends the C-GET/C-MOVE responses of one request."""

    def __init__(
        self, service: QueryRetrieveServiceClass, req: C_GET | C_MOVE, context: PresentationContext
    ) -> None:
        self._service = service
        self._req = req
        self._cx_id = int(context.context_id or 0)
        self._ts = UID(context.transfer_syntax[0])
        self.finished = False
        # For the metrics: the final status (None: none was sent), whether the
        # caller was refused, and the request's sub-operations.
        self.final_code: int | None = None
        self.refused = False
        self.tally: Tally | None = None

    def _send(
        self,
        code: int,
        tally: Tally | None = None,
        *,
        remaining: bool = False,
        comment: str | None = None,
        offending: Sequence[int] = (),
    ) -> None:
        if code_to_category(code) != "Pending":
            self.finished = True
            self.final_code = code
        if not self._service.assoc.is_established:
            return  # the requester has gone: nobody to answer
        rsp: Any = C_MOVE() if isinstance(self._req, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = self._req.MessageID
        rsp.AffectedSOPClassUID = self._req.AffectedSOPClassUID
        rsp.Status = code
        if comment:
            rsp.ErrorComment = dimse_status.error_comment(comment)
        if offending:
            rsp.OffendingElement = list(offending)
        if tally is not None:
            if remaining:
                rsp.NumberOfRemainingSuboperations = tally.remaining
            rsp.NumberOfCompletedSuboperations = tally.completed
            rsp.NumberOfFailedSuboperations = tally.failed
            rsp.NumberOfWarningSuboperations = tally.warning
            if tally.failed_uids and code_to_category(code) != "Pending":
                # PS3.4 C.4.2.1.4.2: only when some sub-operation failed.
                ds = Dataset()
                ds.FailedSOPInstanceUIDList = tally.failed_uids
                ts = self._ts
                data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
                rsp.Identifier = BytesIO(data or b"")
        self._service.dimse.send_msg(rsp, self._cx_id)

    def refuse(self, code: int, comment: str, offending: Sequence[int] = ()) -> None:
        """A failure before any sub-operation: no counters, no identifier."""
        self._send(code, comment=comment, offending=offending)

    def pending(self, tally: Tally) -> None:
        self._send(dimse_status.PENDING, tally, remaining=True)

    def cancelled(self, tally: Tally) -> None:
        self._send(dimse_status.CANCEL, tally, remaining=True)

    def final(self, tally: Tally, comment: str | None = None) -> int:
        code = tally.final_status()
        if code != dimse_status.SUCCESS and comment is None and tally.reasons:
            reason, _ = tally.reasons.most_common(1)[0]
            comment = f"{tally.failed + tally.warning} of {tally.total}: {reason}"
        self._send(code, tally, comment=comment if code != dimse_status.SUCCESS else None)
        return code


# --- the service --------------------------------------------------------------------------


#: The request a handler serves, and where its sub-operations go.
Request = TypeVar("Request", C_GET, C_MOVE)
Target = TypeVar("Target")


class RequesterGone(Exception):
    """The requesting association ended: nobody to send to or answer."""


@dataclass(frozen=True)
class RetrieveOptions:
    """What the settings say about C-GET and C-MOVE.

    ``report_missing`` (``ReportMissingInstances``): a requested UID not
    stored here is a failed sub-operation (True) or silently left out;
    ``pending_interval`` (``PendingResponseInterval``): the seconds between
    pending responses (0: after every sub-operation).
    """

    report_missing: bool = True
    pending_interval: float = 0.0


#: The settings' defaults (``ReportMissingInstances`` true, ``PendingResponseInterval`` 0).
DEFAULT_OPTIONS: Final = RetrieveOptions()


class RetrieveHandler(ABC, Generic[Request, Target]):
    """What C-GET and C-MOVE share; :class:`~orthanc_dpp.dicom.scp.get.GetHandler` and
    :class:`~orthanc_dpp.dicom.scp.move.MoveHandler` bind to ``evt.EVT_C_GET`` and
    ``evt.EVT_C_MOVE``.

    Permission, the identifier, the instances to send, the sub-operation loop
    and the counting are the same; a subclass says where the sub-operations
    go (its ``Target``: how a C-GET may convert, a C-MOVE's destination) and
    runs them. One instance serves every association of a listener;
    per-request state lives on the stack of :meth:`serve`, and the modality
    list is read once per request through the gate, so concurrent retrieves
    and run-time modality changes do not interfere.
    """

    #: The right the gate checks, the DIMSE name for log lines, the metrics' service name.
    permission: ClassVar[Service]
    name: ClassVar[str]
    metric: ClassVar[str]

    def __init__(
        self,
        source: ProtocolSource,
        gate: Gatekeeper,
        options: RetrieveOptions = DEFAULT_OPTIONS,
        *,
        limits: DatasetLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics(enabled=False)
        self.limits = limits or DatasetLimits()
        self.source = source
        self.gate = gate
        self.options = options
        self.log = log

    def __call__(self, event: evt.Event) -> Any:
        # pynetdicom calls the handler itself only when route_dpp_services() is
        # not in effect; failing loudly beats silently answering with its own loop.
        raise RuntimeError(
            "orthanc_dpp.dicom.scp.routing.route_dpp_services() has not routed this SOP class"
        )

    def serve(
        self, service: QueryRetrieveServiceClass, req: Request, context: PresentationContext
    ) -> None:
        """Answer one request completely (pynetdicom's service class calls it: see routing)."""
        reply = Reply(service, req, context)
        try:
            self._serve(service, req, context, reply)
        except Exception as exc:  # never leave the requester without a final response
            self.log.exception("%s failed unexpectedly", self.name)
            if not reply.finished:
                reply.refuse(dimse_status.UNABLE_TO_PROCESS, f"internal error: {exc}")
        self._count(reply)

    def _count(self, reply: Reply) -> None:
        if reply.refused:
            self.metrics.dimse(self.metric, "refused")
        else:
            # No final status: the requester went away first.
            code = dimse_status.CANCEL if reply.final_code is None else reply.final_code
            self.metrics.dimse_status(self.metric, code)
        if reply.tally is not None:
            tally = reply.tally
            self.metrics.suboperations(tally.completed, tally.failed, tally.warning)

    def _serve(
        self,
        service: QueryRetrieveServiceClass,
        req: Request,
        context: PresentationContext,
        reply: Reply,
    ) -> None:
        peer = describe_requestor(service.assoc)
        # Routed here for the served models' GET/MOVE SOP classes only.
        model = model_of(str(req.AffectedSOPClassUID)) or DPP_MODEL
        modalities = self.gate.modalities.current  # one snapshot for the whole request
        decision = self.gate.check(service.assoc, self.permission, modalities)
        if not decision:
            reply.refused = True
            reply.refuse(dimse_status.NOT_AUTHORIZED, "Not authorised")  # details in the log only
            return
        try:
            raw = req.Identifier.getvalue() if req.Identifier is not None else b""
            identifier = decode_dimse_dataset(raw, context.transfer_syntax[0], self.limits)
            check_values_per_key(identifier, self.limits.maximum_values)
            uids = parse_identifier(identifier)
        except LimitExceeded as exc:
            self.log.warning("%s from %s refused: %s", self.name, peer, exc.comment)
            code = exc.status
            if code == dimse_status.FIND_OUT_OF_RESOURCES:  # C-GET/C-MOVE name it A701
                code = dimse_status.OUT_OF_RESOURCES_NUMBER_OF_MATCHES
            reply.refuse(code, exc.comment)
            return
        except InvalidIdentifier as exc:
            self.log.warning("%s from %s: bad identifier: %s", self.name, peer, exc.comment)
            reply.refuse(exc.status, exc.comment, exc.offending)
            return
        except Exception as exc:
            self.log.warning("%s from %s: undecodable identifier: %s", self.name, peer, exc)
            reply.refuse(dimse_status.UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}")
            return
        target = self._target(req, modalities, decision, peer, reply)
        if target is None:
            return  # refused
        try:
            found = dict(self.source.resolve(uids, model.storage_classes))
        except Exception as exc:
            self.log.exception(
                "%s from %s: cannot look up %d instances", self.name, peer, len(uids)
            )
            reply.refuse(dimse_status.UNABLE_TO_PROCESS, f"cannot look up the instances: {exc}")
            return
        plan = [(uid, found.get(uid)) for uid in uids]
        if not self.options.report_missing:
            plan = [(uid, oid) for uid, oid in plan if oid is not None]
        tally = reply.tally = Tally(len(plan))
        where = self._where(target)
        self.log.info("%s from %s%s: %d instances requested", self.name, peer, where, len(uids))
        self._retrieve(service, req, reply, plan, tally, target, model)
        self.log.info("%s from %s%s finished: %s", self.name, peer, where, tally.summary())

    # -- what each service does its own way

    @abstractmethod
    def _target(
        self,
        req: Request,
        modalities: ModalityList,
        decision: Decision,
        peer: str,
        reply: Reply,
    ) -> Target | None:
        """Where the sub-operations go, or None once the request is refused through ``reply``."""

    def _where(self, target: Target) -> str:
        """The target in log lines, after the requester."""
        return ""

    @abstractmethod
    def _retrieve(
        self,
        service: QueryRetrieveServiceClass,
        req: Request,
        reply: Reply,
        plan: list[tuple[str, str | None]],
        tally: Tally,
        target: Target,
        model: InformationModel,
    ) -> None:
        """Run the sub-operations of ``plan`` and send the final response."""

    # -- sub-operations

    def _record(self, tally: Tally, uid: str, outcome: Outcome) -> None:
        tally.record(uid, outcome.category, outcome.reason)
        if outcome.category == FAILED and tally.failed <= LOGGED_FAILURES:
            self.log.warning("%s sub-operation for %s failed: %s", self.name, uid, outcome.reason)

    def _run(
        self,
        service: QueryRetrieveServiceClass,
        req: C_GET | C_MOVE,
        reply: Reply,
        plan: list[tuple[str, str | None]],
        tally: Tally,
        sender: Association,
        preparer: Preparer,
        ids: Iterator[int],
        on_lost: Callable[[], str],
    ) -> bool:
        """Run the sub-operations on ``sender``; False if the requester cancelled.

        Pending responses are optional (PS3.4 C.4.2.3.1, C.4.3.3.1): one goes out
        after a sub-operation when ``pending_interval`` seconds have passed
        since the last (0: after every one), and while the next C-STORE is
        in flight, so that building it costs the round trip nothing. After a fatal
        outcome the remaining sub-operations fail with ``on_lost()``'s reason
        without being sent; it returns "" when nothing should be answered.
        """
        lost = ""
        pending_due = False
        last_pending = time.monotonic()

        def send_pending_if_due() -> None:
            nonlocal pending_due, last_pending
            if pending_due:
                reply.pending(tally)
                pending_due = False
                last_pending = time.monotonic()

        ahead = Lookahead(((uid, oid, next(ids)) for uid, oid in plan), preparer)
        requester = service.assoc
        quiet = (
            private.dul_polling(requester, QUIET_POLL) if sender is not requester else nullcontext()
        )
        message_id = int(req.MessageID or 0)  # present: pynetdicom checked the request
        with quiet, StoreChannel(sender) as channel:
            while (item := ahead.take()) is not None:
                if service.is_cancelled(message_id):
                    return False
                if not service.assoc.is_established:
                    raise RequesterGone
                outcome: Outcome | None
                if item.failure or lost:
                    outcome = item.failure or Outcome(FAILED, lost)
                else:
                    outcome = channel.start(item)
                    if outcome is None:
                        # While the peer stores the instance:
                        send_pending_if_due()
                        ahead.prepare_next()
                        outcome = channel.finish(item)
                    if outcome.fatal:
                        lost = on_lost()
                        if not lost:
                            raise RequesterGone
                send_pending_if_due()
                self._record(tally, item.uid, outcome)
                pending_due = tally.remaining > 0 and (
                    time.monotonic() - last_pending >= self.options.pending_interval
                )
        return True
