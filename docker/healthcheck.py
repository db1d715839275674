#!/usr/bin/env python3
"""Container health check: is the DPP plugin's listener running?

Healthy means ``GET /dpp/status`` answers 200 with ``Listener.State`` equal
to ``"running"``. Orthanc being up is not enough: the plugin can fail to
load, or its listener can fail to bind, while Orthanc keeps serving.

The Orthanc team's image writes the merged configuration to
``/tmp/orthanc.json`` at start-up; the HTTP port, TLS and credentials are
read from there, because the image enables authentication by default and
Orthanc then wants credentials even from inside the container. The first
``RegisteredUsers`` entry is used unless ``DPP_HEALTHCHECK_USER`` (and
``DPP_HEALTHCHECK_PASSWORD``) name another. Standard library only: this runs
with the image's own python3.

Exit status 0 = healthy, 1 = not; one line on standard output says why.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

CONFIGURATION = "/tmp/orthanc.json"
TIMEOUT_SECONDS = 5.0


def read_configuration(path: str) -> dict[str, Any]:
    """The generated configuration; empty if unreadable (defaults then apply)."""
    try:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def credentials(configuration: dict[str, Any], env: dict[str, str]) -> tuple[str, str] | None:
    """User and password to send, or None when there is none to send."""
    users = configuration.get("RegisteredUsers") or {}
    if not isinstance(users, dict):
        users = {}
    user = env.get("DPP_HEALTHCHECK_USER")
    if user:
        return user, env.get("DPP_HEALTHCHECK_PASSWORD", str(users.get(user, "")))
    if configuration.get("AuthenticationEnabled") is False or not users:
        return None
    user, password = next(iter(users.items()))
    return str(user), str(password)


def status_url(configuration: dict[str, Any]) -> str:
    scheme = "https" if configuration.get("SslEnabled") is True else "http"
    port = configuration.get("HttpPort", 8042)
    return f"{scheme}://127.0.0.1:{port}/dpp/status"


def check(configuration: dict[str, Any], env: dict[str, str]) -> tuple[bool, str]:
    """(healthy, reason) for the Orthanc this configuration describes."""
    url = status_url(configuration)
    request = urllib.request.Request(url)
    login = credentials(configuration, env)
    if login is not None:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    context = None
    if url.startswith("https:"):
        # Loopback to ourselves: the certificate names the public host, not 127.0.0.1.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as answer:
            status = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        hint = " (credentials refused or missing)" if exc.code == 401 else ""
        return False, f"{url} answered HTTP {exc.code}{hint}"
    except (OSError, ValueError) as exc:
        return False, f"{url} unreachable or not JSON: {exc}"
    listener = status.get("Listener", {}) if isinstance(status, dict) else {}
    state = listener.get("State") if isinstance(listener, dict) else None
    if state != "running":
        error = listener.get("Error") if isinstance(listener, dict) else None
        return False, f"DPP listener is {state!r}" + (f": {error}" if error else "")
    return True, f"DPP listener running on port {listener.get('Port')}"


def main() -> int:
    path = os.environ.get("DPP_HEALTHCHECK_CONFIGURATION", CONFIGURATION)
    healthy, reason = check(read_configuration(path), dict(os.environ))
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
