"""What the DPP listener and REST routes did, counted for Orthanc's metrics.

The front ends call :class:`Metrics` as things happen; the adapter copies
:meth:`Metrics.snapshot` into Orthanc's metrics registry, which serves them
at ``/tools/metrics-prometheus``. Orthanc's metrics are plain name/value
pairs without labels, so each counter has its own name (:data:`METRICS`).

Counting is a few integer operations under one lock, cheap enough for every
DIMSE message; a disabled instance (Orthanc's ``MetricsEnabled`` false)
counts nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pynetdicom.status import code_to_category

PREFIX = "orthanc_dpp_"


class Kind(Enum):
    """How Orthanc keeps a value (its ``MetricsType``)."""

    DEFAULT = "DEFAULT"  # the last value published
    TIMER = "TIMER"  # the largest value published within 10 seconds


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    meaning: str


#: The DIMSE services counted, and the outcomes each can have.
SERVICES: Final = {
    "c_echo": ("success", "refused"),
    "c_store": ("success", "failure", "refused"),
    "c_find": ("success", "cancel", "failure", "refused"),
    "c_get": ("success", "warning", "failure", "cancel", "refused"),
    "c_move": ("success", "warning", "failure", "cancel", "refused"),
}

_OUTCOME_MEANING: Final = {
    "success": "answered Success",
    "warning": "answered with a warning status (some sub-operations failed)",
    "failure": "answered with a failure status (invalid request, not stored, limit reached)",
    "cancel": "cancelled by the requester, or its association ended before the final response",
    "refused": "refused because the access rules do not allow the caller this service",
}


#: What the listener's guard turned away before any service was asked
#: (``dicom.admission``, ``dicom.connections``): kind -> (name, meaning).
REFUSALS: Final = {
    "rejected": (
        "association_requests_rejected_total",
        "A-ASSOCIATE-RQs rejected permanently: the caller has no right at all",
    ),
    "busy": (
        "association_requests_busy_total",
        "A-ASSOCIATE-RQs rejected transiently: MaximumAssociations or "
        "UnknownCallersMaximumAssociations reached",
    ),
    "connection": (
        "connections_refused_total",
        "Connections refused before their A-ASSOCIATE-RQ: MaximumConnectionsPerAddress "
        "reached, or MaximumAssociations connections already waiting",
    ),
    "evicted": (
        "connections_evicted_total",
        "Connections that waited over 2 s without an association, dropped to make room",
    ),
    "aborted": (
        "association_aborts_total",
        "Associations the plugin aborted: a PDU, command or message beyond the limits, "
        "or something pynetdicom could not process",
    ),
}


def _build() -> tuple[Metric, ...]:
    metrics = [
        Metric("associations_open", Kind.DEFAULT, "DICOM associations established and open now"),
        Metric(
            "associations_served_total",
            Kind.DEFAULT,
            "DICOM associations established since Orthanc started",
        ),
    ]
    for service, outcomes in SERVICES.items():
        label = service.upper().replace("_", "-")
        metrics += [
            Metric(f"{service}_{outcome}_total", Kind.DEFAULT, f"{label} requests {meaning}")
            for outcome, meaning in _OUTCOME_MEANING.items()
            if outcome in outcomes
        ]
    metrics += [Metric(name, Kind.DEFAULT, meaning) for name, meaning in REFUSALS.values()]
    metrics += [
        Metric(
            f"suboperations_{outcome}_total",
            Kind.DEFAULT,
            f"C-STORE sub-operations of C-GET and C-MOVE that {meaning}",
        )
        for outcome, meaning in (
            ("completed", "completed"),
            ("failed", "failed (also instances requested but not stored here)"),
            ("warning", "completed with a warning"),
        )
    ] + [
        Metric(
            "c_find_seconds_count",
            Kind.DEFAULT,
            "C-FIND requests timed: every one, from its arrival to its final response",
        ),
        Metric("c_find_seconds_sum", Kind.DEFAULT, "Seconds the timed C-FIND requests took"),
        Metric("c_find_seconds_max", Kind.DEFAULT, "Seconds of the longest C-FIND so far"),
        Metric(
            "c_find_recent_max_seconds",
            Kind.TIMER,
            "Seconds of the longest C-FIND of about the last 10 seconds (0 if none)",
        ),
        Metric(
            "c_store_seconds_count",
            Kind.DEFAULT,
            "C-STORE requests Orthanc stored, timed from the received request to its response",
        ),
        Metric("c_store_seconds_sum", Kind.DEFAULT, "Seconds the timed C-STORE requests took"),
        Metric(
            "c_store_orthanc_seconds_sum",
            Kind.DEFAULT,
            "Of those seconds, the time Orthanc itself took to store the instances",
        ),
        Metric("rest_files_stored_total", Kind.DEFAULT, "Files stored by `POST /dpp/protocols`"),
        Metric(
            "rest_files_refused_total",
            Kind.DEFAULT,
            "Files `POST /dpp/protocols` refused (an upload refused whole counts one)",
        ),
        Metric(
            "protocols", Kind.DEFAULT, "Protocols in the index (`Protocols.Total` of `/dpp/status`)"
        ),
    ]
    return tuple(Metric(PREFIX + m.name, m.kind, m.meaning) for m in metrics)


#: Every metric published, in the order of docs/operations.md, "Metrics".
METRICS: tuple[Metric, ...] = _build()


def outcome_of(code: int) -> str:
    """The outcome a final DIMSE status counts as (never "refused": callers say so)."""
    category = code_to_category(code)
    if category == "Success":
        return "success"
    if category == "Warning":
        return "warning"
    if category == "Cancel":
        return "cancel"
    return "failure"


class Metrics:
    """Thread-safe counters of the plugin's activity (see :data:`METRICS`)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._values: dict[str, float] = {m.name: 0.0 for m in METRICS}
        self._recent_find_max = 0.0

    def _add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[PREFIX + name] += amount

    def association_opened(self) -> None:
        if self.enabled:
            with self._lock:
                self._values[PREFIX + "associations_open"] += 1
                self._values[PREFIX + "associations_served_total"] += 1

    def association_closed(self) -> None:
        if self.enabled:
            self._add("associations_open", -1)

    def refusal(self, kind: str) -> None:
        """The listener's guard turned a caller away (``kind``: a key of :data:`REFUSALS`)."""
        if kind not in REFUSALS:
            raise ValueError(f"no refusal of kind {kind!r}")
        if self.enabled:
            self._add(REFUSALS[kind][0])

    def dimse(self, service: str, outcome: str) -> None:
        """One request of ``service`` (a key of :data:`SERVICES`) ended with ``outcome``."""
        if outcome not in SERVICES[service]:
            raise ValueError(f"{service} has no outcome {outcome!r}")
        if self.enabled:
            self._add(f"{service}_{outcome}_total")

    def dimse_status(self, service: str, code: int) -> None:
        """One request of ``service`` ended with the final status ``code``."""
        self.dimse(service, outcome_of(code))

    def find_timed(self, seconds: float) -> None:
        """One C-FIND took ``seconds`` from its handler's start to its end."""
        if not self.enabled:
            return
        with self._lock:
            values = self._values
            values[PREFIX + "c_find_seconds_count"] += 1
            values[PREFIX + "c_find_seconds_sum"] += seconds
            key = PREFIX + "c_find_seconds_max"
            values[key] = max(values[key], seconds)
            self._recent_find_max = max(self._recent_find_max, seconds)

    def store_timed(self, seconds: float, orthanc_seconds: float) -> None:
        """One C-STORE stored: ``seconds`` in all, ``orthanc_seconds`` of them Orthanc's own.

        Together they tell an administrator whether ingest waits for the
        plugin or for Orthanc's storage (its disk and database).
        """
        if not self.enabled:
            return
        with self._lock:
            values = self._values
            values[PREFIX + "c_store_seconds_count"] += 1
            values[PREFIX + "c_store_seconds_sum"] += seconds
            values[PREFIX + "c_store_orthanc_seconds_sum"] += orthanc_seconds

    def suboperations(self, completed: int, failed: int, warning: int) -> None:
        if self.enabled:
            with self._lock:
                self._values[PREFIX + "suboperations_completed_total"] += completed
                self._values[PREFIX + "suboperations_failed_total"] += failed
                self._values[PREFIX + "suboperations_warning_total"] += warning

    def rest_file(self, stored: bool) -> None:
        if self.enabled:
            self._add("rest_files_stored_total" if stored else "rest_files_refused_total")

    def snapshot(self, protocols: int) -> dict[str, float]:
        """Every value, ``protocols`` in the index included; the recent C-FIND maximum restarts.

        Called once per publication: the recent maximum is the longest
        C-FIND since the previous call, which Orthanc's TIMER type then
        keeps as the largest over 10 seconds.
        """
        with self._lock:
            values = dict(self._values)
            values[PREFIX + "c_find_recent_max_seconds"] = self._recent_find_max
            self._recent_find_max = 0.0
        values[PREFIX + "protocols"] = float(protocols)
        return values
