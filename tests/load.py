"""A bounded concurrent DICOM load on the plugin's listener, for tests that look for freezes.

Why a driver of its own: the defect it hunts (a GIL / Orthanc-mutex deadlock
under a dozen concurrent peers) shows only with several kinds of peers at
once, and it freezes the very server the test talks to. So everything here is
bounded, and a freeze turns into figures and messages instead of a hung
pytest:

* every association has ACSE, DIMSE, network and TCP-connect timeouts;
* every peer stops by itself (a duration and a maximum number of operations);
* the driver stops waiting at a hard deadline (duration + grace), or a few
  seconds after no peer has succeeded for ``stall_seconds``, and reports the
  peers still running as *stuck* (their daemon threads end once Orthanc is
  stopped or killed);
* a watchdog polls Orthanc's REST API (``GET /system``, ``GET /dpp/status``)
  with a short timeout and samples Orthanc's resident memory meanwhile.

Peers are threads of this process, one kind of operation each:

``store``  C-STORE of new, distinct protocols from :mod:`dpp_tools.samples`;
``find``   C-FIND on the DPP model by a Protocol Name wildcard, which must
           return the known protocol the pattern was taken from;
``get``    C-GET of 3 known protocols, all 3 received on the association;
``move``   C-MOVE of 3 known protocols to a :class:`MemoryStorageSCP`.

Only loopback addresses are used.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, Association, evt

from dpp_tools.samples import make_library
from orthanc_dpp.connections import set_tcp_nodelay
from orthanc_dpp.sop import (
    DPP_FIND,
    DPP_GET,
    DPP_MOVE,
    DPP_STORAGE_CLASSES,
    STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
)
from tests import dicom_client
from tests.orthanc_server import OrthancServer, free_port

KINDS = ("store", "find", "get", "move")
#: Seconds any single network wait may last (association, DIMSE message, TCP connect).
NETWORK_TIMEOUT = 30.0
#: Protocols per C-GET and per C-MOVE.
RETRIEVED_PER_OPERATION = 3
#: Failure messages kept per kind (the counts are complete).
KEPT_FAILURES = 5
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
    scp_role_for: Sequence[str] = (),
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
    timeout: float = NETWORK_TIMEOUT,
    source: str = "127.0.0.1",
) -> Association:
    """An established association with the DPP listener, or :class:`OperationError`.

    Like :func:`tests.peers.associate` (same transfer syntaxes, TCP_NODELAY),
    but every wait is bounded, the TCP connect included, and a refusal is an
    error to count rather than an assertion: under load a frozen listener
    must become a failure message, not a hang.
    """
    try:
        return dicom_client.associate(
            "127.0.0.1",
            server.dpp_port,
            server.aet,
            calling_aet=ae_title,
            contexts=contexts,
            scp_role_for=scp_role_for,
            handlers=handlers,
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


# -- results ----------------------------------------------------------------------------


@dataclass
class KindStats:
    """Operations of one kind (one peer's, or every peer's of that kind)."""

    peers: int = 0
    ok: int = 0
    failed: int = 0
    ok_seconds: float = 0.0
    worst_seconds: float = 0.0
    unanswered: int = 0  # failed requests that got no response at all
    failures: list[str] = field(default_factory=list)

    def record(self, seconds: float, error: str | None, *, unanswered: bool = False) -> None:
        self.worst_seconds = max(self.worst_seconds, seconds)
        self.unanswered += unanswered
        if error is None:
            self.ok += 1
            self.ok_seconds += seconds
        else:
            self.failed += 1
            if len(self.failures) < KEPT_FAILURES:
                self.failures.append(error)

    def add(self, other: KindStats) -> None:
        self.peers += other.peers
        self.ok += other.ok
        self.failed += other.failed
        self.unanswered += other.unanswered
        self.ok_seconds += other.ok_seconds
        self.worst_seconds = max(self.worst_seconds, other.worst_seconds)
        room = KEPT_FAILURES - len(self.failures)
        self.failures += other.failures[: max(room, 0)]


@dataclass
class RestStats:
    """What the watchdog saw of Orthanc's REST API and memory during the run."""

    polls: int = 0
    failed: int = 0
    worst_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rss_peak_kb: int | None = None
    associations_served: int | None = None


