"""The load's figures: counts per kind, the REST watchdog, the run's result (:mod:`tests.load`)."""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from tests.orthanc_server import OrthancServer

#: Failure messages kept per kind (the counts are complete).
KEPT_FAILURES = 5


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


def server_pid(server: OrthancServer) -> int | None:
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
