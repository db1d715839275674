"""The Docker commands of README and docs/docker.md, run as written, in a copy of the checkout.

Only what this machine needs is added, each change named in ``adapted``:
the stand-in base (the build argument ``ORTHANC_BASE_IMAGE``, and
``POSTGRES_IMAGE``), host networking on free loopback ports instead of
``-p`` (the engine here has no bridge), and a home folder of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_examples import docker_documentation
from tests.docker.conftest import HERE, Node, health, http, run
from tests.orthanc_server import free_port
from tests.waiting import eventually
from tools.stacks import copy_checkout

WITHIN = 300.0


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", docker_documentation(), re.M | re.S)


def commands(block: str) -> list[str]:
    """One string per command: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    result = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            result.append(line.split(" #")[0].strip())
    return result


class Readme:
    """A copy of the checkout, its own HOME, ports and environment."""

    def __init__(self, tmp: Path) -> None:
        self.checkout = tmp / "checkout"
        copy_checkout(self.checkout, (".stacks/", ".venv/"))
        self.home = tmp / "home"
        self.home.mkdir()
        self.http_port, self.dpp_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "ORTHANC_BASE_IMAGE": os.environ["DPP_DOCKER_ORTHANC_BASE"],
            "POSTGRES_IMAGE": os.environ["DPP_DOCKER_POSTGRES_IMAGE"],
            # Not the project name compose.yaml sets: a real deployment may run here.
            "COMPOSE_PROJECT_NAME": "orthanc-dpp-readme",
            "DPP_TEST_POSTGRES_PORT": str(free_port()),
            "ORTHANC_A_HTTP_PORT": str(self.http_port),
            "ORTHANC_A_DICOM_PORT": str(free_port()),
            "ORTHANC_A_DPP_PORT": str(self.dpp_port),
        }
        for name in ("HTTP", "DICOM", "DPP"):  # compose.host.yaml needs node B's too
            self.env[f"ORTHANC_B_{name}_PORT"] = str(free_port())
        #: ``docker run`` options instead of ``-p``: host network, loopback, free ports.
        self.loopback = (
            f"--network host -e ORTHANC__HTTP_PORT={self.http_port} "
            "-e 'ORTHANC__HTTP_BIND_ADDRESSES=[\"127.0.0.1\"]' "
            "-e ORTHANC__DICOM_SERVER_ENABLED=false "
            f"-e ORTHANC__DEFINED_PROCEDURE_PROTOCOL__PORT={self.dpp_port} "
            "-e ORTHANC__DEFINED_PROCEDURE_PROTOCOL__BIND_ADDRESS=127.0.0.1"
        )
        self.adapted: list[str] = []

    def adapt(self, command: str) -> str:
        """The command with this machine's changes (recorded in ``adapted``)."""
        original = command
        if command.startswith("docker build "):
            base = self.env["ORTHANC_BASE_IMAGE"]
            command = command.replace(
                "docker build ",
                f"docker build --network host --build-arg ORTHANC_BASE_IMAGE={base} ",
                1,
            )
        if command.startswith("docker run "):
            command = re.sub(r"(\s-p \S+)+", " " + self.loopback, command, count=1)
            assert " -p " not in command, command
        if command.startswith("docker compose "):
            command = command.replace(
                "-f docker/compose.yaml", f"-f docker/compose.yaml -f {HERE}/compose.host.yaml"
            )
        command = command.replace("localhost:8042", f"localhost:{self.http_port}")
        command = command.replace("localhost 11112", f"localhost {self.dpp_port}")
        if command != original:
            self.adapted.append(f"{original}\n  -> {command}")
        return command

    def sh(self, command: str) -> str:
        return run("bash", "-c", f"set -euo pipefail; {command}", env=self.env, cwd=self.checkout)


@pytest.fixture
def readme(tmp_path: Path) -> Iterator[Readme]:
    readme = Readme(tmp_path)
    yield readme
    print("\n".join(readme.adapted))


