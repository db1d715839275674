"""The image built for real and README's compose set-up running, for ``tests/docker``.

``make test-docker`` (tools/docker_images.py test) provides a Docker engine
without a bridge, the compose plugin, and stand-ins for the two base images,
named in ``DPP_DOCKER_ORTHANC_BASE`` and ``DPP_DOCKER_POSTGRES_IMAGE``.
Without them this folder is skipped: plain ``make test`` needs no Docker.

The compose project is docker/compose.yaml with the scale-out profile (two
Orthanc nodes on one PostgreSQL, passwords from secret files), plus
``compose.host.yaml`` (host networking, free loopback ports) and
``compose.modalities.yaml`` (the test client declared as a modality).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.orthanc_server import free_port
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
IMAGE = "orthanc-dpp:local"  # what docker/compose.yaml names the image
PROJECT = "orthanc-dpp-test"
AET = "ORTHANC_DPP"  # docker/orthanc-dpp.json
CLIENT_AET = "DPP_TEST"  # compose.modalities.yaml
HEALTHY_WITHIN = 300.0
#: Lines for the end of the run: image size, build and start-up times.
REPORT: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("DPP_DOCKER_ORTHANC_BASE") and shutil.which("docker"):
        return
    skip = pytest.mark.skip(reason="needs make test-docker (Docker engine and stand-in images)")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("Docker image")
        for line in REPORT:
            terminalreporter.write_line(line)


def run(
    *command: str, env: dict[str, str] | None = None, check: bool = True, cwd: Path | None = None
) -> str:
    """Run a command; its standard output. On failure the output is in the assertion."""
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    if check:
        assert result.returncode == 0, (
            f"{' '.join(command)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def inspect(container: str, template: str) -> str:
    return run("docker", "inspect", "--format", template, container).strip()


def container_logs(container: str) -> str:
    """Standard output and error of a container (Orthanc logs to standard error)."""
    result = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout + result.stderr


def health(container: str) -> str:
    return inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}")


def health_output(container: str) -> str:
    """What the image's HEALTHCHECK printed last."""
    log = json.loads(inspect(container, "{{json .State.Health.Log}}") or "[]")
    return str(log[-1]["Output"]).strip() if log else ""


@dataclass(frozen=True)
class Node:
    """One Orthanc container as the tests reach it (host network, loopback)."""

    service: str
    http_port: int
    dpp_port: int
    aet: str = AET


