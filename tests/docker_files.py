"""The Docker files of the repository and how the tests read them.

Shared by the static checks (tests/unit/test_docker.py) and the ones that
run the image's pieces on this host (tests/integration/test_docker_checks.py).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
SMOKE_COMPOSE = DOCKER / "compose.smoke.yaml"
ENTRYPOINT = DOCKER / "orthanc-dpp-entrypoint.sh"
LOCK = DOCKER / "requirements.lock"
# The unprivileged user of the Orthanc team's image (orthanc, uid and gid 999):
# it owns the folders the image's entrypoint writes to.
ORTHANC_UID = 999
IMAGE_CONFIGURATION = DOCKER / "orthanc-dpp.json"
BASE_IMAGE = "orthancteam/orthanc"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, arguments = whole.partition(" ")
        result.append((name.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def arguments_of(name: str) -> list[str]:
    return [arguments for instruction, arguments in instructions() if instruction == name]


def split_image(reference: str) -> tuple[str, str, str]:
    """(name, tag, digest) of ``name:tag@sha256:...``; digest may be empty."""
    named, _, digest = reference.partition("@")
    name, _, tag = named.partition(":")
    return name, tag, digest


def base_image() -> str:
    """The default of the Dockerfile's base argument, which its only FROM uses.

    The argument lets make test-docker build this file unchanged on a
    stand-in; its default is what everybody else builds on.
    """
    assert arguments_of("FROM") == ["${ORTHANC_BASE_IMAGE}"]
    names = [name for name, _ in instructions()]
    defaults = [a for a in arguments_of("ARG") if a.startswith("ORTHANC_BASE_IMAGE=")]
    assert len(defaults) == 1 and names.index("ARG") < names.index("FROM"), defaults
    return defaults[0].partition("=")[2]


def image_versions() -> tuple[str, str, str]:
    """(Orthanc, Python plugin, Python) of the base image, from the Dockerfile's note."""
    base = base_image()
    tag = split_image(base)[1]
    found = re.search(
        rf"^# {re.escape(tag)} = Orthanc ([\d.]+), Python plugin ([\d.]+),.*?python3 \((3\.\d+)\)",
        DOCKERFILE.read_text(),
        re.MULTILINE | re.DOTALL,
    )
    assert found, f"the Dockerfile must say what tag {tag} holds"
    return found.group(1), found.group(2), found.group(3)


def load_yaml(path: Path) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install PyYAML)")
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dpp_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
