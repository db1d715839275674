"""The load's peers: one thread per peer, one kind of DICOM operation each (:mod:`tests.load`).

Every association and operation here is bounded, and a failure becomes a
message counted in :class:`tests.load.report.KindStats`, never a hang.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, Association, evt

from dpp_tools.samples import make_library
from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.model.sop import (
    DPP_FIND,
    DPP_GET,
    DPP_MOVE,
    DPP_STORAGE_CLASSES,
    STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
)
from tests import dicom_client
from tests.load.report import KindStats
from tests.orthanc_server import OrthancServer, free_port

KINDS = ("store", "find", "get", "move")
#: Seconds any single network wait may last (association, DIMSE message, TCP connect).
NETWORK_TIMEOUT = 30.0
#: Protocols per C-GET and per C-MOVE.
RETRIEVED_PER_OPERATION = 3
#: AE title of the post-run checks (:func:`found_uids`); declared by :func:`dicom_modalities`.
CHECK_AET = "LOAD_CHECK"
PENDING = (0xFF00, 0xFF01)


class OperationError(Exception):
    """One operation did not do what it must; the message says what happened instead."""


class Unanswered(OperationError):
    """A request that got no response at all (DIMSE timeout or lost connection)."""


def peer_aet(kind: str, index: int) -> str:
    """A calling AE title per peer, so that Orthanc's log tells the peers apart."""
    return f"LOAD_{kind.upper()}{index:02d}"


def peer_address(kind: str, index: int) -> str:
    """A loopback address of its own per peer, as every modality has on a real network.

    Per-address limits (``MaximumConnectionsPerAddress``) then apply as in a
    hospital, and the declared ``Host`` of each modality is its own.
    """
    return f"127.0.{10 + KINDS.index(kind)}.{10 + index}"


def dicom_modalities(
    peers: Mapping[str, int], destination: MemoryStorageSCP | None = None
) -> dict[str, list[Any]]:
    """``DicomModalities`` for Orthanc: every peer's AE title, :data:`CHECK_AET`, the destination.

    With Orthanc's defaults only declared modalities may query and retrieve,
    and C-MOVE sends only to a declared one.
    """
    modalities: dict[str, list[Any]] = {"load-check": [CHECK_AET, "127.0.0.1", 104]}
    for kind, count in peers.items():
        for index in range(count):
            address = peer_address(kind, index)
            modalities[f"load-{kind}{index:02d}"] = [peer_aet(kind, index), address, 104]
    if destination is not None:
        modalities["load-destination"] = [destination.aet, "127.0.0.1", destination.port]
    return modalities


# -- the C-MOVE destination ----------------------------------------------------------


class MemoryStorageSCP:
    """A C-MOVE destination in this process that only counts what it receives.

    Counting SOP Instance UIDs from the C-STORE requests (without decoding
    the datasets) keeps the destination cheap and its memory flat, so it
    neither slows the load nor hides a leak in Orthanc's figures. Its port is
    chosen at construction, so that it can be declared in Orthanc's
    configuration before Orthanc starts.
    """

    def __init__(self, aet: str = "LOAD_DEST", port: int | None = None) -> None:
        self.aet = aet
        self.port = port or free_port()
        self.received: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.received.values())

    def _on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.received[uid] += 1
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
        ae.maximum_associations = 64  # one per concurrent C-MOVE, with room to spare
        for sop_class in sorted(DPP_STORAGE_CLASSES):
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_C_STORE, self._on_store)],
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> MemoryStorageSCP:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- associations and operations ------------------------------------------------------


def associate(
    server: OrthancServer,
    ae_title: str,
    contexts: Sequence[str],
    *,
    on_store: Callable[[evt.Event], int] | None = None,
    timeout: float = NETWORK_TIMEOUT,
    source: str = "127.0.0.1",
) -> Association:
    """An established association with the DPP listener, or :class:`OperationError`.

    Like :func:`tests.peers.associate` (same transfer syntaxes, TCP_NODELAY),
    but every wait is bounded, the TCP connect included, and a refusal is an
    error to count rather than an assertion: under load a frozen listener
    must become a failure message, not a hang. ``on_store`` receives the
    instances of a C-GET (the DPP storage classes offered with the SCP role).
    """
    try:
        return dicom_client.associate(
            "127.0.0.1",
            server.dpp_port,
            server.aet,
            calling_aet=ae_title,
            contexts=contexts,
            scp_role_for=sorted(DPP_STORAGE_CLASSES) if on_store else (),
            handlers=[(evt.EVT_C_STORE, on_store)] if on_store else (),
            timeout=timeout,
            source=source,
        )
    except dicom_client.AssociationRefused as refused:
        raise OperationError(
            f"association {refused.how} (connect/ACSE timeout {timeout:g} s)"
        ) from None


