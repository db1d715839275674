"""C-GET and C-MOVE from another DPP archive: the protocols it holds, here or elsewhere.

Another DPP archive (a vendor's protocol manager, the Orthanc of another
site) is one of Orthanc's modalities; the plugin talks to it with the DPP
Query/Retrieve SOP classes (PS3.4 Annex HH) the way Orthanc's own
``/modalities/{id}/query`` and ``/move`` talk to image archives (C-FIND:
:mod:`orthanc_dpp.dicom.scu.query`):

- :func:`get` retrieves protocols with C-GET, every received C-STORE going
  through ``store`` (the plugin's normal store path): a sub-operation is
  answered Success only once the protocol is stored here, so nothing the
  remote counts as delivered can be missing. Only what was asked for is
  stored: each requested SOP Instance UID once, and only when the dataset's
  own SOP Instance UID is the one the C-STORE request announces; anything
  else is refused (see :func:`get`);
- :func:`move` asks the remote to C-MOVE protocols to an AE title, by
  default this plugin's own listener, which stores them as any C-STORE;
- :class:`Control` lets another thread follow and stop either.

The other archive is treated like any peer of the listener: every
association gets the listener's socket timeouts and PDU and dataset limits
(:func:`orthanc_dpp.dicom.connections.requester_guard`), received datasets and
identifiers are decoded within ``MaximumDatasetSize`` and
``MaximumNestingDepth``, and the query/retrieve contexts do not propose the
Deflated transfer syntax, since pynetdicom inflates C-FIND and C-GET/C-MOVE
responses itself without a bound (received protocols are inflated here,
bounded, so their contexts keep it).

Nothing here knows Orthanc: the adapter hands in the modality, the calling
parameters (:class:`~orthanc_dpp.dicom.outbound.Calling`) and the store function; the
association itself is requested through :mod:`orthanc_dpp.dicom.outbound`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue
from pynetdicom import Association, evt

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.connections import ConnectionGuard
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import Calling, guard_for
from orthanc_dpp.dicom.scu.answers import (
    RemoteError,
    bounded_responses,
    response_code,
    status_error,
    status_name,
)
from orthanc_dpp.dicom.scu.association import MESSAGE_ID, close_association, open_association
from orthanc_dpp.dicom.scu.identifiers import retrieve_identifier
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.dimse_status import status_dataset
from orthanc_dpp.model.sop import DPP_GET, DPP_MOVE
from orthanc_dpp.storage.decoding import decode_dimse_dataset
from orthanc_dpp.storage.errors import StoreError, undecodable_as_store_error

log = logging.getLogger("orthanc_dpp.remote")

#: SOP Instance UIDs in one retrieve request.
MAXIMUM_UIDS = 1000
#: Unrequested C-STORE sub-operations refused in one C-GET before the association is aborted.
UNREQUESTED_LIMIT = 100

#: Final statuses of a retrieve the remote served (maybe in part); others refuse it.
_FINAL_SERVED = (
    dimse_status.SUCCESS,
    dimse_status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES,
    dimse_status.CANCEL,
)


@dataclass
class Progress:
    """The counters of a retrieve, as the remote reports them (pending and final responses)."""

    requested: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None

    def update(self, response: Dataset) -> None:
        for attribute, keyword in (
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
            ("remaining", "NumberOfRemainingSuboperations"),
        ):
            value = response.get(keyword)
            if isinstance(value, int):
                setattr(self, attribute, value)


class Control:
    """Lets another thread follow and stop a retrieve (a background job, the plugin's stop)."""

    def __init__(self) -> None:
        self.progress = Progress()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._assoc: Association | None = None
        self._model: str | None = None
        self._cancel_sent = False
        self._aborted = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the remote to stop: a C-CANCEL now (pynetdicom queues it for the DUL thread)."""
        self._cancelled.set()
        with self._lock:
            if self._assoc is not None and self._model is not None:
                self._send_cancel(self._assoc, self._model)

    def _send_cancel(self, assoc: Association, model: str) -> None:
        if not self._cancel_sent and assoc.is_established:
            self._cancel_sent = True
            assoc.send_c_cancel(MESSAGE_ID, query_model=model)

    def abort(self) -> None:
        """Stop now: cancel and abort the association (the plugin is stopping)."""
        self._cancelled.set()
        with self._lock:
            self._aborted = True
            assoc = self._assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def attach(self, assoc: Association | None, model: str | None = None) -> None:
        """Follow ``assoc``; ``model`` once the remote answered the request (a C-CANCEL
        before that would name no request). None: the retrieve is over."""
        with self._lock:
            self._assoc, self._model = assoc, model
            if assoc is not None and self._aborted:
                assoc.abort()  # stopped while the association was being opened
            elif assoc is not None and model is not None and self.cancelled:
                self._send_cancel(assoc, model)


@dataclass(frozen=True)
class RetrieveResult:
    """What a retrieve did, from the remote's final response (and our stores for C-GET)."""

    method: str
    code: int
    comment: str | None
    progress: Progress
    failed_uids: list[str]
    refused: dict[str, str]  # C-GET: requested UID -> why this plugin did not store it
    #: C-GET: UID -> why a sub-operation nobody asked for was refused
    unrequested: dict[str, str] = field(default_factory=dict)

    @property
    def status_name(self) -> str:
        return status_name(self.code, "get" if self.method == "C-GET" else "move")

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "Method": self.method,
            "DimseStatus": f"0x{self.code:04X}",
            "DimseStatusName": self.status_name,
            "Completed": self.progress.completed,
            "Failed": self.progress.failed,
            "Warning": self.progress.warning,
            "FailedSOPInstanceUIDs": self.failed_uids,
        }
        if self.comment:
            answer["ErrorComment"] = self.comment
        if self.refused:
            answer["RefusedHere"] = self.refused
        if self.unrequested:
            answer["Unrequested"] = self.unrequested
        return answer


