"""A stand-in for the ``orthanc`` module, limited to the real API.

Every attribute it offers must exist in the API recorded from Orthanc's
Python plugin 4.0 (``tests/data/orthanc_python_4.0_api.json``), so code that
works against this fake only calls functions the real plugin has.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from orthanc_dpp.library import OrthancError
from tests.fake_orthanc import FakeOrthancApi

RECORDED_API = json.loads(
    (Path(__file__).parent / "data" / "orthanc_python_4.0_api.json").read_text()
)


class OrthancException(Exception):
    pass


class ChangeType(enum.IntEnum):
    NEW_INSTANCE = 1
    DELETED = 4
    ORTHANC_STARTED = 9
    ORTHANC_STOPPED = 10
    UPDATED_MODALITIES = 17


class ResourceType(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


class ReceivedInstanceAction(enum.IntEnum):
    KEEP_AS_IS = 1
    MODIFY = 2
    DISCARD = 3


class FakeOutput:
    # Method names are Orthanc's own (CamelCase), as in the real RestOutput.
    """Records what a REST callback sent."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body: bytes = b""
        self.headers: dict[str, str] = {}
        self.allowed: str | None = None

    def AnswerBuffer(self, body: bytes, mime: str) -> None:
        self.status, self.body = 200, body
        self.headers["Content-Type"] = mime

    def SendHttpStatus(self, status: int, body: str, size: int) -> None:
        # Python plugin 4.0: body as str plus its size in bytes (bytes fail).
        if not isinstance(body, str) or size != len(body.encode()):
            raise TypeError("Bad types for the arguments (3 arguments expected)")
        self.status, self.body = status, body.encode()

    def SetHttpHeader(self, name: str, value: str) -> None:
        self.headers[name] = value

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.status, self.allowed = 405, allowed

    def json(self) -> Any:
        return json.loads(self.body)


class FakeOrthancModule:
    """Holds registered callbacks and routes REST calls to a FakeOrthancApi."""

    def __init__(self, configuration: dict[str, Any], api: FakeOrthancApi | None = None) -> None:
        self.configuration = configuration
        self.api = api or FakeOrthancApi()
        self.logs: list[tuple[str, str]] = []
        self.change_callback: Any = None
        self.received_callback: Any = None
        self.routes: dict[str, Any] = {}
        self.properties: dict[int, str] = {}
        self.OrthancException = OrthancException
        self.ChangeType = ChangeType
        self.ResourceType = ResourceType
        self.ReceivedInstanceAction = ReceivedInstanceAction

    def __getattribute__(self, name: str) -> Any:
        if name[0].isupper() and name not in RECORDED_API:
            raise AttributeError(f"orthanc.{name} does not exist in Python plugin 4.0")
        return object.__getattribute__(self, name)

    def GetConfiguration(self) -> str:
        return json.dumps(self.configuration)

    def GetConfigurationPath(self) -> str:
        return "/etc/orthanc/orthanc.json"

    def LogInfo(self, message: str) -> None:
        self.logs.append(("info", message))

    def LogWarning(self, message: str) -> None:
        self.logs.append(("warning", message))

    def LogError(self, message: str) -> None:
        self.logs.append(("error", message))

    def log_text(self) -> str:
        return "\n".join(message for _, message in self.logs)

    def GetGlobalProperty(self, number: int, default: str) -> str:
        return self.properties.get(number, default)

    def SetGlobalProperty(self, number: int, value: str) -> None:
        self.properties[number] = value

    def RegisterOnChangeCallback(self, callback: Any) -> None:
        if self.change_callback is not None:  # DESIGN.md fact 12
            raise OrthancException("only one change callback per Python plugin")
        self.change_callback = callback

    def RegisterReceivedInstanceCallback(self, callback: Any) -> None:
        self.received_callback = callback

    def RegisterRestCallback(self, uri: str, callback: Any) -> None:
        self.routes[uri] = callback

    def _rest(self, method: str, uri: str, *args: Any) -> Any:
        try:
            return getattr(self.api, method)(uri, *args)
        except OrthancError as exc:
            raise OrthancException(exc.message) from None

    def RestApiGet(self, uri: str) -> bytes:
        return self._rest("get", uri)

    def RestApiPost(self, uri: str, body: bytes) -> bytes:
        return self._rest("post", uri, body)

    def RestApiDelete(self, uri: str) -> None:
        self._rest("delete", uri)

    def call_route(self, uri: str, method: str = "GET", **request: Any) -> FakeOutput:
        """Call the registered route matching ``uri`` like Orthanc does."""
        import re

        output = FakeOutput()
        for pattern, callback in self.routes.items():
            match = re.fullmatch(pattern, uri)
            if match:
                callback(output, uri, method=method, groups=match.groups(), **request)
                return output
        raise KeyError(uri)
