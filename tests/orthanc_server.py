"""Start and stop a real Orthanc (Debian's package) with the DPP plugin.

Used by the integration tests and the benchmarks: each server gets free
loopback ports and its own data folder, and its log is kept for assertions.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ORTHANC = "/usr/sbin/Orthanc"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
# The plugin under test; DPP_ENTRY_SCRIPT points the tests at another copy
# (for example an installed one) without editing them.
ENTRY_SCRIPT = Path(os.environ.get("DPP_ENTRY_SCRIPT", REPO / "plugin" / "dpp_plugin.py"))


#: The calling AE title of the tests' DICOM peers (tests.peers).
TEST_SCU = "TEST_SCU"


#: ``LOW-HIGH``: the ports :func:`free_port` hands out, set by tools/stacks.py so
#: that stacks tested side by side never pick the same port (they share loopback).
PORTS_VARIABLE = "DPP_TEST_PORTS"
_next_port = itertools.count()


def port_range(value: str | None) -> range | None:
    """The range ``DPP_TEST_PORTS`` names (``LOW-HIGH``, inclusive); None when unset."""
    if not value:
        return None
    low, _, high = value.partition("-")
    ports = range(int(low), int(high) + 1)
    if not ports or ports.start < 1024 or ports.stop > 65536:
        raise ValueError(f"{PORTS_VARIABLE} must be LOW-HIGH within 1024-65535, got {value!r}")
    return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel's pick (bind to port 0) may hand the same port to two test
    runs on one machine within the moment before Orthanc binds it; with
    ``DPP_TEST_PORTS`` set, ports come in turn from that run's own range
    instead, each once until the range wraps around.
    """
    ports = port_range(os.environ.get(PORTS_VARIABLE))
    if ports is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(len(ports)):
        port = ports[next(_next_port) % len(ports)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port left in {PORTS_VARIABLE}={os.environ[PORTS_VARIABLE]}")


class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class OrthancServer:
    """One Orthanc process; ``start``/``stop`` may be repeated on the same folder."""

    def __init__(
        self,
        folder: Path,
        *,
        dpp: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        aet: str = "ORTHANC_DPP",
        declare_test_scu: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.dpp_port = free_port()
        self.aet = aet
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.folder / "orthanc.log"
        section: dict[str, Any] = {
            "AETitle": aet,
            "Port": self.dpp_port,
            "BindAddress": "127.0.0.1",
            "ChangePollInterval": 0.2,
        }
        section.update(dpp or {})
        self.config: dict[str, Any] = {
            "Name": f"dpp-test-{self.http_port}",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [PYTHON_PLUGIN],
            "PythonScript": str(ENTRY_SCRIPT),
            # As README recommends; plugins before 4.3 ignore it.
            "Python": {"AllowThreads": True},
            "DefinedProcedureProtocol": section,
        }
        self.config.update(config or {})
        if declare_test_scu:
            # The tests' usual peer. Storing protocols is for declared
            # modalities only; tests of strangers use other AE titles.
            modalities = dict(self.config.get("DicomModalities", {}))
            declared = {
                str(m[0] if isinstance(m, list) else m.get("AET")) for m in modalities.values()
            }
            if TEST_SCU not in declared:
                modalities["test-scu"] = [TEST_SCU, "127.0.0.1", 104]
            self.config["DicomModalities"] = modalities
        self.config_path = self.folder / "orthanc.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # -- process ---------------------------------------------------------------

    def start(self, *, wait_listener: bool = True, timeout: float = 60.0) -> None:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [ORTHANC, "--verbose", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start-up:\n{self.log()[-4000:]}")
            try:
                status = self.get_json("/dpp/status")
            except (OSError, HttpError):
                time.sleep(0.1)
                continue
            listening = status["Listener"]["State"] in ("running", "failed")
            if not wait_listener or (listening and status["Index"]["Ready"]):
                return
            time.sleep(0.1)
        raise TimeoutError(f"Orthanc did not become ready:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30.0, *, check: bool = True) -> int:
        """Stop Orthanc and wait for it to exit (its database stays locked until then).

        With ``check`` (the default), anything but a clean exit 0 within
        ``timeout`` fails the test, with the end of Orthanc's log: a crash at
        stop or a hang is a defect wherever it shows up. Returns the exit code
        (-9 when it had to be killed).
        """
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        if check and code != 0:
            raise AssertionError(
                f"Orthanc did not exit cleanly (exit code {code}):\n{self.log()[-3000:]}"
            )
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.1)
        return False

    # -- HTTP ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        users = self.config.get("RegisteredUsers")
        if self.config.get("AuthenticationEnabled") and users:
            user, password = next(iter(users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            raise HttpError(exc.code, exc.read()) from None

    def get(self, path: str) -> bytes:
        return self.request("GET", path)[2]

    def status_of(self, method: str, path: str) -> int:
        """The HTTP status of a request, error or not."""
        try:
            return self.request(method, path)[0]
        except HttpError as exc:
            return exc.status

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def plugin_metrics(self) -> dict[str, float]:
        """The plugin's metrics (``orthanc_dpp_*``) as Orthanc's Prometheus page prints them.

        Each line must be ``name value timestamp-in-ms``; they are published
        once a second, so a count may lag the traffic that moved it.
        """
        values = {}
        for line in self.get("/tools/metrics-prometheus").decode().splitlines():
            match = re.match(r"^(\w+) (\S+) (\d+)$", line)
            assert match, f"not a Prometheus sample line: {line!r}"
            if match[1].startswith("orthanc_dpp_"):
                values[match[1]] = float(match[2])
        return values

    def post(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        answer = self.request("POST", path, body, {"Content-Type": content_type})[2]
        return json.loads(answer) if answer else None

    def delete(self, path: str) -> Any:
        answer = self.request("DELETE", path)[2]
        return json.loads(answer) if answer else None

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def orthanc_available() -> bool:
    return os.path.exists(ORTHANC) and os.path.exists(PYTHON_PLUGIN)
