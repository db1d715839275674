"""The plugin as a DPP SCU: query and retrieve the protocols of another archive.

Another DPP archive (a vendor's protocol manager, the Orthanc of another
site) is one of Orthanc's modalities; this module talks to it with the DPP
Query/Retrieve SOP classes (PS3.4 Annex HH) the way Orthanc's own
``/modalities/{id}/query`` and ``/move`` talk to image archives:

- :func:`build_identifier` turns the JSON keys of a REST request (DICOM JSON,
  or keywords with plain values, as Orthanc's ``/query`` takes them) into a
  C-FIND identifier, refusing a bad key with :class:`BadKey` naming it;
- :func:`find` sends the C-FIND and answers DICOM JSON, at most ``limit``
  answers (then a C-CANCEL);
- :func:`get` retrieves protocols with C-GET, every received C-STORE going
  through ``store`` (the plugin's normal store path): a sub-operation is
  answered Success only once the protocol is stored here, so nothing the
  remote counts as delivered can be missing. Only what was asked for is
  stored: each requested SOP Instance UID once, and only when the dataset's
  own SOP Instance UID is the one the C-STORE request announces; anything
  else is refused (see :func:`get`);
- :func:`move` asks the remote to C-MOVE protocols to an AE title, by
  default this plugin's own listener, which stores them as any C-STORE.

The other archive is treated like any peer of the listener: every
association gets the listener's socket timeouts and PDU and dataset limits
(:func:`orthanc_dpp.connections.requester_guard`), received datasets and
identifiers are decoded within ``MaximumDatasetSize`` and
``MaximumNestingDepth``, and the query/retrieve contexts do not propose the
Deflated transfer syntax, since pynetdicom inflates C-FIND and C-GET/C-MOVE
responses itself without a bound (received protocols are inflated here,
bounded, so their contexts keep it).

Nothing here knows Orthanc: the adapter hands in the modality, the calling
parameters (:class:`~orthanc_dpp.outbound.Calling`) and the store function; the
association itself is requested through :mod:`orthanc_dpp.outbound`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pynetdicom import Association, build_context, build_role, evt
from pynetdicom import status as dimse_status

from orthanc_dpp import pynetdicom_private as private
from orthanc_dpp import status
from orthanc_dpp.connections import ConnectionGuard
from orthanc_dpp.limits import DatasetLimits, LimitExceeded, check_nesting, decode_dimse_dataset
from orthanc_dpp.modalities import Modality
from orthanc_dpp.outbound import (
    AssociationFailed,
    AssociationRequest,
    Calling,
    Handler,
    Refusal,
    guard_for,
    request_association,
)
from orthanc_dpp.sop import (
    DPP_FIND,
    DPP_GET,
    DPP_MOVE,
    DPP_STORAGE_CLASSES,
    QUERY_TRANSFER_SYNTAXES,
    TRANSFER_SYNTAXES,
)
from orthanc_dpp.status import status_dataset
from orthanc_dpp.store_errors import StoreError, undecodable_as_store_error

log = logging.getLogger("orthanc_dpp.remote")

#: Answers kept from one C-FIND when the request names no ``Limit``, and the most it may name.
DEFAULT_LIMIT = 100
MAXIMUM_LIMIT = 10_000
#: SOP Instance UIDs in one retrieve request.
MAXIMUM_UIDS = 1000
#: Seconds one C-FIND may take in all (each message also waits at most DimseTimeout).
FIND_TIME_LIMIT = 600.0
#: Responses still read after a C-CANCEL before the association is aborted.
AFTER_CANCEL = 1000
#: C-FIND answers kept in all, as DICOM JSON, at most this many times MaximumDatasetSize
#: (then a C-CANCEL, as at the limit): 64 MiB with the default.
FIND_ANSWER_DATASETS = 4
#: Unrequested C-STORE sub-operations refused in one C-GET before the association is aborted.
UNREQUESTED_LIMIT = 100

#: Message ID of our one request per association (C-CANCEL names it).
_MESSAGE_ID = 1
_PENDING = (status.PENDING, status.PENDING_OPTIONAL_KEYS_UNSUPPORTED)
#: Final statuses of a retrieve the remote served (maybe in part); others refuse it.
_FINAL_SERVED = (status.SUCCESS, status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES, status.CANCEL)
_TAG_HEX = re.compile(r"^([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class BadKey(ValueError):
    """A query key that cannot become part of an identifier; ``key`` is as the caller wrote it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class RemoteError(Exception):
    """The remote archive could not be reached, or refused the request.

    ``code`` is the DIMSE status the remote answered, if it answered one,
    ``comment`` its Error Comment; ``partial`` what arrived before the
    failure (answers of a C-FIND, counters of a retrieve).
    """

    def __init__(
        self,
        reason: str,
        code: int | None = None,
        comment: str | None = None,
        partial: Any = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.comment = comment
        self.partial = partial

    def as_json(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.code is not None:
            details["DimseStatus"] = f"0x{self.code:04X}"
            details["DimseStatusName"] = status_name(self.code, "")
        if self.comment:
            details["ErrorComment"] = self.comment
        return details


def status_name(code: int, service: str) -> str:
    """'Failure: Unable to Process' for 0xC000: the category and meaning pynetdicom knows.

    ``service`` is "find", "get", "move" or "" (general statuses only).
    """
    tables = {
        "find": dimse_status.QR_FIND_SERVICE_CLASS_STATUS,
        "get": dimse_status.QR_GET_SERVICE_CLASS_STATUS,
        "move": dimse_status.QR_MOVE_SERVICE_CLASS_STATUS,
    }
    for table in (tables.get(service, {}), *tables.values(), dimse_status.GENERAL_STATUS):
        if code in table:
            category, meaning = table[code]
            return f"{category}: {meaning}" if meaning else category
    return f"{dimse_status.code_to_category(code)}: 0x{code:04X}"


def is_uid(text: str) -> bool:
    """A valid UID (PS3.5 9.1): numbers without leading zeros and dots, at most 64 characters."""
    return len(text) <= 64 and bool(_UID.match(text))


def is_ae_title(text: str) -> bool:
    """A valid AE title (PS3.5 6.2): 1 to 16 printable ASCII characters, no backslash."""
    return (
        0 < len(text) <= 16
        and bool(text.strip())
        and all(" " <= c <= "~" and c != "\\" for c in text)
    )


# -- identifiers from JSON -----------------------------------------------------------


def parse_tag(key: str) -> int:
    """The tag of a key written as a keyword, ``00181030`` or ``0018,1030``."""
    found = _TAG_HEX.match(key)
    if found:
        return int(found.group(1) + found.group(2), 16)
    tag = tag_for_keyword(key)
    if tag is None:
        raise BadKey(key, "not a DICOM keyword or tag")
    return tag


def build_identifier(keys: Mapping[str, Any]) -> Dataset:
    """A C-FIND identifier from JSON keys.

    Each key is a keyword (``ProtocolName``) or a tag (``00181030``,
    ``0018,1030``); its value is either a DICOM JSON element (``{"vr": "LO",
    "Value": [...]}``) or plain JSON: a string (empty: return this key), a
    number, a list for several values, an object or a list of objects for
    the items of a sequence (written the same way). Raises :class:`BadKey`.
    """
    if not isinstance(keys, Mapping):
        raise BadKey("", "the query must be a JSON object of keys")
    ds = Dataset()
    for key, value in keys.items():
        element = _element(str(key), value)
        ds.add(element)
        _check_encodable(str(key), element)
    if any(_non_ascii(element) for element in ds.iterall()) and "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


#: Groups no identifier holds: the command (0000) and file meta (0002)
#: groups belong to the message and the file, not to the dataset; items and
#: delimiters (FFFE) are not attributes; PS3.5 7.1 forbids the others.
_NOT_IN_IDENTIFIERS: Final = {
    0x0000: "a command element (group 0000)",
    0x0002: "a file meta element (group 0002)",
    0xFFFE: "an item or delimitation tag (group FFFE)",
    **{group: f"group {group:04X}, which PS3.5 7.1 reserves" for group in (1, 3, 5, 7, 0xFFFF)},
}


def _element(key: str, value: Any) -> DataElement:
    tag = parse_tag(key)
    if (what := _NOT_IN_IDENTIFIERS.get(tag >> 16)) is not None:
        # Sent, it would make the remote refuse the whole C-FIND (or misread it).
        raise BadKey(key, f"{what}: not a query key")
    if isinstance(value, Mapping) and "vr" in value:
        try:
            return Dataset.from_json({f"{tag:08X}": dict(value)})[tag]
        except Exception as exc:
            raise BadKey(key, f"not a DICOM JSON element: {exc}") from None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = ""
    if not vr:
        raise BadKey(key, 'unknown to the DICOM dictionary: give it as DICOM JSON with its "vr"')
    if " or " in vr:
        raise BadKey(key, f'its VR is {vr}: give it as DICOM JSON with its "vr"')
    if vr == "SQ":
        return DataElement(tag, vr, _items(key, value))
    if isinstance(value, Mapping):
        raise BadKey(key, f"VR {vr} takes a string, a number or a list, not an object")
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, Mapping | list) for v in values):
        raise BadKey(key, f"VR {vr} takes strings or numbers")
    if value is None or value == "" or value == []:
        return DataElement(tag, vr, empty_value_for_VR(vr))
    converted = [_plain(key, vr, v) for v in values]
    return DataElement(tag, vr, converted if len(converted) > 1 else converted[0])


