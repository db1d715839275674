"""The Docker image's own checks, run on this stack's Orthanc and Python.

No Docker engine runs on our machines, but the unstable stack has the
image's Orthanc, Python plugin and Python: the build step that imports the
plugin, and the container health check, are run here against the real
thing, on every stack.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.orthanc_server import OrthancServer
from tests.unit.test_docker import DOCKERFILE, IMAGE_CONFIGURATION, image_versions, load_healthcheck

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
