"""A stand-in for the ``orthanc`` module, limited to what a real plugin version offers.

Each instance follows one recording of a real Python plugin
(``tests/data/orthanc_python_<version>_api.json``, made by
``tools/record_orthanc_api.py`` inside that plugin):

- only names the real module has exist; enumerations carry the real values;
- every call the plugin makes is checked against the argument shapes the
  real function accepted or refused when it was probed: a refused shape
  raises the real TypeError, and a shape that was never probed raises too,
  so the fake cannot accept a call that the real plugin of that version
  would refuse;
- ``/system`` and ``/plugins/python`` answer the recorded versions.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orthanc_dpp.orthanc import adapter
from orthanc_dpp.storage.library import OrthancError
from tests.fake_orthanc import FakeOrthancApi
from tests.waiting import eventually

DATA = Path(__file__).parent / "data"
#: The recorded plugin versions, oldest first.
VERSIONS = sorted(
    (p.name.split("_")[2] for p in DATA.glob("orthanc_python_*_api.json")),
    key=lambda v: tuple(int(part) for part in v.split(".")),
)


def recording(version: str) -> dict[str, Any]:
    return json.loads((DATA / f"orthanc_python_{version}_api.json").read_text())


class OrthancException(Exception):
    pass


def _kind(value: Any) -> str:
    """The probe kind of one argument (see tools/record_orthanc_api.py)."""
    if isinstance(value, enum.Enum):
        return type(value).__name__
    if isinstance(value, bool):
        return "int"
    return type(value).__name__


class CallShapes:
    """Which argument shapes each probed function accepted in the recording."""

    def __init__(self, probes: dict[str, str], version: str) -> None:
        self.probes = probes
        self.version = version

    def check(self, target: str, args: tuple[Any, ...]) -> None:
        key = f"{target}({', '.join(_kind(a) for a in args)})"
        outcome = self.probes.get(key)
        if outcome is None:
            raise TypeError(
                f"{key} was never probed on Python plugin {self.version}: add it to PROBES "
                "in tools/record_orthanc_api.py and record again"
            )
        if outcome.startswith("refused"):
            raise TypeError(outcome.split(": ", 1)[-1])


class FakeOutput:
    # Method names are Orthanc's own (CamelCase), as in the real RestOutput.
    """Records what a REST callback sent, refusing what the real RestOutput refuses."""

    def __init__(self, shapes: CallShapes) -> None:
        self.shapes = shapes
        self.status: int | None = None
        self.body: bytes = b""
        self.headers: dict[str, str] = {}
        self.allowed: str | None = None

    def AnswerBuffer(self, body: bytes, mime: str) -> None:
        self.shapes.check("RestOutput.AnswerBuffer", (body, mime))
        self.status, self.body = 200, body
        self.headers["Content-Type"] = mime

    def SendHttpStatus(self, status: int, body: Any, *size: int) -> None:
        self.shapes.check("RestOutput.SendHttpStatus", (status, body, *size))
        self.status, self.body = status, body.encode() if isinstance(body, str) else body

    def SetHttpHeader(self, name: str, value: str) -> None:
        self.shapes.check("RestOutput.SetHttpHeader", (name, value))
        self.headers[name] = value

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.shapes.check("RestOutput.SendMethodNotAllowed", (allowed,))
        self.status, self.allowed = 405, allowed

    def json(self) -> Any:
        return json.loads(self.body)


class FakeOrthancModule:
    """Holds registered callbacks and routes REST calls to a FakeOrthancApi.

    ``releases_interpreter_lock`` says how ``BufferCompression`` behaves, the
    call the adapter uses to find out whether the plugin releases Python's
    interpreter lock during calls into Orthanc (``"Python": {"AllowThreads":
    true}`` on plugin 4.3+).
    """

    def __init__(
        self,
        configuration: dict[str, Any],
        api: FakeOrthancApi | None = None,
        *,
        version: str = VERSIONS[0],
        releases_interpreter_lock: bool = False,
    ) -> None:
        self.version = version
        self.recorded = recording(version)
        self.shapes = CallShapes(self.recorded["probes"], version)
        self.configuration = configuration
        self.api = api or FakeOrthancApi()
        self.releases_interpreter_lock = releases_interpreter_lock
        self.logs: list[tuple[str, str]] = []
        self.change_callback: Any = None
        self.received_callback: Any = None
        #: What the hook answered for each POST /instances that reached it.
        self.received_actions: list[Any] = []
        self.routes: dict[str, Any] = {}
        self.explorer_javascript: list[str] = []
        self.properties: dict[int, str] = {}
        self.metrics: dict[str, tuple[float, Any]] = {}  # name -> (value, MetricsType)
        self.OrthancException = OrthancException
        for name, item in self.recorded["surface"].items():
            if item["kind"] == "enum":
                setattr(self, name, enum.IntEnum(name, item["values"]))

    def __getattribute__(self, name: str) -> Any:
        surface = object.__getattribute__(self, "recorded")["surface"]
        if name[0].isupper() and name not in surface:
            version = object.__getattribute__(self, "version")
            raise AttributeError(f"orthanc.{name} does not exist in Python plugin {version}")
        return object.__getattribute__(self, name)

    def _check(self, target: str, *args: Any) -> None:
        self.shapes.check(target, args)

    def GetConfiguration(self) -> str:
        self._check("GetConfiguration")
        return json.dumps(self.configuration)

    def GetConfigurationPath(self) -> str:
        self._check("GetConfigurationPath")
        return "/etc/orthanc/orthanc.json"

    def LogInfo(self, message: str) -> None:
        self._check("LogInfo", message)
        self.logs.append(("info", message))

    def LogWarning(self, message: str) -> None:
        self._check("LogWarning", message)
        self.logs.append(("warning", message))

    def LogError(self, message: str) -> None:
        self._check("LogError", message)
        self.logs.append(("error", message))

    def log_text(self) -> str:
        return "\n".join(message for _, message in self.logs)

    def GetGlobalProperty(self, number: int, default: str) -> str:
        self._check("GetGlobalProperty", number, default)
        return self.properties.get(number, default)

    def SetGlobalProperty(self, number: int, value: str) -> None:
        self._check("SetGlobalProperty", number, value)
        self.properties[number] = value

    def SetMetricsValue(self, name: str, value: float, kind: Any) -> None:
        self._check("SetMetricsValue", name, value, kind)
        self.metrics[name] = (value, kind)

    def BufferCompression(self, data: bytes, kind: Any, uncompress: int) -> bytes:
        self._check("BufferCompression", data, kind, uncompress)
        if self.releases_interpreter_lock:
            time.sleep(0.1)  # other threads run meanwhile
        else:
            # Hold the interpreter lock for 0.1 s as a C call that keeps it
            # does: pure Python, with thread switching pushed out of reach.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(10)
            try:
                end = time.perf_counter() + 0.1
                while time.perf_counter() < end:
                    pass
            finally:
                sys.setswitchinterval(interval)
        return b""

    def RegisterOnChangeCallback(self, callback: Any) -> None:
        if self.change_callback is not None:  # only one per Python plugin
            raise OrthancException("only one change callback per Python plugin")
        self.change_callback = callback

    def RegisterReceivedInstanceCallback(self, callback: Any) -> None:
        self.received_callback = callback

    def RegisterRestCallback(self, uri: str, callback: Any) -> None:
        self.routes[uri] = callback

    def ExtendOrthancExplorer(self, javascript: str) -> None:
        self._check("ExtendOrthancExplorer", javascript)
        self.explorer_javascript.append(javascript)

    def _rest(self, method: str, uri: str, *args: Any) -> Any:
        try:
            return getattr(self.api, method)(uri, *args)
        except OrthancError as exc:
            if exc.code is None:
                raise OrthancException(exc.message) from None
            raise OrthancException(exc.code, exc.description) from None

    def RestApiGet(self, uri: str) -> bytes:
        self._check("RestApiGet", uri)
        if uri == "/system":
            return json.dumps(self.recorded["system"]).encode()
        if uri == "/plugins/python":
            return json.dumps(self.recorded["plugin"]).encode()
        return self._rest("get", uri)

    def RestApiPost(self, uri: str, body: bytes) -> bytes:
        self._check("RestApiPost", uri, body)
        if uri == "/instances" and self.received_callback is not None:
            # Orthanc runs the received-instance hook on the storing thread.
            action, replaced = self.received_callback(body, None)
            self.received_actions.append(action)
            if action == self.ReceivedInstanceAction.MODIFY:
                body = replaced
        return self._rest("post", uri, body)

    def RestApiPut(self, uri: str, body: bytes) -> None:
        self._check("RestApiPut", uri, body)
        self._rest("put", uri, body)

    def RestApiDelete(self, uri: str) -> None:
        self._check("RestApiDelete", uri)
        self._rest("delete", uri)

    def call_route(self, uri: str, method: str = "GET", **request: Any) -> FakeOutput:
        """Call the registered route matching ``uri`` like Orthanc does."""
        output = FakeOutput(self.shapes)
        # Orthanc matches the percent-decoded URI's bytes (``uri`` may carry
        # undecodable bytes as surrogate escapes); the Python plugin then
        # hands the callback str groups.
        raw = uri.encode("utf-8", "surrogateescape")
        for pattern, callback in self.routes.items():
            match = re.fullmatch(pattern.encode(), raw)
            if match:
                groups = tuple(g.decode() for g in match.groups())
                callback(output, uri, method=method, groups=groups, **request)
                return output
        raise KeyError(uri)


@contextlib.contextmanager
def started_plugin(orthanc: FakeOrthancModule) -> Iterator[adapter.Plugin]:
    """The plugin installed into ``orthanc`` and started as Orthanc starts it; stopped after.

    It yields once the listener runs and the index has loaded: stores are
    refused until then.
    """
    plugin = adapter.install(orthanc)
    orthanc.change_callback(orthanc.ChangeType.ORTHANC_STARTED, orthanc.ResourceType.PATIENT, "")
    try:
        app = plugin.app
        assert app is not None, "the configuration was refused"
        assert eventually(lambda: app.listener.status.state == "running" and app.feed.ready)
        yield plugin
    finally:
        orthanc.change_callback(
            orthanc.ChangeType.ORTHANC_STOPPED, orthanc.ResourceType.PATIENT, ""
        )