@dataclass
class LoadResult:
    """Figures of one run; :meth:`problems` is what a test asserts is empty."""

    plan: dict[str, int]
    duration: float
    ran_seconds: float  # until the peers were told to stop
    waited_seconds: float  # until the driver returned
    kinds: dict[str, KindStats]
    stored_uids: list[str]
    moved_completed: int
    moved_received: int | None
    stuck: list[str]
    stalled_after: float | None
    rest: RestStats
    rss_start_kb: int | None
    rss_end_kb: int | None
    associations_at_start: int | None = None
    #: Responses the peers' own pynetdicom reactors took off the queue (its race).
    stolen_responses: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(k.ok for k in self.kinds.values())

    @property
    def failed(self) -> int:
        return sum(k.failed for k in self.kinds.values())

    @property
    def rss_peak_kb(self) -> int | None:
        samples = [v for v in (self.rss_start_kb, self.rest.rss_peak_kb, self.rss_end_kb) if v]
        return max(samples) if samples else None

    def problems(self) -> list[str]:
        """Everything that went wrong, one line each (empty: a clean run)."""
        found = []
        unanswered = sum(k.unanswered for k in self.kinds.values())
        if unanswered:
            found.append(f"{unanswered} requests got no response at all")
        for kind, stats in self.kinds.items():
            if stats.failed:
                found.append(f"{stats.failed} {kind} operations failed, first: {stats.failures}")
        if self.stalled_after is not None:
            found.append(
                f"no operation succeeded for {self.stalled_after:.0f} s: the listener froze"
            )
        if self.stuck:
            found.append(f"{len(self.stuck)} peers stuck when the driver gave up: {self.stuck}")
        if self.rest.polls == 0:
            found.append("the REST watchdog made no poll")
        if self.rest.failed:
            found.append(
                f"{self.rest.failed} of {self.rest.polls} REST polls failed, "
                f"first: {self.rest.failures}"
            )
        if self.moved_received is not None and self.moved_received != self.moved_completed:
            found.append(
                f"C-MOVE destination received {self.moved_received} instances, "
                f"final responses reported {self.moved_completed} completed"
            )
        if self.stolen_responses:
            found.append(
                f"{len(self.stolen_responses)} responses taken by a peer's own reactor: "
                f"{self.stolen_responses[:3]}"
            )
        if len(set(self.stored_uids)) != len(self.stored_uids):
            found.append("a SOP Instance UID was stored twice by the peers")
        return found

    def summary(self) -> str:
        """Human-readable figures (throughput is reported, not asserted)."""
        plan = ", ".join(f"{kind} {count}" for kind, count in self.plan.items())
        ran = max(self.ran_seconds, 1e-9)
        lines = [
            f"DPP load: {sum(self.plan.values())} peers ({plan}), asked {self.duration:g} s, "
            f"ran {self.ran_seconds:.1f} s, driver returned after {self.waited_seconds:.1f} s",
            f"{'kind':<6} {'peers':>5} {'ok':>7} {'failed':>6} {'no rsp':>6} {'ok/s':>7} "
            f"{'mean ms':>8} {'worst ms':>9}",
        ]
        for kind, k in self.kinds.items():
            mean = 1000 * k.ok_seconds / k.ok if k.ok else 0.0
            lines.append(
                f"{kind:<6} {k.peers:>5} {k.ok:>7} {k.failed:>6} {k.unanswered:>6} "
                f"{k.ok / ran:>7.1f} {mean:>8.1f} {1000 * k.worst_seconds:>9.1f}"
            )
        peers = sum(self.plan.values())
        unanswered = sum(k.unanswered for k in self.kinds.values())
        lines.append(
            f"{'all':<6} {peers:>5} {self.ok:>7} {self.failed:>6} {unanswered:>6} "
            f"{self.ok / ran:>7.1f}"
        )
        lines.append(f"new protocols stored: {len(self.stored_uids)}")
        if self.moved_received is not None:
            lines.append(
                f"C-MOVE: {self.moved_completed} sub-operations reported completed, "
                f"{self.moved_received} instances received by the destination"
            )
        worst = ", ".join(f"GET {path} {s:.3f} s" for path, s in self.rest.worst_seconds.items())
        lines.append(
            f"REST watchdog: {self.rest.polls} polls, {self.rest.failed} failed; "
            f"worst latency: {worst or 'none'}"
        )
        if self.rest.associations_served is not None and self.associations_at_start is not None:
            served = self.rest.associations_served - self.associations_at_start
            lines.append(f"associations served by the listener during the run: {served}")
        lines.append(
            f"Orthanc RSS: start {_mb(self.rss_start_kb)}, peak {_mb(self.rss_peak_kb)}, "
            f"end {_mb(self.rss_end_kb)}"
        )
        if self.stalled_after is not None:
            lines.append(f"STALL: no operation succeeded for {self.stalled_after:.0f} s")
        lines.append(f"stuck peers: {len(self.stuck)}")
        lines += [f"  {line}" for line in self.stuck]
        for kind, k in self.kinds.items():
            lines += [f"  {kind} failure: {message}" for message in k.failures]
        lines += [f"  REST failure: {message}" for message in self.rest.failures]
        return "\n".join(lines)


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.0f} MB"


