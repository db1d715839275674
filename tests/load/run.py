"""The load's driver: :func:`run_load` starts the peers and the watchdog, and stops them in time."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from pydicom import Dataset

from tests.load.peers import KINDS, NETWORK_TIMEOUT, MemoryStorageSCP, Peer, Shared
from tests.load.report import KindStats, LoadResult, Watchdog, rss_kb, server_pid
from tests.orthanc_server import OrthancServer


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

    pid = server_pid(server)
    shared = Shared()
    rss_start = rss_kb(pid)
    received_before = destination.total if destination is not None else 0
    watchdog = Watchdog(server.url, pid, interval=poll_interval, timeout=rest_timeout)
    watchdog.poll()  # baseline, before any peer
    associations_at_start = watchdog.stats.associations_served
    workers = [
        Peer(
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