def _status_code(status: Dataset, what: str) -> int:
    if "Status" not in status:  # pynetdicom's empty status: timeout, abort or bad response
        raise Unanswered(f"{what}: no valid response (DIMSE timeout or connection lost)")
    return int(status.Status)


def _describe(code: int, status: Dataset) -> str:
    comment = status.get("ErrorComment", "")
    return f"0x{code:04X}" + (f" {comment!r}" if comment else "")


def c_store(assoc: Association, ds: Dataset) -> None:
    """C-STORE one protocol; anything but Success raises."""
    status = assoc.send_c_store(ds)
    code = _status_code(status, "C-STORE")
    if code != 0x0000:
        raise OperationError(f"C-STORE {ds.SOPInstanceUID}: {_describe(code, status)}")


def c_find_uids(assoc: Association, identifier: Dataset) -> set[str]:
    """SOP Instance UIDs of every match of one C-FIND; a final status but Success raises."""
    found: set[str] = set()
    final = None
    for status, answer in assoc.send_c_find(identifier, DPP_FIND):
        code = _status_code(status, "C-FIND")
        if code in PENDING:
            if answer is None or "SOPInstanceUID" not in answer:
                raise OperationError("C-FIND: a pending response without SOP Instance UID")
            found.add(str(answer.SOPInstanceUID))
        else:
            final = (code, status)
    if final is None:
        raise Unanswered("C-FIND: no final response")
    if final[0] != 0x0000:
        raise OperationError(f"C-FIND: final {_describe(*final)} after {len(found)} matches")
    return found


def _retrieve(
    assoc: Association, responses: Iterator[tuple[Dataset, Dataset | None]], what: str
) -> Dataset:
    """The final response of a C-GET or C-MOVE, its identifier merged in."""
    final = None
    for status, answer in responses:
        code = _status_code(status, what)
        if code not in PENDING:
            final = status
            if answer is not None:  # Failed SOP Instance UID List travels in the identifier
                final.update(answer)
    if final is None:
        raise Unanswered(f"{what}: no final response")
    return final


def _uid_identifier(uids: Sequence[str]) -> Dataset:
    identifier = Dataset()
    identifier.SOPInstanceUID = list(uids) if len(uids) > 1 else uids[0]
    return identifier


def _check_retrieved(final: Dataset, uids: Sequence[str], what: str) -> int:
    code = int(final.Status)
    completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
    if code != 0x0000 or completed != len(uids):
        failed = final.get("NumberOfFailedSuboperations", "?")
        raise OperationError(
            f"{what} of {len(uids)}: final {_describe(code, final)}, "
            f"{completed} completed, {failed} failed"
        )
    return completed


def found_uids(
    server: OrthancServer, uids: Sequence[str], *, chunk: int = 200, ae_title: str = CHECK_AET
) -> set[str]:
    """Which of ``uids`` a C-FIND on SOP Instance UID (list-of-UIDs matching) returns.

    Chunks keep each identifier well under the 64 KiB a UI value may hold.
    """
    found: set[str] = set()
    assoc = associate(server, ae_title, [DPP_FIND])
    try:
        for start in range(0, len(uids), chunk):
            found |= c_find_uids(assoc, _uid_identifier(uids[start : start + chunk]))
    finally:
        assoc.release()
    return found


# -- peers --------------------------------------------------------------------------------