def _plain(key: str, vr: str, value: Any) -> Any:
    if isinstance(value, bool):
        raise BadKey(key, f"VR {vr} does not take true or false")
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "AT"):
        if not isinstance(value, int):
            raise BadKey(key, f"VR {vr} takes whole numbers, got {value!r}")
        return value
    if vr in ("FL", "FD"):
        if not isinstance(value, int | float):
            raise BadKey(key, f"VR {vr} takes numbers, got {value!r}")
        return float(value)
    if vr in ("IS", "DS"):
        try:
            (int if vr == "IS" else float)(str(value).strip())
        except ValueError:
            number = "a whole number" if vr == "IS" else "a decimal number"
            raise BadKey(key, f"VR {vr}: {value!r} is not {number}") from None
        return str(value)
    if not isinstance(value, str):
        raise BadKey(key, f"VR {vr} takes strings, got {value!r}")
    if vr == "UI" and value and not is_uid(value):
        raise BadKey(key, f"not a UID: {value!r}")
    return value


def _items(key: str, value: Any) -> list[Dataset]:
    if value is None or value == "" or value == []:
        return []  # an empty sequence: return the whole sequence
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, Mapping) for item in items):
        raise BadKey(key, "a sequence takes an object or a list of objects (its items)")
    try:
        return [build_identifier(item) for item in items]
    except BadKey as exc:
        raise BadKey(f"{key}.{exc.key}", exc.reason) from None


