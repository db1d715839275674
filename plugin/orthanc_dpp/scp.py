"""C-ECHO, C-STORE and C-FIND event handlers of the DPP listener.

C-GET and C-MOVE live in :mod:`orthanc_dpp.retrieve`. Every handler first
asks :class:`Gatekeeper` whether the calling peer may use the service, with
Orthanc's own meaning of the modality list (:mod:`orthanc_dpp.access`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import evt

from orthanc_dpp import encoded, status
from orthanc_dpp.access import Gatekeeper, Service, describe_requestor
from orthanc_dpp.find import handle_find
from orthanc_dpp.index import ProtocolIndex
from orthanc_dpp.keys import DPP_MODEL, model_of
from orthanc_dpp.library import ProtocolLibrary, Stored, StoreError
from orthanc_dpp.limits import (
    DatasetLimits,
    LimitExceeded,
    check_values_per_key,
    decode_dimse_dataset,
    too_deep,
)
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.status import status_dataset

log = logging.getLogger("orthanc_dpp.scp")

#: What a refused peer is told. The reason (which rule, which modality and
#: its host) goes to Orthanc's log only: it would tell a stranger what to
#: claim to be.
NOT_AUTHORISED = "Not authorised"


def make_echo_handler(
    gate: Gatekeeper, metrics: Metrics | None = None
) -> Callable[[evt.Event], Dataset]:
    """C-ECHO: success, or a refusal naming why (like Orthanc's AllowEcho)."""
    counted = metrics or Metrics(enabled=False)

    def handle_echo(event: evt.Event) -> Dataset:
        decision = gate.check(event.assoc, Service.ECHO)
        if not decision:
            counted.dimse("c_echo", "refused")
            # Verification has no "not authorised" status: a failure code
            # with the reason is the clearest answer an SCU can show.
            return status_dataset(status.UNABLE_TO_PROCESS, NOT_AUTHORISED)
        log.info("C-ECHO from %s", describe_requestor(event.assoc))
        counted.dimse("c_echo", "success")
        return status_dataset(status.SUCCESS)

    return handle_echo


def event_dataset(event: evt.Event, limits: DatasetLimits) -> Dataset:
    """The request's dataset (C-STORE) or identifier (C-FIND), decoded within ``limits``."""
    request = event.request
    raw = getattr(request, "DataSet", None) or getattr(request, "Identifier", None)
    data = raw.getvalue() if raw is not None else b""
    return decode_dimse_dataset(data, str(event.context.transfer_syntax), limits)


def store_dataset(
    event: evt.Event, limits: DatasetLimits
) -> tuple[Dataset, encoded.Elements | None]:
    """A C-STORE's dataset within ``limits``, and its walked elements when it could be walked.

    Little endian datasets are walked once by :func:`encoded.scan` (lengths
    and nesting depth checked at every level) and read lazily: values are
    decoded when used, and the store splices into the received bytes. Other
    encodings, and bytes the walk does not vouch for, are decoded in full
    by :func:`event_dataset` as before (which reports what is wrong).
    """
    stream = getattr(event.request, "DataSet", None)
    raw = stream.getvalue() if stream is not None else b""
    implicit = encoded.WALKED.get(str(event.context.transfer_syntax))
    if implicit is None or not raw or len(raw) > limits.maximum_size:
        return event_dataset(event, limits), None
    try:
        elements = encoded.scan(raw, implicit, limits.maximum_depth)
    except encoded.TooDeep:
        raise too_deep(limits.maximum_depth) from None
    except encoded.Unreadable:
        return event_dataset(event, limits), None
    ds = read_dataset(BytesIO(raw), implicit, True)
    ds.set_original_encoding(implicit, True)
    return ds, elements


def make_store_handler(
    library: ProtocolLibrary,
    gate: Gatekeeper,
    on_stored: Callable[[Stored], None],
    limits: DatasetLimits | None = None,
    metrics: Metrics | None = None,
) -> Callable[[evt.Event], Dataset]:
    """C-STORE: success only once Orthanc has stored the instance."""
    limits = limits or DatasetLimits()
    counted = metrics or Metrics(enabled=False)

    def handle_store(event: evt.Event) -> Dataset:
        if not gate.check(event.assoc, Service.STORE):
            counted.dimse("c_store", "refused")
            return status_dataset(status.NOT_AUTHORIZED, NOT_AUTHORISED)
        answer = store(event)
        counted.dimse_status("c_store", int(answer.Status))
        return answer

    def store(event: evt.Event) -> Dataset:
        peer = describe_requestor(event.assoc)
        try:
            try:
                ds, elements = store_dataset(event, limits)
                ds.file_meta = event.file_meta
            except LimitExceeded as exc:
                raise StoreError(exc.status, exc.http_status, exc.comment) from exc
            except Exception as exc:  # pydicom raises several types on bad data
                raise StoreError(
                    status.STORE_CANNOT_UNDERSTAND, 400, f"cannot decode the dataset: {exc}"
                ) from exc
            stored = library.store(
                ds, context_sop_class=str(event.context.abstract_syntax), elements=elements
            )
        except StoreError as exc:
            log.error("C-STORE from %s refused (0x%04X): %s", peer, exc.dimse_status, exc.reason)
            return status_dataset(exc.dimse_status, exc.reason)
        except Exception as exc:
            log.exception("C-STORE from %s failed unexpectedly", peer)
            return status_dataset(status.STORE_CANNOT_UNDERSTAND, f"internal error: {exc}")
        on_stored(stored)
        log.info(
            "C-STORE from %s: %s stored as %s (%s)",
            peer,
            stored.sop_instance_uid,
            stored.orthanc_id,
            stored.status,
        )
        return status_dataset(status.SUCCESS)

    return handle_store


def make_find_handler(
    index: ProtocolIndex,
    gate: Gatekeeper,
    *,
    max_results: int,
    is_ready: Callable[[], bool],
    limits: DatasetLimits | None = None,
    time_limit: float = 600.0,
    metrics: Metrics | None = None,
) -> Callable[[evt.Event], Iterator[tuple[Any, Dataset | None]]]:
    """C-FIND on the DPP information model, answered from the index.

    Bounded: the identifier by ``limits`` (size, nesting, values per key),
    the answer by ``time_limit`` seconds (then 0xA700, "refine the query");
    a C-CANCEL or the association closing stops it at once. Each request
    is counted in ``metrics`` by outcome and timed until its final response.
    """
    limits = limits or DatasetLimits()
    counted = metrics or Metrics(enabled=False)

    def handle_counted(event: evt.Event) -> Iterator[tuple[Any, Dataset | None]]:
        started = time.monotonic()
        refused: list[bool] = []

        def count(final: Any) -> None:
            counted.find_timed(time.monotonic() - started)
            if refused:
                counted.dimse("c_find", "refused")
            elif final is None:  # the association ended first
                counted.dimse("c_find", "cancel")
            else:
                counted.dimse_status(
                    "c_find", final if isinstance(final, int) else int(final.Status)
                )

        done = False
        try:
            for code, response in handle(event, refused):
                if response is None and not done:
                    # Counted now: pynetdicom stops iterating after the final status.
                    done = True
                    count(code)
                yield code, response
        finally:
            if not done:
                count(None)

    def handle(event: evt.Event, refused: list[bool]) -> Iterator[tuple[Any, Dataset | None]]:
        peer = describe_requestor(event.assoc)
        decision = gate.check(event.assoc, Service.FIND)
        if not decision:
            refused.append(True)
            # C-FIND has no "not authorised" status (PS3.4 C.4.1.1.4).
            yield (
                status_dataset(status.UNABLE_TO_PROCESS, NOT_AUTHORISED),
                None,
            )
            return
        if not is_ready():
            log.warning("C-FIND from %s while the protocol index is still loading", peer)
            yield (
                status_dataset(
                    status.FIND_OUT_OF_RESOURCES, "Protocol index still loading; retry shortly"
                ),
                None,
            )
            return
        try:
            identifier = event_dataset(event, limits)
            check_values_per_key(identifier, limits.maximum_values)
        except LimitExceeded as exc:
            log.warning("C-FIND from %s refused (0x%04X): %s", peer, exc.status, exc.comment)
            yield status_dataset(exc.status, exc.comment), None
            return
        except Exception as exc:
            log.warning("C-FIND from %s: identifier could not be decoded: %s", peer, exc)
            yield status_dataset(status.UNABLE_TO_PROCESS, "Identifier could not be read"), None
            return
        count = 0
        deadline = time.monotonic() + time_limit
        stopped: str | None = None

        def is_cancelled() -> bool:
            # pynetdicom forgets a C-CANCEL once it has reported it: remember it.
            nonlocal stopped
            if stopped is None:
                if event.is_cancelled:
                    stopped = "cancelled"
                elif not event.assoc.is_established:
                    stopped = "closed"  # nobody left to answer: same as a cancel
                elif time.monotonic() > deadline:
                    stopped = "time"
            return stopped is not None

        # The listener accepts FIND contexts of the served models only.
        model = model_of(str(event.request.AffectedSOPClassUID)) or DPP_MODEL
        for code, response in handle_find(
            identifier, index, model=model, max_results=max_results, is_cancelled=is_cancelled
        ):
            if response is not None:
                count += 1
                yield code, response
                continue
            final = code if isinstance(code, int) else int(code.Status)
            if stopped == "time" and final == status.CANCEL:
                comment = f"Query ran longer than FindTimeLimit ({time_limit:g} s); refine it"
                log.warning("C-FIND from %s stopped after %d match(es): %s", peer, count, comment)
                yield status_dataset(status.FIND_OUT_OF_RESOURCES, comment), None
                return
            if stopped == "closed":
                log.info("C-FIND from %s: association closed after %d match(es)", peer, count)
                return
            log.info("C-FIND from %s: %d match(es), final status 0x%04X", peer, count, final)
            yield code, response

    return handle_counted