def wait_running(readme: Readme) -> None:
    node = Node("readme", readme.http_port, readme.dpp_port)
    password = (readme.home / "orthanc-dpp-secrets" / "orthanc-password").read_text().strip()

    def running() -> bool:
        try:
            status = json.loads(http(node, "/dpp/status", password)[1])
        except (OSError, ValueError):
            return False
        return bool(status.get("Listener", {}).get("State") == "running")

    assert eventually(running, WITHIN, 0.5), "the README's container never ran its listener"


def test_readme_docker_run_commands(readme: Readme, image: str) -> None:
    """Build, secrets, docker run, curl and echoscu of README, in order."""
    first = blocks("sh")[0]
    remove_readme_container()  # a killed run's leftovers
    try:
        for command in commands(first):
            if command.startswith(("curl ", "echoscu ")):
                wait_running(readme)
            output = readme.sh(readme.adapt(command))
            if command.startswith("curl "):
                assert json.loads(output)["Listener"]["State"] == "running", output
        assert any(c.startswith("docker run ") for c in commands(first))
        assert eventually(lambda: health("orthanc-dpp") == "healthy", WITHIN, 1)
    finally:
        remove_readme_container()


def remove_readme_container() -> None:
    """The container and volume README's docker run makes."""
    run("docker", "rm", "--force", "orthanc-dpp", check=False)
    run("docker", "volume", "rm", "--force", "orthanc-dpp-db", check=False)


def test_readme_compose_commands(readme: Readme, image: str) -> None:
    """The secret files, docker/.env, compose up --build and ps of README."""
    secrets = commands(blocks("sh")[0])
    compose_block = blocks("sh")[1]
    compose = ["docker", "compose", "-f", "docker/compose.yaml", "-f", f"{HERE}/compose.host.yaml"]
    # A killed run's leftovers (the secret files are not written yet: any file will do).
    leftovers = {
        **readme.env,
        "ORTHANC_PASSWORD_FILE": "/dev/null",
        "POSTGRES_PASSWORD_FILE": "/dev/null",
    }
    run(*compose, "down", "--volumes", env=leftovers, cwd=readme.checkout, check=False)
    try:
        for command in secrets:
            if not command.startswith(("docker ", "curl ", "echoscu ")):
                readme.sh(command)
        for command in commands(compose_block):
            readme.sh(readme.adapt(command))
        assert (readme.checkout / "docker" / ".env").exists()

        def healthy() -> bool:
            container = run(
                *compose, "ps", "--quiet", "orthanc-a", env=readme.env, cwd=readme.checkout
            )
            return bool(container.strip()) and health(container.strip()) == "healthy"

        assert eventually(healthy, WITHIN, 2), run(
            *compose, "logs", "--tail", "40", env=readme.env, cwd=readme.checkout, check=False
        )
        wait_running(readme)
    finally:
        run(*compose, "down", "--volumes", env=readme.env, cwd=readme.checkout, check=False)


def test_readme_dockerfile_of_your_own(readme: Readme, image: str, tmp_path: Path) -> None:
    """README's four-line Dockerfile, on the stand-in base, serves the plugin."""
    (dockerfile,) = blocks("dockerfile")
    lines = dockerfile.splitlines()
    assert lines[0] == "FROM orthancteam/orthanc:26.8.1"
    lines[0] = f"FROM {readme.env['ORTHANC_BASE_IMAGE']}"
    (readme.checkout / "Dockerfile.readme").write_text("\n".join(lines) + "\n")
    tag = "orthanc-dpp-readme:local"
    run(
        "docker", "build", "--network", "host", "-f", "Dockerfile.readme", "-t", tag, ".",
        cwd=readme.checkout,
    )  # fmt: skip
    name = "orthanc-dpp-readme-own"
    (readme.home / "orthanc-dpp-secrets").mkdir()
    (readme.home / "orthanc-dpp-secrets" / "orthanc-password").write_text("readme-own\n")
    run("docker", "rm", "--force", name, check=False)
    try:
        readme.sh(
            f"docker run -d --name {name} -e ORTHANC_PASSWORD=readme-own {readme.loopback} {tag}"
        )
        wait_running(readme)
    finally:
        run("docker", "rm", "--force", name, check=False)
        run("docker", "image", "rm", tag, check=False)