def _check_encodable(key: str, element: DataElement) -> None:
    """Raise :class:`BadKey` now if the element cannot be sent (not halfway through a C-FIND)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    try:
        write_data_element(buffer, element)
    except Exception as exc:
        raise BadKey(key, f"cannot be encoded: {exc}") from None


def _non_ascii(element: DataElement) -> bool:
    values = element.value if isinstance(element.value, list | MultiValue) else [element.value]
    return any(isinstance(v, str) and not v.isascii() for v in values)


def retrieve_identifier(uids: Sequence[str]) -> Dataset:
    """The C-GET/C-MOVE identifier of PS3.4 HH.4.2: SOP Instance UIDs only."""
    ds = Dataset()
    ds.SOPInstanceUID = list(uids) if len(uids) > 1 else uids[0]
    return ds


def answer_json(identifier: Dataset) -> dict[str, Any]:
    """A C-FIND answer as DICOM JSON; binary values inline (Base64)."""
    return identifier.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)


# -- associations --------------------------------------------------------------------


#: The SCU side's name for :class:`~orthanc_dpp.outbound.Calling`, as its users import it.
Caller = Calling

#: How the SCU side words each refusal, after "{modality}: " (REST "Error", job errors, logs).
SCU_WORDS: Final[Mapping[Refusal, str]] = {
    Refusal.NO_TLS_SETUP: (
        "UseDicomTls is set but the plugin has no DICOM TLS client setup "
        "(DicomTlsEnabled and its certificate files)"
    ),
    Refusal.CANNOT_REQUEST: "cannot request an association: {detail}",
    Refusal.NOT_CONNECTED: "cannot connect (refused or timed out)",
    Refusal.REJECTED: "association rejected (is this plugin's AE title declared there?)",
    Refusal.GUARD_ABORTED: "association aborted: {detail}",
    Refusal.NO_CONTEXT: "association aborted (TLS or protocol problem?)",
    Refusal.ABORTED: "association aborted (TLS or protocol problem?)",
    Refusal.NOT_ACCEPTED: "does not accept {detail}",
}


def refusal_reason(modality: Modality, failed: AssociationFailed) -> str:
    """The :class:`RemoteError` reason for an association ``modality`` did not give."""
    detail = _sop_name(failed.detail) if failed.refusal is Refusal.NOT_ACCEPTED else None
    return f"{modality.describe()}: {failed.worded(SCU_WORDS, detail)}"


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
    :func:`~orthanc_dpp.outbound.guard_for`); raises :class:`RemoteError` saying why not."""
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


