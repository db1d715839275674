#!/usr/bin/python3
"""Build and test the Docker image for real, on stand-ins for its two base images.

No registry can be reached from our machines, so neither the Orthanc team's
image nor the official postgres image can be pulled. This builds a stand-in
for each from Debian packages, with tools/stacks.py's code: a minimal Debian
root in the project's cache (``.stacks/image-SUITE``), imported into Docker,
then given the base image's documented contract by a small Dockerfile in
``tools/standins/``. Then it builds ``docker/Dockerfile`` unchanged except
its ``ORTHANC_BASE_IMAGE`` argument, and runs ``tests/docker`` against
containers of the compose set-up of docs/docker.md.

Usage (as root, which debootstrap, chroot and dockerd need)::

    tools/docker_images.py build              # stand-ins + compose/buildx plugins (cached)
    tools/docker_images.py test [-- PYTEST ARGS]

``test`` starts a Docker engine if none answers (no bridge, no iptables:
every container on the host network) and stops it afterwards if it started
it. Standard library only, like tools/stacks.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stacks

REPO = stacks.REPO
STANDINS = REPO / "tools" / "standins"
#: Project-local Docker client settings: the compose and buildx CLI plugins.
DOCKER_CONFIG = stacks.CACHE / "docker-config"
DOCKERD_LOG = stacks.CACHE / "dockerd.log"
ENGINE_WITHIN_SECONDS = 60.0
#: Debian's compose v2 and buildx, unpacked from the unstable root's
#: packages (Debian 12 has neither): the `docker compose` of docs/docker.md.
CLI_PLUGINS = {"docker-compose": "2.40.3-3", "docker-buildx": "0.29.1+ds1-4"}


@dataclass(frozen=True)
class StandIn:
    """One stand-in base image and the Debian root it is made from."""

    name: str  # folder in tools/standins
    image: str  # what it is tagged, never the real image's name
    suite: str
    #: Debian package -> upstream version (or its leading part) the root must
    #: hold: what the stand-in claims to be. The mirror serves only the newest
    #: Debian revision of each, so the exact versions found are recorded in
    #: the image (label org.orthanc-dpp.standin.packages) and printed.
    pins: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()  # installed, not pinned

    def root(self) -> stacks.Root:
        return stacks.Root(
            self.suite, name=f"image-{self.suite}", packages=[*self.pins, *self.extra]
        )


ORTHANC = StandIn(
    "orthanc",
    "dpp-standin/orthanc:1.13.0-debian-sid",
    "sid",
    {"orthanc": "1.13.0", "orthanc-python": "7.1", "orthanc-postgresql": "5.0", "python3": "3.14"},
    ("python3-pip", "ca-certificates"),
)
POSTGRES = StandIn(
    "postgres",
    "dpp-standin/postgres:17-debian-trixie",
    "trixie",
    {"postgresql-17": "17"},
    ("ca-certificates",),
)
STAND_INS = (ORTHANC, POSTGRES)
#: Left out of an imported root: mount points' contents, apt's downloads and
#: lists (the official images have none either).
IMPORT_EXCLUDES = [
    "--exclude=./proc/*",
    "--exclude=./dev/*",
    "--exclude=./sys/*",
    "--exclude=./var/cache/apt/*",
    "--exclude=./var/lib/apt/lists/*",
]


def say(message: str) -> None:
    print(f"[docker] {message}", flush=True)


def docker_env() -> dict[str, str]:
    """The environment for docker commands: our CLI plugins, BuildKit."""
    env = dict(os.environ)
    env["DOCKER_CONFIG"] = str(DOCKER_CONFIG)
    env["DOCKER_BUILDKIT"] = "1"
    return env


def docker(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        check=check,
        text=True,
        env=docker_env(),
        capture_output=quiet,
    )


def engine_answers() -> bool:
    return (
        subprocess.run(
            ["docker", "info"], env=docker_env(), capture_output=True, check=False
        ).returncode
        == 0
    )


@contextlib.contextmanager
def engine() -> Iterator[None]:
    """A Docker engine for the duration; started (and then stopped) only if none answers.

    Ours has no bridge and leaves iptables alone: containers run on the host
    network only, never with an address of a private range.
    """
    if engine_answers():
        say("using the Docker engine that is running")
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise SystemExit("docker: dockerd is not installed (make test-docker installs docker.io)")
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    say(f"starting dockerd (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        process = subprocess.Popen(
            [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ENGINE_WITHIN_SECONDS
        while not engine_answers():
            if process.poll() is not None:
                raise SystemExit(
                    f"docker: dockerd exited with {process.returncode}; see {DOCKERD_LOG}"
                )
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"docker: dockerd not answering within {ENGINE_WITHIN_SECONDS:.0f} s"
                )
            time.sleep(0.5)
        yield
    finally:
        say("stopping the dockerd it started")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the stand-ins ----------------------------------------------------------------


def upstream(version: str) -> str:
    """``1.13.0+dfsg-1+b1`` -> ``1.13.0`` (epoch, Debian revision and repack suffix dropped)."""
    return version.partition(":")[2 if ":" in version else 0].split("-")[0].split("+")[0]


def check_pins(root: stacks.Root, stand_in: StandIn) -> str:
    """The root's versions of the pinned packages; stop unless each is the pinned one."""
    found = {}
    for package in stand_in.pins:
        found[package] = subprocess.run(
            ["chroot", str(root.path), "dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    wrong = [
        f"{package} {found[package] or 'missing'} (pinned {pin})"
        for package, pin in stand_in.pins.items()
        if not (upstream(found[package]) + ".").startswith(pin + ".")
    ]
    if wrong:
        raise SystemExit(
            f"docker: the {root.name} root does not hold the pinned versions: {'; '.join(wrong)}. "
            f"Update the pins in tools/docker_images.py (and what they claim), or delete "
            f"{root.path} and {root.ready} to make it again."
        )
    versions = " ".join(f"{package}={version}" for package, version in found.items())
    say(f"{stand_in.image}: {versions}")
    return versions


def copy_host_files(root: stacks.Root) -> None:
    """The host's CA bundle and pip settings, as tools/stacks.py gives its roots.

    pip inside ``docker build`` reaches PyPI the way this machine does.
    """
    for name in stacks.HOST_FILES:
        source = Path(name)
        target = root.path / name.lstrip("/")
        if source.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def tree_digest(*paths: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def image_label(image: str, label: str) -> str | None:
    result = docker(
        "image",
        "inspect",
        "--format",
        f'{{{{index .Config.Labels "{label}"}}}}',
        image,
        check=False,
        quiet=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def build_stand_in(stand_in: StandIn) -> None:
    """Root (cached in .stacks), imported once per root, stand-in built once per source."""
    root = stand_in.root()
    with stacks.locked(root.name):
        root.ensure()
        versions = check_pins(root, stand_in)
        stamp = root.ready.read_text().strip()
        key = hashlib.sha256(json.dumps([stamp, IMPORT_EXCLUDES]).encode()).hexdigest()[:12]
        rootfs = f"dpp-standin-rootfs/{root.name}:{key}"
        if docker("image", "inspect", rootfs, check=False, quiet=True).returncode != 0:
            say(f"importing the {root.name} root as {rootfs}")
            copy_host_files(root)
            tar = subprocess.Popen(
                ["tar", "-C", str(root.path), "--numeric-owner", *IMPORT_EXCLUDES, "-c", "."],
                stdout=subprocess.PIPE,
            )
            subprocess.run(
                ["docker", "import", "-", rootfs], stdin=tar.stdout, env=docker_env(), check=True
            )
            if tar.wait() != 0:
                raise SystemExit(f"docker: tar of {root.path} failed")
            # Imports of earlier roots of the same name only take room now.
            repository = rootfs.partition(":")[0]
            tags = docker("image", "ls", repository, "--format", "{{.Tag}}", quiet=True).stdout
            for old in set(tags.split()) - {key}:
                docker("image", "rm", f"{repository}:{old}", check=False, quiet=True)
    source = tree_digest(STANDINS / stand_in.name, extra=rootfs)
    if image_label(stand_in.image, "org.orthanc-dpp.standin.source") == source:
        say(f"{stand_in.image} is up to date")
        return
    say(f"building {stand_in.image}")
    docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"ROOTFS={rootfs}",
        "--label",
        f"org.orthanc-dpp.standin.source={source}",
        "--label",
        f"org.orthanc-dpp.standin.packages={versions}",
        "--tag",
        stand_in.image,
        str(STANDINS / stand_in.name),
    )


def install_cli_plugins() -> None:
    """compose and buildx from Debian unstable's packages into DOCKER_CONFIG/cli-plugins."""
    plugins = DOCKER_CONFIG / "cli-plugins"
    stamp = plugins / ".versions"
    wanted = json.dumps(CLI_PLUGINS, sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    root = ORTHANC.root()
    with stacks.locked(root.name):
        root.ensure()
        downloads = root.path / "tmp" / "cli-plugins"
        shutil.rmtree(downloads, ignore_errors=True)
        downloads.mkdir(parents=True)
        with root.mounted():
            listed = " ".join(f"{name}={version}" for name, version in CLI_PLUGINS.items())
            root.chroot(f"cd /tmp/cli-plugins && apt-get download -q {listed}")
        unpacked = downloads / "unpacked"
        for deb in downloads.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        plugins.mkdir(parents=True, exist_ok=True)
        for name in CLI_PLUGINS:
            found = next(unpacked.rglob(f"cli-plugins/{name}"), None)
            if found is None:
                raise SystemExit(f"docker: the {name} package holds no CLI plugin")
            shutil.copy2(found, plugins / name)
        shutil.rmtree(downloads)
    stamp.write_text(wanted)
    say(f"CLI plugins in {plugins}: {', '.join(CLI_PLUGINS)}")


def build() -> None:
    install_cli_plugins()
    for stand_in in STAND_INS:
        build_stand_in(stand_in)


# -- the tests ----------------------------------------------------------------------


def test(pytest_args: list[str]) -> int:
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit("docker: no .venv: run make setup-test first")
    started = time.monotonic()
    with engine():
        build()
        say(f"stand-ins ready after {time.monotonic() - started:.0f} s")
        env = docker_env()
        env["DPP_DOCKER_ORTHANC_BASE"] = ORTHANC.image
        env["DPP_DOCKER_POSTGRES_IMAGE"] = POSTGRES.image
        code = subprocess.run(
            [str(python), "-m", "pytest", "tests/docker", *pytest_args],
            cwd=REPO,
            env=env,
            check=False,
        ).returncode
    say(f"make test-docker took {time.monotonic() - started:.0f} s in all")
    return code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["build", "test"])
    if "--" in argv:
        at = argv.index("--")
        args, rest = parser.parse_args(argv[:at]), argv[at + 1 :]
    else:
        args, rest = parser.parse_args(argv), []
    if os.geteuid() != 0:
        raise SystemExit("docker: debootstrap, chroot and dockerd need root")
    if args.action == "build":
        with engine():
            build()
        return 0
    return test(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