def rss_kb(pid: int | None) -> int | None:
    """Resident memory of process ``pid`` in KiB (VmRSS), None if unknown or gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _server_pid(server: OrthancServer) -> int | None:
    process = getattr(server, "process", None)
    return process.pid if process is not None else None


# -- the watchdog -----------------------------------------------------------------------


class Watchdog(threading.Thread):
    """Polls Orthanc's REST API and memory while the peers run.

    A freeze of the plugin shows first in its own route (``/dpp/status``
    needs the interpreter) and then, if an Orthanc mutex is involved, in
    Orthanc's own ``/system``; polling both tells the two apart. Each request
    has a short timeout, so a frozen server costs a failed poll, never a hang.
    """

    PATHS = ("/system", "/dpp/status")

    def __init__(
        self,
        url: str,
        pid: int | None,
        *,
        interval: float = 0.5,
        timeout: float = 10.0,
        started: float | None = None,
    ) -> None:
        super().__init__(name="load-watchdog", daemon=True)
        self.url = url
        self.pid = pid
        self.interval = interval
        self.timeout = timeout
        self.started = started if started is not None else time.monotonic()
        self.stats = RestStats()
        self.current: tuple[str, float] | None = None  # request in flight, since when
        self._stop_event = threading.Event()

    def poll(self) -> None:
        self.stats.polls += 1
        for path in self.PATHS:
            began = time.monotonic()
            self.current = (path, began)
            try:
                with urllib.request.urlopen(self.url + path, timeout=self.timeout) as answer:
                    body = answer.read()
                if path == "/dpp/status":
                    listener = json.loads(body)["Listener"]
                    self.stats.associations_served = listener.get("AssociationsServed")
            except Exception as exc:  # any failure is a finding, reported with when it happened
                self.stats.failed += 1
                if len(self.stats.failures) < KEPT_FAILURES:
                    at = began - self.started
                    self.stats.failures.append(f"t={at:.1f} s GET {path}: {exc!r}")
                self.stats.worst_seconds[path] = max(
                    self.stats.worst_seconds.get(path, 0.0), time.monotonic() - began
                )
                break  # one failure per poll is enough; do not stack timeouts
            finally:
                self.current = None
            self.stats.worst_seconds[path] = max(
                self.stats.worst_seconds.get(path, 0.0), time.monotonic() - began
            )
        rss = rss_kb(self.pid)
        if rss is not None:
            self.stats.rss_peak_kb = max(self.stats.rss_peak_kb or 0, rss)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll()
            self._stop_event.wait(self.interval)

    def stop(self, wait: float) -> RestStats:
        """Stop polling; the figures so far, a request still in flight counted as failed.

        Waits at most ``wait`` seconds, not the request's whole timeout: the
        driver must return promptly even when Orthanc no longer answers.
        """
        self._stop_event.set()
        self.join(wait)
        stats = copy.deepcopy(self.stats)
        current = self.current
        if self.is_alive() and current is not None:
            path, began = current
            waited = time.monotonic() - began
            stats.failed += 1
            stats.worst_seconds[path] = max(stats.worst_seconds.get(path, 0.0), waited)
            if len(stats.failures) < KEPT_FAILURES:
                at = began - self.started
                stats.failures.append(
                    f"t={at:.1f} s GET {path}: still unanswered after {waited:.1f} s"
                )
        return stats


# -- peers --------------------------------------------------------------------------------


class _Shared:
    """State the peers and the driver share: the stop signal and the last success."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.last_success = time.monotonic()

    def succeeded(self) -> None:
        with self.lock:
            self.last_success = time.monotonic()