def _sop_name(sop_class: str) -> str:
    names = {DPP_FIND: "DPP Find", DPP_GET: "DPP Get", DPP_MOVE: "DPP Move"}
    return names.get(sop_class, sop_class)


def _close(assoc: Association, abort: bool) -> None:
    if not assoc.is_established:
        return
    if abort:
        assoc.abort()
    else:
        assoc.release()


# -- C-FIND --------------------------------------------------------------------------


@dataclass(frozen=True)
class FindResult:
    answers: list[dict[str, Any]]
    complete: bool  # False: cut at the limit or the time limit (C-CANCEL sent)


def find(
    caller: Calling,
    modality: Modality,
    identifier: Dataset,
    *,
    limit: int = DEFAULT_LIMIT,
    time_limit: float = FIND_TIME_LIMIT,
) -> FindResult:
    """C-FIND on the DPP information model of ``modality``; DICOM JSON answers.

    SOP Instance UID is always a return key. The answers are cut (a
    C-CANCEL, ``complete`` False) at ``limit`` answers, after
    ``time_limit`` seconds, or when they pass :data:`FIND_ANSWER_DATASETS`
    times ``MaximumDatasetSize`` as JSON; a remote that goes on answering
    :data:`AFTER_CANCEL` responses or ``DimseTimeout`` seconds after the
    C-CANCEL is cut off (association aborted). Raises :class:`RemoteError`
    (with the answers so far in ``partial``) when the remote cannot be
    reached, answers a failure status, an answer nested deeper than
    ``MaximumNestingDepth``, or goes silent.
    """
    if "SOPInstanceUID" not in identifier:
        identifier = copy.copy(identifier)
        identifier.SOPInstanceUID = ""  # every answer names what to retrieve
    guard = guard_for(caller, modality)
    assoc = open_association(caller, modality, DPP_FIND, guard=guard)
    answers: list[dict[str, Any]] = []
    size = 0  # of the answers, as JSON
    most = FIND_ANSWER_DATASETS * caller.limits.maximum_size
    cancelled = False
    abort = True
    deadline = time.monotonic() + time_limit
    last_call = deadline  # once cancelled: DimseTimeout after the C-CANCEL
    peer = modality.describe()
    try:
        responses = assoc.send_c_find(identifier, DPP_FIND, _MESSAGE_ID)
        for response, found in _responses(responses, limit, modality, answers):
            code = _code(response, modality, "C-FIND", answers, guard)
            if code in _PENDING and cancelled:
                if time.monotonic() > last_call:
                    raise RemoteError(
                        f"{peer}: goes on answering after the C-CANCEL", partial=answers
                    )
                continue
            if code in _PENDING:
                if found is not None:
                    answers.append(_answer(found, caller.limits, peer, answers))
                    size += len(json.dumps(answers[-1]))
                why = ""
                if time.monotonic() > deadline:
                    why = f"{time_limit:g} s passed"
                elif size > most:
                    why = f"answers over {most} bytes ({FIND_ANSWER_DATASETS}x MaximumDatasetSize)"
                if why:
                    log.warning("C-FIND on %s cut after %d answers: %s", peer, len(answers), why)
                if why or len(answers) >= limit:
                    assoc.send_c_cancel(_MESSAGE_ID, query_model=DPP_FIND)
                    cancelled = True
                    last_call = time.monotonic() + (modality.timeout or caller.dimse_timeout)
                continue
            if code == status.SUCCESS or (code == status.CANCEL and cancelled):
                abort = False
                return FindResult(answers, complete=not cancelled)
            raise _refused("C-FIND", modality, code, response, "find", answers)
        raise RemoteError(f"{modality.describe()}: C-FIND ended without a final status")
    finally:
        _close(assoc, abort)


