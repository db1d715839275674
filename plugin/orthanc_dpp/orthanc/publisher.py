"""The plugin's metrics, published into Orthanc's metrics registry by a thread."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from types import ModuleType

from orthanc_dpp.metrics import METRICS, Metrics

log = logging.getLogger("orthanc_dpp")

#: Seconds between two publications of the plugin's metrics.
METRICS_INTERVAL = 1.0


class MetricsPublisher:
    """Copies :class:`Metrics` into Orthanc's metrics registry every ``interval`` seconds.

    None of the recorded Python plugins (4.0, 5.0, 7.1) lets a plugin refresh
    its metrics when ``/tools/metrics-prometheus`` is read, so a thread
    publishes them. Every value is published each time, changed or not:
    Orthanc prints the time of the last publication with each value, and a
    Prometheus server stops showing a value whose time no longer moves.
    """

    def __init__(
        self,
        orthanc: ModuleType,
        metrics: Metrics,
        protocols: Callable[[], int],
        interval: float = METRICS_INTERVAL,
    ) -> None:
        self.orthanc = orthanc
        self.metrics = metrics
        self.protocols = protocols
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> None:
        """Every metric into Orthanc's registry, once."""
        kinds = {m.name: getattr(self.orthanc.MetricsType, m.kind.value) for m in METRICS}
        for name, value in self.metrics.snapshot(self.protocols()).items():
            self.orthanc.SetMetricsValue(name, float(value), kinds[name])

    def _run(self) -> None:
        reported = ""  # a lasting failure is logged once, not every second
        while not self._stop.is_set():
            try:
                self.publish()
                reported = ""
            except Exception as exc:
                if repr(exc) != reported:
                    reported = repr(exc)
                    log.error("Publishing the DPP metrics failed: %s", traceback.format_exc())
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dpp-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