#: Receives one protocol of a C-GET: stores it (the plugin's store path) or raises StoreError.
Store = Callable[[Dataset, str], None]


class _Intake:
    """What one C-GET accepts: each requested SOP Instance UID once, nothing else.

    The DPP retrieve names SOP Instance UIDs only (PS3.4 HH.4.2; the REST
    route takes no query), so "requested" is exactly that list. A C-STORE
    sub-operation is refused, before its dataset is decoded, when its
    Affected SOP Instance UID is not in it (0x0124) or was already received
    in this C-GET (0x0124; so at most as many instances as requested are
    stored), and after decoding when the dataset's own SOP Instance UID is
    not the announced one (0xC000). After :data:`UNREQUESTED_LIMIT`
    unrequested ones the association is aborted.
    """

    def __init__(self, uids: Sequence[str], peer: str) -> None:
        self.outstanding = set(uids)
        self.requested = frozenset(uids)
        self.peer = peer
        self.refused: dict[str, str] = {}
        self.unrequested: dict[str, str] = {}
        self.unrequested_count = 0
        self.stopped: str | None = None  # why the association was aborted

    def admit(self, uid: str) -> Dataset | None:
        """None to go on with ``uid``, else the refusal status (logged and recorded)."""
        if uid in self.outstanding:
            self.outstanding.discard(uid)
            return None
        self.unrequested_count += 1
        if uid in self.requested:
            reason, comment = (
                "already received in this C-GET",
                "SOP Instance already received in this C-GET",
            )
        else:
            reason, comment = (
                "not requested by this C-GET",
                "SOP Instance not requested by this C-GET",
            )
        if len(self.unrequested) < UNREQUESTED_LIMIT:
            self.unrequested[uid] = reason
        log.warning("C-GET from %s: %s refused, %s", self.peer, uid or "(no UID)", reason)
        if self.unrequested_count >= UNREQUESTED_LIMIT:
            self.stopped = (
                f"{self.unrequested_count} instances not requested (or sent again); "
                f"association aborted after {UNREQUESTED_LIMIT}"
            )
        return status_dataset(dimse_status.NOT_AUTHORIZED, comment)


