"""C-FIND SCP logic for the DPP information model, as a pure generator.

The pynetdicom EVT_C_FIND handler (:class:`orthanc_dpp.dicom.scp.handlers.FindHandler`)
checks the caller and decodes the identifier, then calls :func:`handle_find`
with it and a cancel check and passes on what it yields: ``(status,
identifier)`` pairs as pynetdicom expects. Kept free of pynetdicom events so
every status is tested without a network.

No identifier may make this raise: pynetdicom would answer 0xC311 with no
explanation. Invalid identifiers get their specific status (0xA900 or
0xC000) with an Error Comment naming the key; anything unexpected is logged
with its traceback and answered 0xC000 with a comment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from pydicom.dataset import Dataset

from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.dimse_status import InvalidIdentifier
from orthanc_dpp.model.index import Entry, ProtocolIndex
from orthanc_dpp.model.key_table import DPP_MODEL, InformationModel
from orthanc_dpp.model.query import Query, compile_query

log = logging.getLogger("orthanc_dpp.find")

Response = tuple[int | Dataset, Dataset | bytes | None]

#: Makes the pending response for a matching entry: (status, identifier as a
#: dataset, or already encoded for the request's transfer syntax).
Respond = Callable[[Query, Entry], tuple[int, Dataset | bytes]]


def respond_with_dataset(query: Query, entry: Entry) -> tuple[int, Dataset | bytes]:
    """The plain response: the record projected on the requested keys."""
    return query.respond(entry.record)


def handle_find(
    identifier: Dataset,
    index: ProtocolIndex,
    *,
    model: InformationModel = DPP_MODEL,
    max_results: int,
    is_cancelled: Callable[[], bool],
    respond: Respond = respond_with_dataset,
) -> Iterator[Response]:
    """Answer one C-FIND: pending responses, then Success, or one final failure.

    ``max_results`` (0 = unlimited) bounds the pending responses; one match
    beyond it ends the C-FIND with 0xA700 (Out of resources), so the SCU
    knows its answer is incomplete and can refine the query. ``respond``
    builds each pending response (the C-FIND fast path passes one that
    returns cached encoded bytes).
    """
    try:
        query = compile_query(identifier, model)
    except InvalidIdentifier as exc:
        log.info("C-FIND identifier refused (0x%04X): %s", exc.status, exc)
        yield dimse_status.status_dataset(exc.status, exc.comment, exc.offending), None
        return
    except Exception:
        log.exception("C-FIND identifier could not be read")
        yield (
            dimse_status.status_dataset(
                dimse_status.UNABLE_TO_PROCESS, "Identifier could not be read"
            ),
            None,
        )
        return

    sent = 0
    try:
        for entry in index.find(query, is_cancelled):
            if is_cancelled():
                break
            if max_results and sent >= max_results:
                log.info("C-FIND stopped at the limit of %d results", max_results)
                comment = f"More than {max_results} matches; refine the query"
                yield dimse_status.status_dataset(dimse_status.FIND_OUT_OF_RESOURCES, comment), None
                return
            code, response = respond(query, entry)
            yield code, response
            sent += 1
        if is_cancelled():
            log.info("C-FIND cancelled after %d result(s)", sent)
            yield dimse_status.CANCEL, None
            return
    except Exception:
        log.exception("C-FIND failed after %d result(s)", sent)
        yield (
            dimse_status.status_dataset(
                dimse_status.UNABLE_TO_PROCESS, "Internal error while matching"
            ),
            None,
        )
        return
    yield dimse_status.SUCCESS, None
