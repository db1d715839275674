"""What the running Orthanc and its Python plugin offer, found out from the plugin itself.

Python plugins 4.0 to 7.1 differ in ways that matter here; all of them are
handled by :class:`RunningPlugin`, never by a version number.
docs/orthanc-versions.md explains each difference and how it was measured.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from types import ModuleType
from typing import Any

import pydicom
import pynetdicom

log = logging.getLogger("orthanc_dpp")


class RunningPlugin:
    """What the running Python plugin offers, found out from the plugin itself.

    - ``releases_interpreter_lock``: whether calls into Orthanc release
      Python's interpreter lock (plugin 4.3+ with ``"Python": {"AllowThreads":
      true}``). Measured once at load by :func:`probe_interpreter_lock`.
    - How ``RestOutput.SendHttpStatus`` takes its body: ``(status, bytes)``
      from plugin 4.3, ``(status, str, size)`` before. A call of the wrong
      shape raises TypeError while parsing its arguments, before anything is
      sent, so the first error answer tries the newer form and remembers
      which one the plugin accepted.
    - Versions of Orthanc and of the Python plugin, read from Orthanc's REST
      API once Orthanc has started (they are not in the ``orthanc`` module).
    """

    BYTES = "status, body (bytes)"
    STR_AND_SIZE = "status, body (str), size"

    def __init__(self, orthanc: ModuleType, *, probe: bool = True) -> None:
        self.orthanc = orthanc
        self.releases_interpreter_lock = probe_interpreter_lock(orthanc) if probe else False
        self.http_status_form: str | None = None
        self.orthanc_version: str | None = None
        self.plugin_version: str | None = None

    def send_http_status(self, output: Any, status: int, body: bytes) -> None:
        """``output.SendHttpStatus`` in whichever form this plugin accepts."""
        if self.http_status_form != self.STR_AND_SIZE:
            try:
                output.SendHttpStatus(status, body)
                self.http_status_form = self.BYTES
                return
            except TypeError:
                if self.http_status_form == self.BYTES:
                    raise
        text = body.decode("utf-8", "replace")
        output.SendHttpStatus(status, text, len(text.encode()))
        self.http_status_form = self.STR_AND_SIZE

    def read_versions(self) -> None:
        """Orthanc's and the Python plugin's versions (worker threads only)."""
        try:
            system = json.loads(self.orthanc.RestApiGet("/system"))
            plugin = json.loads(self.orthanc.RestApiGet("/plugins/python"))
        except Exception as exc:
            log.warning("Cannot read Orthanc's version: %s", exc)
            return
        self.orthanc_version = str(system.get("Version", "")) or None
        self.plugin_version = str(plugin.get("Version", "")) or None

    def describe(self) -> dict[str, Any]:
        return {
            "Orthanc": self.orthanc_version,
            "PythonPlugin": self.plugin_version,
            "Python": sys.version.split()[0],
            "pydicom": pydicom.__version__,
            "pynetdicom": pynetdicom.__version__,
            "InterpreterLockReleasedInCalls": self.releases_interpreter_lock,
            "SendHttpStatus": self.http_status_form or "not used yet",
        }


def probe_interpreter_lock(orthanc: ModuleType) -> bool:
    """True if a call into Orthanc lets other Python threads run meanwhile.

    One call that keeps Orthanc busy for about 0.1 s (compressing 4 MiB of
    random bytes) while a second thread counts. If the plugin keeps the
    interpreter lock during the call, the counter cannot run at all then,
    except for a few milliseconds at either end when Python switches threads;
    if the plugin releases it, the counter runs through the whole call. Only
    counts well inside the call decide, so the answer does not depend on
    timing luck.
    """
    data = os.urandom(4 << 20)
    ticks: list[float] = []
    started, stop = threading.Event(), threading.Event()

    def count() -> None:
        started.set()
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    counter = threading.Thread(target=count, name="dpp-lock-probe", daemon=True)
    counter.start()
    started.wait()
    try:
        begin = time.perf_counter()
        orthanc.BufferCompression(data, orthanc.CompressionType.ZLIB, 0)
        end = time.perf_counter()
    except Exception as exc:
        log.warning("Cannot tell whether calls into Orthanc release the GIL: %s", exc)
        return False
    finally:
        stop.set()
        counter.join()
    margin = 0.02
    return end - begin > 3 * margin and any(begin + margin < t < end - margin for t in ticks)
