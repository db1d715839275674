"""Helper processes (baseline SCP, storage destination) that talk back in JSON lines.

Each peer runs in its own process so that it has its own interpreter and GIL,
as Orthanc has: a peer in the benchmark's own process would share a GIL
with the client and slow both. A peer prints one JSON object per line on
stdout (``{"event": "ready", ...}`` first); this class reads them on a thread.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from bench import REPO


class Child:
    """One ``python -m <module> ...`` process, stopped by :meth:`stop` (or ``with``)."""

    def __init__(self, module: str, *args: str) -> None:
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                print(f"  [{self.process.args[2]}] {line.rstrip()}", flush=True)

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next line with this ``event``; other lines are dropped. TimeoutError if none."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.process.args[2]}: no {event!r} within {timeout:.0f} s")
            if self.process.poll() is not None and self.lines.empty():
                raise RuntimeError(f"{self.process.args[2]} exited ({self.process.returncode})")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line.get("event") == event:
                return line

    def drain(self) -> list[dict[str, Any]]:
        """Lines received so far, removed from the queue."""
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_stopped(ae: Any, port: int, handlers: list[Any]) -> None:
    """In a child process: serve ``ae`` on 127.0.0.1:``port``, say "ready", run until killed."""
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process (VmRSS in /proc/PID/status), in KiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