class Stack:
    """The compose project: its environment, commands and nodes."""

    def __init__(self, workdir: Path) -> None:
        folder = workdir / "secrets"
        folder.mkdir(mode=0o700)
        # 0444 files in a 0700 folder, as README says: uid 999 reads them.
        for name in ("orthanc-password", "postgres-password"):
            (folder / name).write_text(f"test-{secrets.token_hex(16)}\n")
            (folder / name).chmod(0o444)
        self.password_file = folder / "orthanc-password"
        self.password = self.password_file.read_text().rstrip("\n")
        ports = {
            name: str(free_port())
            for name in (
                "ORTHANC_A_HTTP_PORT",
                "ORTHANC_A_DICOM_PORT",
                "ORTHANC_A_DPP_PORT",
                "ORTHANC_B_HTTP_PORT",
                "ORTHANC_B_DICOM_PORT",
                "ORTHANC_B_DPP_PORT",
                "DPP_TEST_POSTGRES_PORT",
                "DPP_TEST_MOVE_PORT",
            )
        }
        self.env = {
            **os.environ,
            **ports,
            "ORTHANC_PASSWORD_FILE": str(self.password_file),
            "POSTGRES_PASSWORD_FILE": str(folder / "postgres-password"),
            "ORTHANC_BASE_IMAGE": os.environ["DPP_DOCKER_ORTHANC_BASE"],
            "POSTGRES_IMAGE": os.environ["DPP_DOCKER_POSTGRES_IMAGE"],
            "DPP_UNKNOWN_CALLERS": "Orthanc",
        }
        self.move_port = int(ports["DPP_TEST_MOVE_PORT"])
        self.nodes = {
            "A": Node(
                "orthanc-a", int(ports["ORTHANC_A_HTTP_PORT"]), int(ports["ORTHANC_A_DPP_PORT"])
            ),
            "B": Node(
                "orthanc-b", int(ports["ORTHANC_B_HTTP_PORT"]), int(ports["ORTHANC_B_DPP_PORT"])
            ),
        }

    def compose(self, *args: str, check: bool = True) -> str:
        return run(
            "docker",
            "compose",
            "--project-name",
            PROJECT,
            "--file",
            str(REPO / "docker" / "compose.yaml"),
            "--file",
            str(HERE / "compose.host.yaml"),
            "--file",
            str(HERE / "compose.modalities.yaml"),
            "--profile",
            "scale-out",
            *args,
            env=self.env,
            check=check,
        )

    def container(self, service: str) -> str:
        container = self.compose("ps", "--all", "--quiet", service).strip()
        assert container, f"{service} has no container"
        return container

    def wait_healthy(self, *services: str) -> None:
        """Until Docker reports each service healthy through the image's HEALTHCHECK."""
        for service in services or ("orthanc-a", "orthanc-b"):
            container = self.container(service)
            healthy = eventually(lambda c=container: health(c) == "healthy", HEALTHY_WITHIN, step=1)
            assert healthy, (
                f"{service} not healthy within {HEALTHY_WITHIN:.0f} s: {health(container)}, "
                f"{health_output(container)}\n{self.compose('logs', '--tail', '40', service)}"
            )

    def wait_listening(self, node: Node) -> None:
        """Until /dpp/status says the listener runs (what a user waits for)."""

        def running() -> bool:
            try:
                status = json.loads(http(node, "/dpp/status", self.password)[1])
            except (OSError, ValueError):
                return False
            return bool(status.get("Listener", {}).get("State") == "running")

        assert eventually(running, HEALTHY_WITHIN, step=0.5), (
            f"{node.service}: listener not running"
        )


def http(
    node: Node, path: str, password: str | None, *, user: str = "orthanc"
) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET, with Basic credentials if a password is given."""
    request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}")
    if password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture(scope="session")
def image() -> str:
    """docker/Dockerfile built unchanged, on the stand-in base (the build argument)."""
    started = time.monotonic()
    run(
        "docker",
        "build",
        "--network",
        "host",
        "--build-arg",
        f"ORTHANC_BASE_IMAGE={os.environ['DPP_DOCKER_ORTHANC_BASE']}",
        "--file",
        str(REPO / "docker" / "Dockerfile"),
        "--tag",
        IMAGE,
        str(REPO),
    )
    seconds = time.monotonic() - started
    size = int(inspect(IMAGE, "{{.Size}}"))
    base = int(inspect(os.environ["DPP_DOCKER_ORTHANC_BASE"], "{{.Size}}"))
    REPORT.append(
        f"{IMAGE}: {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over the stand-in base "
        f"{os.environ['DPP_DOCKER_ORTHANC_BASE']}), built in {seconds:.0f} s"
    )
    return IMAGE


@pytest.fixture(scope="session")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """README's compose set-up with two nodes, running and healthy; removed afterwards."""
    stack = Stack(tmp_path_factory.mktemp("compose"))
    stack.compose("down", "--volumes", "--remove-orphans", check=False)  # a killed run's leftovers
    started = time.monotonic()
    stack.compose("up", "--detach")
    try:
        for node in stack.nodes.values():
            stack.wait_listening(node)
        listening = time.monotonic() - started
        stack.wait_healthy()
        REPORT.append(
            f"start-up (compose up, PostgreSQL first): both listeners running after "
            f"{listening:.0f} s, both reported healthy after {time.monotonic() - started:.0f} s "
            "(the HEALTHCHECK's first check comes 30 s after the start)"
        )
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", check=False)
