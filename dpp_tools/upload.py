"""Upload DICOM files to an Orthanc with the DPP plugin through ``POST /dpp/protocols``.

One request per file, so every file gets its own answer (stored, already
stored, or refused with the plugin's reason and HTTP status) and a large
library never meets ``MaximumUploadSize`` in one body. Plain ``urllib``:
the route takes the file as ``application/dicom``.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ServerUnreachable(Exception):
    """No HTTP answer at all (connection refused, name unknown, timeout)."""


@dataclass(frozen=True)
class Uploaded:
    """One file's answer from ``POST /dpp/protocols``."""

    path: Path
    http_status: int
    stored: bool
    sop_instance_uid: str = ""
    status: str = ""  # Success or AlreadyStored
    error: str = ""


def _authorization(user: str | None, password: str | None) -> dict[str, str]:
    if user is None:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def _answer(path: Path, status: int, body: bytes) -> Uploaded:
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    files = payload.get("Files") if isinstance(payload, dict) else None
    if isinstance(files, list) and files and isinstance(files[0], dict):
        result = files[0]
        return Uploaded(
            path,
            status,
            bool(result.get("Stored")),
            str(result.get("SOPInstanceUID", "")),
            str(result.get("Status", "")),
            str(result.get("Error", "")),
        )
    if isinstance(payload, dict) and "Error" in payload:  # the route's own errors
        return Uploaded(path, status, False, error=str(payload["Error"]))
    hint = " (check --user and --password)" if status == 401 else ""
    text = body[:200].decode("utf-8", "replace").strip()
    return Uploaded(path, status, False, error=f"unexpected answer{hint}: {text!r}")


def upload(
    url: str,
    path: Path,
    *,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 60.0,
) -> Uploaded:
    """POST one file to ``{url}/dpp/protocols``; ServerUnreachable if nobody answers."""
    request = urllib.request.Request(
        url.rstrip("/") + "/dpp/protocols",
        data=path.read_bytes(),
        method="POST",
        headers={"Content-Type": "application/dicom", **_authorization(user, password)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _answer(path, response.status, response.read())
    except urllib.error.HTTPError as exc:
        return _answer(path, exc.code, exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnreachable(f"no answer from {url}: {reason}") from exc