class Shared:
    """State the peers and the driver share: the stop signal and the last success."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.last_success = time.monotonic()

    def succeeded(self) -> None:
        with self.lock:
            self.last_success = time.monotonic()


class Peer(threading.Thread):
    """One peer: a loop of one kind of operation until told to stop or out of operations."""

    def __init__(
        self,
        kind: str,
        index: int,
        server: OrthancServer,
        shared: Shared,
        *,
        known: Sequence[Dataset],
        find_patterns: Sequence[tuple[str, str]],
        destination: MemoryStorageSCP | None,
        max_ops: int,
        ops_per_association: int,
        timeout: float,
        store_seed: int,
    ) -> None:
        aet = peer_aet(kind, index)
        super().__init__(name=aet, daemon=True)  # daemon: a stuck peer never blocks exit
        self.kind = kind
        self.index = index
        self.aet = aet
        self.source = peer_address(kind, index)
        self.server = server
        self.shared = shared
        self.known_uids = [str(ds.SOPInstanceUID) for ds in known]
        self.find_patterns = find_patterns
        self.destination = destination
        self.max_ops = max_ops
        self.ops_per_association = ops_per_association
        self.timeout = timeout
        self.stats = KindStats(peers=1)
        self.stored: list[str] = []
        self.moved_completed = 0
        self.current: tuple[str, float] | None = None  # what it is doing, since when
        self._received: list[str] = []
        self._to_store: Iterator[Dataset] | None = (
            make_library(max_ops, seed=store_seed) if kind == "store" else None
        )

    # -- one operation each ------------------------------------------------------

    def _next_uids(self, n: int) -> list[str]:
        count = len(self.known_uids)
        start = (n * RETRIEVED_PER_OPERATION + self.index * 7) % count
        return [
            self.known_uids[(start + k) % count] for k in range(min(RETRIEVED_PER_OPERATION, count))
        ]

    def _store(self, assoc: Association, n: int) -> None:
        assert self._to_store is not None
        ds = next(self._to_store)
        c_store(assoc, ds)
        self.stored.append(str(ds.SOPInstanceUID))

    def _find(self, assoc: Association, n: int) -> None:
        pattern, uid = self.find_patterns[(n + self.index * 5) % len(self.find_patterns)]
        identifier = Dataset()
        identifier.SOPInstanceUID = ""
        identifier.ProtocolName = pattern
        found = c_find_uids(assoc, identifier)
        if uid not in found:
            raise OperationError(
                f"C-FIND ProtocolName={pattern!r}: {len(found)} matches, without {uid}"
            )

    def _get(self, assoc: Association, n: int) -> None:
        uids = self._next_uids(n)
        self._received.clear()
        final = _retrieve(assoc, assoc.send_c_get(_uid_identifier(uids), DPP_GET), "C-GET")
        _check_retrieved(final, uids, "C-GET")
        if sorted(self._received) != sorted(uids):
            raise OperationError(f"C-GET of {uids}: received {self._received}")

    def _move(self, assoc: Association, n: int) -> None:
        assert self.destination is not None
        uids = self._next_uids(n)
        responses = assoc.send_c_move(_uid_identifier(uids), self.destination.aet, DPP_MOVE)
        final = _retrieve(assoc, responses, "C-MOVE")
        self.moved_completed += int(final.get("NumberOfCompletedSuboperations", 0) or 0)
        _check_retrieved(final, uids, "C-MOVE")

    def _on_get_store(self, event: evt.Event) -> int:
        self._received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _open(self) -> Association:
        if self.kind == "store":
            return associate(
                self.server,
                self.aet,
                list(STORAGE_CLASSES),
                timeout=self.timeout,
                source=self.source,
            )
        if self.kind == "find":
            return associate(
                self.server, self.aet, [DPP_FIND], timeout=self.timeout, source=self.source
            )
        if self.kind == "get":
            return associate(
                self.server,
                self.aet,
                [DPP_GET],
                on_store=self._on_get_store,
                timeout=self.timeout,
                source=self.source,
            )
        return associate(
            self.server, self.aet, [DPP_MOVE], timeout=self.timeout, source=self.source
        )

    # -- the loop -------------------------------------------------------------------

    def _record(self, began: float, error: str | None, *, unanswered: bool = False) -> None:
        self.stats.record(time.monotonic() - began, error, unanswered=unanswered)
        self.current = None
        if error is None:
            self.shared.succeeded()

    def run(self) -> None:
        operation = {"store": self._store, "find": self._find, "get": self._get}.get(
            self.kind, self._move
        )
        n = 0  # operations attempted
        while not self.shared.stop.is_set() and n < self.max_ops:
            began = time.monotonic()  # the first operation's time includes associating
            self.current = ("associating", began)
            try:
                assoc = self._open()
            except Exception as exc:  # counted: the operation it was for failed
                n += 1
                self._record(began, f"{self.aet} op {n}: {exc}")
                continue
            healthy = True
            try:
                for done in range(self.ops_per_association):
                    if self.shared.stop.is_set() or n >= self.max_ops:
                        break
                    n += 1
                    if done:
                        began = time.monotonic()
                    self.current = (f"{self.kind} op {n}", began)
                    try:
                        operation(assoc, n)
                    except Exception as exc:  # counted and reported, never raised
                        self._record(
                            began,
                            f"{self.aet} op {n}: {exc}",
                            unanswered=isinstance(exc, Unanswered),
                        )
                        healthy = False
                        break
                    self._record(began, None)
            finally:
                self.current = ("releasing" if healthy else "aborting", time.monotonic())
                with contextlib.suppress(Exception):
                    if healthy:
                        assoc.release()
                    else:
                        assoc.abort()
                self.current = None

    def describe(self, now: float) -> str:
        current = self.current
        doing = f"{current[0]} for {now - current[1]:.0f} s" if current else "between operations"
        return f"{self.aet}: {doing} ({self.stats.ok} ok, {self.stats.failed} failed)"
