"""C-ECHO, C-STORE and C-FIND event handlers of the DPP listener.

C-GET and C-MOVE live in :mod:`orthanc_dpp.dicom.scp.retrieve`. Every handler first
asks :class:`Gatekeeper` whether the calling peer may use the service, with
Orthanc's own meaning of the modality list (:mod:`orthanc_dpp.dicom.access`).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.access import Gatekeeper, Service, describe_requestor
from orthanc_dpp.dicom.scp.find_matches import Respond, handle_find
from orthanc_dpp.dicom.scp.find_responses import Batch, PendingEncoder, ResponseCache
from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.dimse_status import status_dataset
from orthanc_dpp.model.index import Entry, ProtocolIndex
from orthanc_dpp.model.key_table import DPP_MODEL, model_of
from orthanc_dpp.model.query import Query
from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE
from orthanc_dpp.storage import encoded
from orthanc_dpp.storage.decoding import (
    DatasetLimits,
    LimitExceeded,
    check_values_per_key,
    decode_dimse_dataset,
    too_deep,
)
from orthanc_dpp.storage.errors import StoreError, undecodable_as_store_error
from orthanc_dpp.storage.library import ProtocolLibrary, Stored

log = logging.getLogger("orthanc_dpp.scp")

#: What a refused peer is told. The reason (which rule, which modality and
#: its host) goes to Orthanc's log only: it would tell a stranger what to
#: claim to be.
NOT_AUTHORISED = "Not authorised"


class EchoHandler:
    """C-ECHO: success, or a refusal naming why (like Orthanc's AllowEcho)."""

    def __init__(self, gate: Gatekeeper, metrics: Metrics | None = None) -> None:
        self.gate = gate
        self.metrics = metrics or Metrics(enabled=False)

    def __call__(self, event: evt.Event) -> Dataset:
        decision = self.gate.check(event.assoc, Service.ECHO)
        if not decision:
            self.metrics.dimse("c_echo", "refused")
            # Verification has no "not authorised" status: a failure code
            # with the reason is the clearest answer an SCU can show.
            return status_dataset(dimse_status.UNABLE_TO_PROCESS, NOT_AUTHORISED)
        log.info("C-ECHO from %s", describe_requestor(event.assoc))
        self.metrics.dimse("c_echo", "success")
        return status_dataset(dimse_status.SUCCESS)


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


class NotAnnounced(Exception):
    """A C-STORE whose command and dataset disagree on what is stored.

    ``comment`` is for the peer (Error Comment, 64 characters: no room for
    two UIDs; the response's Affected SOP Instance UID names the announced
    one), ``detail`` for Orthanc's log, naming both UIDs.
    """

    def __init__(self, code: int, comment: str, detail: str) -> None:
        super().__init__(detail)
        self.status = code
        self.comment = comment
        self.detail = detail


def check_announced_class(request: Any, context_sop_class: str) -> None:
    """The command's Affected SOP Class UID must be the presentation context's.

    pynetdicom picks the service by the command's class and gives the
    handler the context; :func:`check_storable` then compares the dataset
    with the context. A command naming another class would otherwise store
    one kind of instance (a protocol) while announcing another (an
    approval) to whoever logs or relays the command (PS3.4 B.2.3, 0xA900).
    """
    affected = str(getattr(request, "AffectedSOPClassUID", "") or "").strip()
    if affected != context_sop_class:
        raise NotAnnounced(
            dimse_status.STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "Affected SOP Class UID is not the presentation context's",
            f"Affected SOP Class UID {affected or '(none)'} is not the presentation "
            f"context's {context_sop_class}",
        )


def check_announced_instance(request: Any, ds: Dataset) -> None:
    """The dataset's SOP Instance UID must be the command's Affected SOP Instance UID.

    Otherwise a peer stores (or replaces) one protocol while its command,
    the response and every log line name another. Refused with 0xC000
    (PS3.4 B.2.3 "Cannot understand"), as the C-GET intake does
    (:mod:`orthanc_dpp.dicom.scu.retrieve`).
    """
    affected = str(getattr(request, "AffectedSOPInstanceUID", "") or "").strip()
    own = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not own:
        raise NotAnnounced(
            dimse_status.STORE_CANNOT_UNDERSTAND,
            "SOP Instance UID (0008,0018) missing from the dataset",
            f"the dataset announced as {affected or '(none)'} has no SOP Instance UID",
        )
    if own != affected:
        raise NotAnnounced(
            dimse_status.STORE_CANNOT_UNDERSTAND,
            "SOP Instance UID is not the Affected SOP Instance UID",
            f"the dataset's SOP Instance UID {own} is not the Affected SOP Instance "
            f"UID {affected or '(none)'}",
        )


@dataclass(frozen=True)
class StoreOptions:
    """What the settings say about C-STORE.

    ``approval_storers`` (``ApprovalStorers``): the AE titles that may
    C-STORE a Protocol Approval.
    """

    approval_storers: frozenset[str] = frozenset()


class StoreHandler:
    """C-STORE: success only once Orthanc has stored the instance.

    Storing a Protocol Approval is a right of its own: an approval tells
    people a protocol may be used on patients, so only the AE titles in
    ``options.approval_storers`` may C-STORE one, on top of being allowed to
    store at all.
    """

    def __init__(
        self,
        library: ProtocolLibrary,
        gate: Gatekeeper,
        on_stored: Callable[[Stored], None],
        limits: DatasetLimits | None = None,
        metrics: Metrics | None = None,
        options: StoreOptions = StoreOptions(),
    ) -> None:
        self.library = library
        self.gate = gate
        self.on_stored = on_stored
        self.limits = limits or DatasetLimits()
        self.metrics = metrics or Metrics(enabled=False)
        self.options = options

    def __call__(self, event: evt.Event) -> Dataset:
        counted = self.metrics
        if not self.gate.check(event.assoc, Service.STORE):
            counted.dimse("c_store", "refused")
            return status_dataset(dimse_status.NOT_AUTHORIZED, NOT_AUTHORISED)
        if (
            str(event.context.abstract_syntax) == PROTOCOL_APPROVAL_STORAGE
            and event.assoc.requestor.ae_title.strip() not in self.options.approval_storers
        ):
            counted.dimse("c_store", "refused")
            log.error(
                "C-STORE of a Protocol Approval from %s refused: AET %s is not in ApprovalStorers",
                describe_requestor(event.assoc),
                event.assoc.requestor.ae_title.strip(),
            )
            return status_dataset(dimse_status.NOT_AUTHORIZED, NOT_AUTHORISED)
        answer = self._store(event, time.perf_counter())
        counted.dimse_status("c_store", int(answer.Status))
        return answer

    def _store(self, event: evt.Event, started: float) -> Dataset:
        peer = describe_requestor(event.assoc)
        context_sop_class = str(event.context.abstract_syntax)
        try:
            check_announced_class(event.request, context_sop_class)
            with undecodable_as_store_error():
                ds, elements = store_dataset(event, self.limits)
                ds.file_meta = event.file_meta
            check_announced_instance(event.request, ds)
            stored = self.library.store(
                ds,
                context_sop_class=context_sop_class,
                elements=elements,
                on_stored=self.on_stored,  # indexed before the UID's claim is released
            )
        except NotAnnounced as exc:
            log.warning("C-STORE from %s refused (0x%04X): %s", peer, exc.status, exc.detail)
            return status_dataset(exc.status, exc.comment)
        except StoreError as exc:
            log.error("C-STORE from %s refused (0x%04X): %s", peer, exc.dimse_status, exc.reason)
            return status_dataset(exc.dimse_status, exc.reason)
        except Exception as exc:
            log.exception("C-STORE from %s failed unexpectedly", peer)
            return status_dataset(dimse_status.STORE_CANNOT_UNDERSTAND, f"internal error: {exc}")
        self.metrics.store_timed(time.perf_counter() - started, stored.orthanc_seconds)
        log.info(
            "C-STORE from %s: %s stored as %s (%s)",
            peer,
            stored.sop_instance_uid,
            stored.orthanc_id,
            stored.status,
        )
        return status_dataset(dimse_status.SUCCESS)


@dataclass(frozen=True)
class FindOptions:
    """What the settings say about C-FIND.

    ``max_results`` (``MaximumFindResults``, 0: no limit) caps the matches;
    ``time_limit`` (``FindTimeLimit``) is the seconds one query may run
    before it is answered 0xA700 "refine the query".
    """

    max_results: int
    time_limit: float = 600.0


class FindHandler:
    """C-FIND on the DPP and Protocol Approval models, answered from the index.

    Bounded: the identifier by ``limits`` (size, nesting, values per key),
    the answer by ``options`` (see :class:`FindOptions`);
    a C-CANCEL or the association closing stops it at once. Each request
    is counted in ``metrics`` by outcome and timed until its final response.

    Called with an event, it is an ordinary ``evt.EVT_C_FIND`` handler
    yielding datasets. The listener routes its C-FIND requests to
    :meth:`serve` instead (:mod:`orthanc_dpp.dicom.scp.routing`), which sends the same answers
    with encoded responses reused from ``cache`` and batched writes
    (:mod:`orthanc_dpp.dicom.scp.find_responses`).
    """

    def __init__(
        self,
        index: ProtocolIndex,
        gate: Gatekeeper,
        options: FindOptions,
        *,
        is_ready: Callable[[], bool],
        limits: DatasetLimits | None = None,
        metrics: Metrics | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.index = index
        self.gate = gate
        self.options = options
        self.is_ready = is_ready
        self.limits = limits or DatasetLimits()
        self.metrics = metrics or Metrics(enabled=False)
        self.cache = cache if cache is not None else ResponseCache(0)

    def __call__(self, event: evt.Event) -> Iterator[tuple[Any, Dataset | None]]:
        return self._counted(event, None)  # type: ignore[return-value]

    # -- the fast path -------------------------------------------------------------

    def serve(self, service: Any, req: Any, context: PresentationContext) -> None:
        """Answer one C-FIND request on ``service``'s association (see the class docstring)."""
        assoc = service.assoc
        syntax = context.transfer_syntax[0]
        event = evt.Event(
            assoc,
            evt.EVT_C_FIND,
            {"request": req, "context": context.as_tuple, "_is_cancelled": service.is_cancelled},
        )
        request = (str(req.AffectedSOPClassUID), str(syntax), req.Identifier.getvalue())
        encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        answers = self._counted(event, (request, encoding))
        encoder = PendingEncoder(
            int(req.MessageID),
            str(req.AffectedSOPClassUID),
            int(context.context_id or 0),
            int(service.dimse.maximum_pdu_size or 0),
        )
        sender = _PendingSender(assoc, encoder)
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        try:
            for code, identifier in answers:
                if not assoc.is_established:
                    return
                if isinstance(identifier, Dataset):  # not from the cache: encode it here
                    identifier = encode(identifier, *encoding) or None
                    if identifier is None:
                        log.error("C-FIND: a response identifier could not be encoded")
                        code = status_dataset(
                            dimse_status.UNABLE_TO_PROCESS,
                            "Response identifier could not be encoded",
                        )
                if identifier is not None:
                    sender.send(int(code), identifier)
                    continue
                sender.flush()
                rsp = service.validate_status(code, rsp)
                service.dimse.send_msg(rsp, context.context_id)
                return  # a final status (handle_find yields pending ones with an identifier)
            sender.flush()
        except OSError as exc:
            peer = describe_requestor(assoc)
            log.warning("C-FIND to %s: sending failed (%s); aborting", peer, exc)
            assoc.abort()
        finally:
            answers.close()

    def _encoded(self, request: Any, encoding: tuple[bool, bool, bool]) -> Respond:
        cache = self.cache

        def respond(query: Query, entry: Entry) -> tuple[int, bytes | Dataset]:
            hit = cache.get(entry.record, request)
            if hit is not None:
                return hit
            code, ds = query.respond(entry.record)
            data = encode(ds, *encoding)
            if data is None:  # pydicom could not encode it: the stock path reports it
                return code, ds
            cache.put(entry.record, request, code, data)
            return code, data

        return respond

    # -- the answer, shared by both paths -----------------------------------------

    def _counted(
        self, event: evt.Event, encoded: tuple[Any, tuple[bool, bool, bool]] | None
    ) -> Generator[tuple[Any, Dataset | bytes | None], None, None]:
        started = time.monotonic()
        refused: list[bool] = []

        def count(final: Any) -> None:
            self.metrics.find_timed(time.monotonic() - started)
            if refused:
                self.metrics.dimse("c_find", "refused")
            elif final is None:  # the association ended first
                self.metrics.dimse("c_find", "cancel")
            else:
                self.metrics.dimse_status(
                    "c_find", final if isinstance(final, int) else int(final.Status)
                )

        respond = self._encoded(*encoded) if encoded is not None else None
        done = False
        try:
            for code, response in self._answer(event, refused, respond):
                if response is None and not done:
                    # Counted now: pynetdicom stops iterating after the final status.
                    done = True
                    count(code)
                yield code, response
        finally:
            if not done:
                count(None)

    def _answer(
        self, event: evt.Event, refused: list[bool], respond: Respond | None
    ) -> Iterator[tuple[Any, Dataset | bytes | None]]:
        peer = describe_requestor(event.assoc)
        decision = self.gate.check(event.assoc, Service.FIND)
        if not decision:
            refused.append(True)
            # C-FIND has no "not authorised" status (PS3.4 C.4.1.1.4).
            yield status_dataset(dimse_status.UNABLE_TO_PROCESS, NOT_AUTHORISED), None
            return
        if not self.is_ready():
            log.warning("C-FIND from %s while the protocol index is still loading", peer)
            yield (
                status_dataset(
                    dimse_status.FIND_OUT_OF_RESOURCES,
                    "Protocol index still loading; retry shortly",
                ),
                None,
            )
            return
        try:
            identifier = event_dataset(event, self.limits)
            check_values_per_key(identifier, self.limits.maximum_values)
        except LimitExceeded as exc:
            log.warning("C-FIND from %s refused (0x%04X): %s", peer, exc.status, exc.comment)
            yield status_dataset(exc.status, exc.comment), None
            return
        except Exception as exc:
            log.warning("C-FIND from %s: identifier could not be decoded: %s", peer, exc)
            yield (
                status_dataset(dimse_status.UNABLE_TO_PROCESS, "Identifier could not be read"),
                None,
            )
            return
        count = 0
        deadline = time.monotonic() + self.options.time_limit
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
        options: dict[str, Any] = {} if respond is None else {"respond": respond}
        for code, response in handle_find(
            identifier,
            self.index,
            model=model,
            max_results=self.options.max_results,
            is_cancelled=is_cancelled,
            **options,
        ):
            if response is not None:
                count += 1
                yield code, response
                continue
            final = code if isinstance(code, int) else int(code.Status)
            if stopped == "time" and final == dimse_status.CANCEL:
                limit = self.options.time_limit
                comment = f"Query ran longer than FindTimeLimit ({limit:g} s); refine it"
                log.warning("C-FIND from %s stopped after %d match(es): %s", peer, count, comment)
                yield status_dataset(dimse_status.FIND_OUT_OF_RESOURCES, comment), None
                return
            if stopped == "closed":
                log.info("C-FIND from %s: association closed after %d match(es)", peer, count)
                return
            log.info("C-FIND from %s: %d match(es), final status 0x%04X", peer, count, final)
            yield code, response


class _PendingSender:
    """Pending responses of one C-FIND onto the wire, past pynetdicom's per-message path.

    On a plain TCP connection the PDUs are written in batches straight to
    the socket, once pynetdicom's own send queue is empty (so nothing it
    queued earlier can come after them); final responses still go through
    pynetdicom after a :meth:`flush`. Over TLS an SSL connection must not be
    written by this thread while pynetdicom's thread may read it, so each
    response is handed to pynetdicom's queue as one P-DATA instead.
    """

    def __init__(self, assoc: Any, encoder: PendingEncoder) -> None:
        self.assoc = assoc
        self.encoder = encoder
        sock = private.raw_socket(assoc)
        direct = sock is not None and not isinstance(sock, ssl.SSLSocket)
        self._socket = sock if direct else None
        self._batch: Batch | None = None
        if self._socket is not None:
            self._batch = Batch(self._write)
        self._drained = False

    def send(self, code: int, identifier: bytes) -> None:
        if self._batch is None:
            private.send_fragments(self.assoc, self.encoder.primitives(code, identifier))
            private.restart_network_timer(self.assoc)
            return
        self._batch.add(self.encoder.encode(code, identifier))

    def flush(self) -> None:
        if self._batch is not None:
            self._batch.flush()

    def _write(self, data: bytes) -> None:
        assert self._socket is not None
        if not self._drained:
            private.wait_until_sent(self.assoc, timeout=self.assoc.network_timeout or 60.0)
            self._drained = True
        self._socket.sendall(data)
        private.restart_network_timer(self.assoc)
