"""C-FIND on another DPP archive: its answers as DICOM JSON, bounded.

:func:`find` sends the identifier :func:`~orthanc_dpp.dicom.scu.identifiers.build_identifier`
made and answers DICOM JSON: at most ``limit`` answers, a time limit and a
bound in bytes (then a C-CANCEL), each answer's nesting checked before it is
walked. Its size is bounded while it arrives, by the association's guard
(:func:`orthanc_dpp.dicom.connections.requester_guard`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.dicom.outbound import Calling, guard_for
from orthanc_dpp.dicom.scu.answers import (
    RemoteError,
    bounded_responses,
    response_code,
    status_error,
)
from orthanc_dpp.dicom.scu.association import MESSAGE_ID, close_association, open_association
from orthanc_dpp.dicom.scu.identifiers import answer_json
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.sop import DPP_FIND
from orthanc_dpp.storage.decoding import DatasetLimits, LimitExceeded, check_nesting

log = logging.getLogger("orthanc_dpp.remote")

#: Answers kept from one C-FIND when the request names no ``Limit``, and the most it may name.
DEFAULT_LIMIT = 100
MAXIMUM_LIMIT = 10_000
#: Seconds one C-FIND may take in all (each message also waits at most DimseTimeout).
FIND_TIME_LIMIT = 600.0
#: C-FIND answers kept in all, as DICOM JSON, at most this many times MaximumDatasetSize
#: (then a C-CANCEL, as at the limit): 64 MiB with the default.
FIND_ANSWER_DATASETS = 4

_PENDING = (dimse_status.PENDING, dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED)


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
    :data:`~orthanc_dpp.dicom.scu.answers.AFTER_CANCEL` responses or
    ``DimseTimeout`` seconds after the C-CANCEL is cut off (association
    aborted). Raises :class:`RemoteError`
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
        responses = assoc.send_c_find(identifier, DPP_FIND, MESSAGE_ID)
        for response, found in bounded_responses(responses, limit, modality, answers):
            code = response_code(response, modality, "C-FIND", answers, guard)
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
                    assoc.send_c_cancel(MESSAGE_ID, query_model=DPP_FIND)
                    cancelled = True
                    last_call = time.monotonic() + (modality.timeout or caller.dimse_timeout)
                continue
            if code == dimse_status.SUCCESS or (code == dimse_status.CANCEL and cancelled):
                abort = False
                return FindResult(answers, complete=not cancelled)
            raise status_error("C-FIND", modality, code, response, "find", answers)
        raise RemoteError(f"{modality.describe()}: C-FIND ended without a final status")
    finally:
        close_association(assoc, abort)


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