class _Peer(threading.Thread):
    """One peer: a loop of one kind of operation until told to stop or out of operations."""

    def __init__(
        self,
        kind: str,
        index: int,
        server: OrthancServer,
        shared: _Shared,
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
                scp_role_for=sorted(DPP_STORAGE_CLASSES),
                handlers=[(evt.EVT_C_STORE, self._on_get_store)],
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


# -- the driver ---------------------------------------------------------------------------


def _find_patterns(known: Sequence[Dataset]) -> list[tuple[str, str]]:
    """(Protocol Name wildcard, a UID it must match) from the known protocols.

    Only ASCII names without wildcard characters: the query is sent in the
    default character repertoire, and the fragment must match literally.
    """
    patterns = []
    for ds in known:
        name = str(ds.get("ProtocolName", ""))
        fragment = name[2:8]
        if len(fragment) >= 4 and fragment.isascii() and not set(fragment) & set("*?\\"):
            patterns.append((f"*{fragment}*", str(ds.SOPInstanceUID)))
    return patterns


class _StolenResponses(logging.Handler):
    """Counts pynetdicom's "Received unexpected C-... service message" warnings here.

    A requester's reactor that takes a response off the queue instead of the
    waiting request logs that: the response did reach the peer, the listener
    is not the one that lost it.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Received unexpected") and message.endswith("service message"):
            self.seen.append(f"{record.threadName}: {message}")


def run_load(
    server: OrthancServer,
    peers: Mapping[str, int],
    known: Sequence[Dataset],
    *,
    duration: float,
    destination: MemoryStorageSCP | None = None,
    max_ops_per_peer: int = 10_000,
    ops_per_association: int = 1,
    timeout: float = NETWORK_TIMEOUT,
    grace: float = 60.0,
    stall_seconds: float = 40.0,
    rest_timeout: float = 10.0,
    poll_interval: float = 0.5,
    store_seed: int = 5_000_000,
) -> LoadResult:
    """Run ``peers`` (kind -> count) against ``server`` for ``duration`` seconds.

    ``known`` are protocols already stored (the targets of find, get and
    move). Peers stop after ``duration`` or ``max_ops_per_peer`` operations;
    the driver waits for them at most until ``duration + grace``, or 5 s
    more once no operation has succeeded for ``stall_seconds`` (a freeze),
    and reports the ones still running as stuck. Never raises for what the
    server does: everything becomes figures and failure messages.
    """
    unknown = set(peers) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown peer kinds: {sorted(unknown)}")
    if peers.get("move") and destination is None:
        raise ValueError("move peers need a destination")
    patterns = _find_patterns(known)
    if (peers.get("find") and not patterns) or (
        (peers.get("get") or peers.get("move")) and not known
    ):
        raise ValueError("find, get and move peers need known protocols (ASCII names for find)")

    pid = _server_pid(server)
    shared = _Shared()
    rss_start = rss_kb(pid)
    received_before = destination.total if destination is not None else 0
    watchdog = Watchdog(server.url, pid, interval=poll_interval, timeout=rest_timeout)
    watchdog.poll()  # baseline, before any peer
    associations_at_start = watchdog.stats.associations_served
    workers = [
        _Peer(
            kind,
            index,
            server,
            shared,
            known=known,
            find_patterns=patterns,
            destination=destination,
            max_ops=max_ops_per_peer,
            ops_per_association=ops_per_association,
            timeout=timeout,
            store_seed=store_seed + (index * max_ops_per_peer if kind == "store" else 0),
        )
        for kind, count in peers.items()
        for index in range(count)
    ]
    stolen = _StolenResponses()
    logging.getLogger("pynetdicom").addHandler(stolen)
    started = time.monotonic()
    watchdog.started = started
    shared.last_success = started
    watchdog.start()
    for worker in workers:
        worker.start()

    end_of_run = started + duration
    deadline = end_of_run + grace
    stopped_at: float | None = None
    stalled_after: float | None = None
    while True:
        now = time.monotonic()
        if not any(worker.is_alive() for worker in workers) or now >= deadline:
            break
        if stopped_at is None and now >= end_of_run:
            shared.stop.set()
            stopped_at = now
        with shared.lock:
            idle = now - shared.last_success
        if stalled_after is None and idle >= stall_seconds:
            stalled_after = idle
            shared.stop.set()
            stopped_at = stopped_at or now
            deadline = min(deadline, now + 5.0)
        time.sleep(0.1)
    shared.stop.set()
    now = time.monotonic()
    stopped_at = stopped_at or now
    stuck = [worker.describe(now) for worker in workers if worker.is_alive()]
    rest = watchdog.stop(2.0)
    rss_end = rss_kb(pid)
    logging.getLogger("pynetdicom").removeHandler(stolen)

    kinds: dict[str, KindStats] = {}
    for kind in peers:
        total = KindStats()
        for worker in workers:
            if worker.kind == kind:
                total.add(worker.stats)
        kinds[kind] = total
    return LoadResult(
        plan=dict(peers),
        duration=duration,
        ran_seconds=stopped_at - started,
        waited_seconds=time.monotonic() - started,
        kinds=kinds,
        stored_uids=[uid for worker in workers for uid in list(worker.stored)],
        moved_completed=sum(worker.moved_completed for worker in workers),
        moved_received=(destination.total - received_before) if destination is not None else None,
        stuck=stuck,
        stalled_after=stalled_after,
        rest=rest,
        rss_start_kb=rss_start,
        rss_end_kb=rss_end,
        associations_at_start=associations_at_start,
        stolen_responses=list(stolen.seen),
    )