def _answer(
    found: Dataset, limits: DatasetLimits, peer: str, partial: list[dict[str, Any]]
) -> dict[str, Any]:
    """One C-FIND answer as DICOM JSON, or RemoteError if nested deeper than allowed.

    Its size is bounded while it arrives (the guard); its nesting is checked
    here, before any recursive walk over it.
    """
    try:
        check_nesting(found, limits.maximum_depth)
    except LimitExceeded as exc:
        raise RemoteError(
            f"{peer}: C-FIND answer refused: {exc.comment}", partial=partial
        ) from None
    return answer_json(found)


def _responses(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    expected: int,
    modality: Modality,
    partial: Any = None,
) -> Iterator[tuple[Dataset, Dataset | None]]:
    """The responses, at most :data:`AFTER_CANCEL` more than ``expected``; then RemoteError."""
    for count, response in enumerate(responses):
        if count > expected + AFTER_CANCEL:
            raise RemoteError(
                f"{modality.describe()}: goes on answering (C-CANCEL ignored?)", partial=partial
            )
        yield response


def _code(
    response: Dataset,
    modality: Modality,
    what: str,
    partial: Any,
    guard: ConnectionGuard | None = None,
    stopped: str | None = None,
) -> int:
    if "Status" not in response:
        why = stopped or (guard.refusal if guard is not None else None)
        if why:
            reason = f"{modality.describe()}: association aborted during {what}: {why}"
        else:
            reason = (
                f"{modality.describe()}: no {what} response within the timeout, or the "
                "association was aborted"
            )
        raise RemoteError(reason, partial=partial)
    return int(response.Status)


def _refused(
    what: str, modality: Modality, code: int, response: Dataset, service: str, partial: Any
) -> RemoteError:
    comment = str(response.get("ErrorComment", "")) or None
    name = status_name(code, service)
    reason = f"{modality.describe()} answered {what} with 0x{code:04X} ({name})"
    if comment:
        reason += f": {comment}"
    return RemoteError(reason, code, comment, partial)


# -- C-GET and C-MOVE -----------------------------------------------------------------


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
            assoc.send_c_cancel(_MESSAGE_ID, query_model=model)

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
        return status_dataset(status.NOT_AUTHORIZED, comment)


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
                    status.STORE_CANNOT_UNDERSTAND,
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
            return status_dataset(status.STORE_CANNOT_UNDERSTAND, f"internal error: {exc}")
        log.info("C-GET from %s: %s stored", peer, uid)
        return status_dataset(status.SUCCESS)

    guard = guard_for(caller, modality)
    assoc = open_association(
        caller, modality, DPP_GET, storage=True, handlers=[(evt.EVT_C_STORE, on_store)],
        guard=guard,
    )  # fmt: skip
    identifier = retrieve_identifier(uids)
    return _retrieve(
        "C-GET", assoc, lambda: assoc.send_c_get(identifier, DPP_GET, _MESSAGE_ID), modality,
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
        "C-MOVE", assoc, lambda: assoc.send_c_move(identifier, destination, DPP_MOVE, _MESSAGE_ID),
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
        for response, identifier in _responses(send(), len(uids), modality, progress):
            code = _code(response, modality, method, progress, guard, intake.stopped)
            progress.update(response)
            if code == status.PENDING:
                control.attach(assoc, model)  # sends the C-CANCEL if one was asked for
                continue
            failed = _failed_uids(identifier)[: len(uids)]
            if code in _FINAL_SERVED:
                abort = False
                comment = str(response.get("ErrorComment", "")) or None
                return RetrieveResult(
                    method, code, comment, progress, failed, intake.refused, intake.unrequested
                )
            raise _refused(method, modality, code, response, service, progress)
        raise RemoteError(f"{modality.describe()}: {method} ended without a final status")
    finally:
        control.attach(None)
        _close(assoc, abort)


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
