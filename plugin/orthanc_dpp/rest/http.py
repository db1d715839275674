"""HTTP messages of the ``/dpp`` routes: :class:`Request`, :class:`Response` and their helpers.

The adapter turns Orthanc's request into a :class:`Request` and a
:class:`Response` back into Orthanc's output calls; every handler module
(:mod:`orthanc_dpp.rest.protocols`, :mod:`orthanc_dpp.rest.archives`) speaks these, so
they live here rather than in one of them. Every error is a JSON body with
``Error`` saying what went wrong.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    get: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    allowed: str | None = None  # for 405: the methods this route serves


def json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload, indent=2).encode())


def error(status: int, message: str, **details: Any) -> Response:
    return json_response(status, {"Error": message, "HttpStatus": status, **details})


def method_not_allowed(allowed: str) -> Response:
    return Response(405, b"", allowed=allowed)


class BadParameter(ValueError):
    """A query parameter that is not what its route takes; the message names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"query parameter '{parameter}' {message}")
        self.parameter = parameter


def query_bool(request: Request, name: str) -> bool | None:
    """A true/false query parameter, None when absent; BadParameter naming it otherwise."""
    value = request.get.get(name)
    if value is None or value == "":
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadParameter(name, f"must be true or false, got {value[:32]!r}")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high], ``default`` when absent."""
    raw = request.get.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(name, f"must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise BadParameter(name, f"must be between {low} and {high}, got {value}")
    return value


def basic_user(headers: dict[str, str]) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header, None without one.

    Orthanc checks the credentials (``RegisteredUsers``) before a plugin's
    route runs and passes the header on, so the name is the authenticated
    user's; the password is not looked at.
    """
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user = decoded.partition(":")[0].strip()
    return user or None
