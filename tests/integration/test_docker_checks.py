"""The Docker image's own checks, run on this stack's Orthanc and Python.

Without Docker (make test-docker runs the image itself), the unstable stack
has the image's Orthanc, Python plugin and Python: the build step that imports the
plugin, the container health check, and the smoke test's DICOM client (as
the modality docker/compose.smoke.yaml declares, with a password file) are
run here against the real thing, on every stack.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.docker_files import (
    DOCKER,
    DOCKERFILE,
    IMAGE_CONFIGURATION,
    SMOKE_COMPOSE,
    image_versions,
    load_healthcheck,
    load_yaml,
)
from tests.orthanc_server import OrthancServer

REPO = Path(__file__).resolve().parents[2]


def test_build_time_import_check_passes_on_this_python() -> None:
    """The Dockerfile's ``RUN python3 -c "..."`` with the image's paths mapped to the checkout."""
    text = DOCKERFILE.read_text().replace("\\\n", "")
    (script,) = re.findall(r'^RUN python3 -c "(.*?)"\s*$', text, re.MULTILINE)
    script = script.replace("/usr/share/orthanc-dpp/plugin", str(REPO / "plugin"))
    script = script.replace("/etc/orthanc/orthanc-dpp.json", str(IMAGE_CONFIGURATION))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_health_check_against_this_orthanc_with_authentication(make_server) -> None:
    orthanc = make_server(
        config={
            "AuthenticationEnabled": True,
            "RegisteredUsers": {"orthanc": "change-me"},
        }
    )
    orthanc.start()
    healthcheck = load_healthcheck()
    configuration = {
        "HttpPort": orthanc.http_port,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"orthanc": "change-me"},
    }
    assert healthcheck.check(configuration, {}) == (
        True,
        f"DPP listener running on port {orthanc.dpp_port}",
    )
    wrong = {"DPP_HEALTHCHECK_USER": "orthanc", "DPP_HEALTHCHECK_PASSWORD": "wrong"}
    healthy, reason = healthcheck.check(configuration, wrong)
    assert not healthy and "401" in reason


def test_unstable_stack_runs_the_image_versions(server: OrthancServer) -> None:
    """On Debian unstable, Orthanc, the plugin and Python are the image's (README says so)."""
    if os.environ.get("DPP_STACK") != "sid":
        assert image_versions()  # the note is readable on every stack
        return
    orthanc, plugin, python = image_versions()
    platform = server.get_json("/dpp/status")["Platform"]
    assert platform["Orthanc"] == orthanc
    assert platform["PythonPlugin"] == plugin
    assert platform["Python"].startswith(python + ".")


def smoke_modalities() -> dict[str, Any]:
    """The DicomModalities that docker/compose.smoke.yaml gives node A."""
    environment = load_yaml(SMOKE_COMPOSE)["services"]["orthanc-a"]["environment"]
    return json.loads(environment["ORTHANC__DICOM_MODALITIES"])


def run_smoke_client(orthanc: OrthancServer, password_file: Path) -> subprocess.CompletedProcess:
    node = f"A=127.0.0.1:{orthanc.http_port}:{orthanc.dpp_port}"
    login = ["--user", "orthanc", "--password-file", str(password_file)]
    return subprocess.run(
        [
            sys.executable,
            str(DOCKER / "smoke_dicom.py"),
            "--node",
            node,
            "--aet",
            orthanc.aet,
            *login,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_smoke_client_passes_as_the_declared_modality(make_server, tmp_path: Path) -> None:
    """What smoke.sh runs against the containers, with only the overlay's declaration."""
    password = tmp_path / "orthanc-password"
    password.write_text("smoke-0123abcd\n")
    orthanc = make_server(
        config={
            "AuthenticationEnabled": True,
            "RegisteredUsers": {"orthanc": "smoke-0123abcd"},
            "DicomModalities": smoke_modalities(),
        },
        declare_test_scu=False,
    )
    orthanc.start()
    result = run_smoke_client(orthanc, password)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: all checks passed" in result.stdout
    assert re.search(r"^smoke: C-STORE \S+ to A: Success$", result.stdout, re.M)
    assert re.search(r"^smoke: C-FIND A by ProtocolName .*: 1 match\(es\)$", result.stdout, re.M)


def test_smoke_client_may_not_store_when_not_declared(make_server, tmp_path: Path) -> None:
    """The same client, its modality renamed: the declaration is what lets it store."""
    password = tmp_path / "orthanc-password"
    password.write_text("smoke-0123abcd\n")
    modalities = smoke_modalities()
    for entry in modalities.values():
        entry["AET"] = "SOMEONE_ELSE"
    orthanc = make_server(
        config={
            "AuthenticationEnabled": True,
            "RegisteredUsers": {"orthanc": "smoke-0123abcd"},
            "DicomModalities": modalities,
        },
        declare_test_scu=False,
    )
    orthanc.start()
    result = run_smoke_client(orthanc, password)
    assert result.returncode == 1
    assert "C-ECHO A" in result.stdout  # echo stays open to everybody
    # 292 = 0x0124 Refused: Not Authorized
    assert "smoke: FAILED: A: C-STORE answered" in result.stderr, result.stderr
    assert re.search(r"Status +US: 292$", result.stderr, re.M), result.stderr