def get(
    caller: Calling,
    modality: Modality,
    uids: Sequence[str],
    store: Store,
    control: Control | None = None,
) -> RetrieveResult:
    """C-GET of ``uids`` from ``modality``; each received protocol goes through ``store``.

    Only the requested protocols are stored (see :class:`_Intake`); the
    others are refused and listed in the result's ``unrequested``.
    """
    control = control or Control()
    peer = modality.describe()
    intake = _Intake(uids, peer)
    refused = intake.refused

    def on_store(event: evt.Event) -> Dataset:
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        refusal = intake.admit(uid)
        if refusal is not None:
            if intake.stopped is not None:
                event.assoc.abort()  # blocking: no response goes out after the A-ABORT
                private.stop_waiting(event.assoc)
            return refusal
        try:
            with undecodable_as_store_error():
                raw = getattr(event.request, "DataSet", None)
                data = raw.getvalue() if raw is not None else b""
                ds = decode_dimse_dataset(data, str(event.context.transfer_syntax), caller.limits)
                ds.file_meta = event.file_meta
            own = str(ds.get("SOPInstanceUID", "") or "")
            if own != uid:
                log.warning(
                    "C-GET from %s: the dataset announced as %s is %s", peer, uid, own or "(no UID)"
                )
                refused[uid] = f"the dataset's SOP Instance UID is {own or 'missing'}, not {uid}"
                return status_dataset(
                    dimse_status.STORE_CANNOT_UNDERSTAND,
                    "SOP Instance UID is not the Affected SOP Instance UID",
                )
            store(ds, str(event.context.abstract_syntax))
        except StoreError as exc:
            refused[uid] = exc.reason
            log.error(
                "C-GET from %s: %s not stored (0x%04X): %s", peer, uid, exc.dimse_status, exc.reason
            )
            return status_dataset(exc.dimse_status, exc.reason)
        except Exception as exc:
            refused[uid] = f"internal error: {exc}"
            log.exception("C-GET from %s: storing %s failed unexpectedly", peer, uid)
            return status_dataset(dimse_status.STORE_CANNOT_UNDERSTAND, f"internal error: {exc}")
        log.info("C-GET from %s: %s stored", peer, uid)
        return status_dataset(dimse_status.SUCCESS)

    guard = guard_for(caller, modality)
    assoc = open_association(
        caller, modality, DPP_GET, storage=True, handlers=[(evt.EVT_C_STORE, on_store)],
        guard=guard,
    )  # fmt: skip
    identifier = retrieve_identifier(uids)
    return _retrieve(
        "C-GET", assoc, lambda: assoc.send_c_get(identifier, DPP_GET, MESSAGE_ID), modality,
        uids, control, intake, guard,
    )  # fmt: skip


def move(
    caller: Calling,
    modality: Modality,
    uids: Sequence[str],
    destination: str,
    control: Control | None = None,
) -> RetrieveResult:
    """C-MOVE of ``uids`` held by ``modality`` to the AE title ``destination``."""
    control = control or Control()
    guard = guard_for(caller, modality)
    assoc = open_association(caller, modality, DPP_MOVE, guard=guard)
    identifier = retrieve_identifier(uids)
    return _retrieve(
        "C-MOVE", assoc, lambda: assoc.send_c_move(identifier, destination, DPP_MOVE, MESSAGE_ID),
        modality, uids, control, _Intake(uids, modality.describe()), guard,
    )  # fmt: skip


def _retrieve(
    method: str,
    assoc: Association,
    send: Callable[[], Iterator[tuple[Dataset, Dataset | None]]],
    modality: Modality,
    uids: Sequence[str],
    control: Control,
    intake: _Intake,
    guard: ConnectionGuard,
) -> RetrieveResult:
    progress = control.progress
    progress.requested = len(uids)
    model = DPP_GET if method == "C-GET" else DPP_MOVE
    service = "get" if method == "C-GET" else "move"
    abort = True
    try:
        control.attach(assoc)
        if not assoc.is_established:
            raise RemoteError(f"{modality.describe()}: {method} stopped before it was sent")
        for response, identifier in bounded_responses(send(), len(uids), modality, progress):
            code = response_code(response, modality, method, progress, guard, intake.stopped)
            progress.update(response)
            if code == dimse_status.PENDING:
                control.attach(assoc, model)  # sends the C-CANCEL if one was asked for
                continue
            failed = _failed_uids(identifier)[: len(uids)]
            if code in _FINAL_SERVED:
                abort = False
                comment = str(response.get("ErrorComment", "")) or None
                return RetrieveResult(
                    method, code, comment, progress, failed, intake.refused, intake.unrequested
                )
            raise status_error(method, modality, code, response, service, progress)
        raise RemoteError(f"{modality.describe()}: {method} ended without a final status")
    finally:
        control.attach(None)
        close_association(assoc, abort)


def _failed_uids(identifier: Dataset | None) -> list[str]:
    if identifier is None:
        return []
    try:
        value = identifier.get("FailedSOPInstanceUIDList")
    except Exception:
        return []
    if value is None or value == "":
        return []
    values = value if isinstance(value, list | MultiValue) else [value]
    return [str(v) for v in values if str(v)]
