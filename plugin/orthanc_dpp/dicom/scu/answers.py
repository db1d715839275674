"""What another archive answers the DPP SCU, worded for the REST answers, job errors and logs.

The responses are read through :func:`bounded_responses` (a remote that
ignores a C-CANCEL is cut off after :data:`AFTER_CANCEL` more), each status
through :func:`response_code` (a missing one says why the association
ended), and a failure status becomes a :class:`RemoteError`
(:func:`status_error`) named by :func:`status_name`. An association the
remote did not give is worded by :data:`SCU_WORDS`
(:func:`refusal_reason`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from pydicom import Dataset
from pynetdicom import status as dimse_status

from orthanc_dpp.dicom.connections import ConnectionGuard
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import AssociationFailed, Refusal
from orthanc_dpp.model.sop import DPP_FIND, DPP_GET, DPP_MOVE

#: Responses still read after a C-CANCEL before the association is aborted.
AFTER_CANCEL = 1000


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


def _sop_name(sop_class: str) -> str:
    names = {DPP_FIND: "DPP Find", DPP_GET: "DPP Get", DPP_MOVE: "DPP Move"}
    return names.get(sop_class, sop_class)


def bounded_responses(
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


def response_code(
    response: Dataset,
    modality: Modality,
    what: str,
    partial: Any,
    guard: ConnectionGuard | None = None,
    stopped: str | None = None,
) -> int:
    """The response's status; RemoteError when it has none (saying why, if the guard or
    ``stopped`` knows: a silent remote and an aborted association read alike otherwise)."""
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


def status_error(
    what: str, modality: Modality, code: int, response: Dataset, service: str, partial: Any
) -> RemoteError:
    """The RemoteError for a failure status: its code, name and the remote's Error Comment."""
    comment = str(response.get("ErrorComment", "")) or None
    name = status_name(code, service)
    reason = f"{modality.describe()} answered {what} with 0x{code:04X} ({name})"
    if comment:
        reason += f": {comment}"
    return RemoteError(reason, code, comment, partial)
