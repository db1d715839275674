#!/usr/bin/python3
"""Run the test suite on newer Orthanc stacks, in Debian roots made with debootstrap.

Users run Orthanc 1.12 (Debian 13, "trixie") and 1.13 (Debian unstable,
"sid", the same Orthanc, Python plugin and Python as our Docker image). No
Docker engine runs on our machines, so each stack is a minimal Debian root
in a git-ignored cache folder (``.stacks/SUITE``), made once with
``debootstrap`` and reused. The tests run inside it with ``chroot``: same
loopback as the host, the root's own Orthanc, Python plugin, Python,
PostgreSQL and DCMTK, and a virtual environment made with the root's
``/usr/bin/python3`` from this checkout's pinned requirements.

Usage (as root, which debootstrap, mount and chroot need)::

    tools/stacks.py test trixie sid [-- PYTEST ARGS]   # make/refresh roots, run the suite
                                                       # (the stacks side by side)
    tools/stacks.py versions trixie                    # what a stack holds
    tools/stacks.py shell sid                          # a shell inside a root
    tools/stacks.py bench trixie sid [-- BENCH ARGS]   # python -m bench inside, results here
    tools/stacks.py run sid -- COMMAND                 # one command in the project, inside
    tools/stacks.py remove trixie                      # unmount and delete a root

Several stacks are tested side by side (``--one-by-one`` runs them in
turn): the suite mostly waits on Orthanc, DICOM peers and browsers, so two
runs share two cores well. Each line of their output is prefixed with the
stack's name, and each stack's tests take their ports from a range of their
own (``TEST_PORTS``, read by ``tests/orthanc_server.free_port``): they share
the host's loopback, and two runs asking the kernel for a free port could
be handed the same one.

Standard library only: it runs with the host's ``/usr/bin/python3`` before
any virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
REPO = SELF.parent.parent
CACHE = Path(os.environ.get("DPP_STACKS_DIR", REPO / ".stacks"))
#: Where the checkout is copied inside a root (its venv lives there too).
PROJECT = "/opt/orthanc-dpp"

SUITES = {
    "trixie": "Debian 13: Orthanc 1.12, Python plugin 5, Python 3.13",
    "sid": "Debian unstable: Orthanc 1.13, Python plugin 7, Python 3.14 (the Docker image's)",
}
PACKAGES = [
    "orthanc",
    "orthanc-python",
    "orthanc-postgresql",
    "postgresql",
    "dcmtk",
    "python3-venv",
    "python3-pip",
    "ca-certificates",
    "procps",
    "shellcheck",
    "openssl",
    "curl",
]
#: Installed with apt once the root exists: debootstrap's own installer
#: leaves chromium's desktop dependencies (dconf, GTK) unconfigured and fails.
LATER_PACKAGES = ["chromium"]
#: Host files a root needs for pip and apt to reach the registries.
HOST_FILES = ["/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"]
#: The ports each stack's tests take (``DPP_TEST_PORTS``): disjoint, and below the
#: kernel's ephemeral range (32768 and up) that the host's run and outgoing
#: connections draw from.
TEST_PORTS = {"trixie": "20000-25999", "sid": "26000-31999"}
#: Folders of the checkout never copied into a root.
SKIP = (".venv/", ".stacks/", "data/", ".git/")


def copy_checkout(target: Path, skip: tuple[str, ...]) -> None:
    """Copy the checkout's files (tracked and new, as in the work tree) into ``target``,
    but those under the folders ``skip`` names: what a fresh clone plus the
    uncommitted work would hold. tests/docker/test_readme uses it too."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if name.startswith(skip) or not source.is_file():
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def say(message: str) -> None:
    print(f"[stacks] {message}", flush=True)


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def debian_mirror() -> str:
    """The host's Debian mirror (the ``URIs:`` line of its sources), read at run time."""
    for path in (
        Path("/etc/apt/sources.list.d/debian.sources"),
        *Path("/etc/apt/sources.list.d").glob("*.sources"),
    ):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    lists = Path("/etc/apt/sources.list")
    if lists.exists():
        for line in lists.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if p.startswith("http"))
    raise SystemExit("stacks: no Debian mirror found in /etc/apt/sources.list(.d)")


class Root:
    """One Debian root: made on demand, mounted only while something runs inside."""

    def __init__(
        self, suite: str, *, name: str | None = None, packages: list[str] | None = None
    ) -> None:
        """The test root of ``suite``, or with ``name`` and ``packages`` another root of it.

        tools/docker_images.py makes its image roots this way: same suites,
        same mirror and settings, only the packages it names.
        """
        if suite not in SUITES:
            raise SystemExit(f"stacks: unknown suite {suite!r}; known: {', '.join(SUITES)}")
        self.suite = suite
        self.name = name or suite
        self.packages = packages if packages is not None else PACKAGES
        self.path = CACHE / self.name
        self.ready = CACHE / f"{self.name}.ready"

    # -- making and removing ----------------------------------------------------

    def ensure(self) -> None:
        if self.ready.exists() and self.path.is_dir():
            return
        self.remove()
        CACHE.mkdir(parents=True, exist_ok=True)
        mirror = debian_mirror()
        say(f"making the {self.name} root ({SUITES[self.suite]}) from {mirror}")
        started = time.monotonic()
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(self.packages)}",
                self.suite,
                str(self.path),
                mirror,
            ]
        )
        # The sid Release file of the mirror may be past its Valid-Until date.
        conf = self.path / "etc/apt/apt.conf.d/99orthanc-dpp"
        conf.write_text('Acquire::Check-Valid-Until "false";\n')
        self.ready.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        say(f"{self.name} root made in {time.monotonic() - started:.0f} s")

    def remove(self) -> None:
        self.unmount_or_stop("deleting it")
        if self.path.exists():
            shutil.rmtree(self.path)
        self.ready.unlink(missing_ok=True)

    # -- mounts -------------------------------------------------------------------

    def _mounted(self) -> list[str]:
        prefix = str(self.path.resolve()) + "/"
        points = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(prefix):
                points.append(point)
        return sorted(points, key=len, reverse=True)

    def unmount(self) -> None:
        for point in self._mounted():
            if subprocess.run(["umount", point], check=False).returncode != 0:
                subprocess.run(["umount", "-l", point], check=False)

    def unmount_or_stop(self, before: str) -> None:
        """Unmount everything inside; stop if anything stays mounted.

        Deleting or replacing files through a bind mount of the host's
        ``/dev`` or ``bench/results`` would delete the host's own.
        """
        self.unmount()
        if self._mounted():
            raise SystemExit(f"stacks: {self.path} still has mounts; not {before}")

    @contextlib.contextmanager
    def mounted(self) -> Iterator[None]:
        """/proc and /dev inside the root, host files refreshed; always unmounted."""
        for name in HOST_FILES:
            source = Path(name)
            if source.exists():
                target = self.path / name.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(shutil.SameFileError):
                    target.unlink(missing_ok=True)
                    shutil.copyfile(source, target)
        self.unmount()
        try:
            run(["mount", "-t", "proc", "proc", str(self.path / "proc")])
            run(["mount", "--rbind", "/dev", str(self.path / "dev")])
            run(["mount", "--make-rslave", str(self.path / "dev")])
            yield
        finally:
            self.unmount()

    def share_results(self) -> None:
        """Bind-mount the checkout's ``bench/results`` in the root (inside :meth:`mounted`).

        The benchmarks there reuse the host's generated library and leave
        their figures beside the host's (named after the stack);
        :meth:`mounted` unmounts it with the rest.
        """
        source = REPO / "bench" / "results"
        source.mkdir(parents=True, exist_ok=True)
        target = self.path / PROJECT.lstrip("/") / "bench" / "results"
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(source), str(target)])

    def chroot(self, command: str, *, check: bool = True) -> int:
        """Run a shell command inside the root, with a plain environment."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DPP_STACK": self.suite,
            "DPP_TEST_PORTS": TEST_PORTS[self.suite],
        }
        env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_") or k == "CI"})
        # A host-only wheel folder would only make pip warn inside the root.
        if not (self.path / env.get("PIP_FIND_LINKS", "/").lstrip("/")).exists():
            env.pop("PIP_FIND_LINKS", None)
        code = subprocess.run(
            ["chroot", str(self.path), "/bin/sh", "-c", command], env=env, check=False
        ).returncode
        if check and code != 0:
            raise SystemExit(f"stacks: {self.suite}: {command!r} exited with {code}")
        return code

    # -- the project inside ---------------------------------------------------------

    def sync_project(self) -> None:
        """Copy the checkout's files (tracked and new, as in the work tree); keep the venv."""
        self.unmount_or_stop("replacing the project")  # a killed run may have left mounts
        target = self.path / PROJECT.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for child in target.iterdir():
            if child.name != ".venv":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        copy_checkout(target, SKIP)

    def ensure_packages(self) -> None:
        """Install what ``PACKAGES`` gained since the root was made."""
        listed = " ".join(PACKAGES + LATER_PACKAGES)
        self.chroot(
            f"missing=''; for p in {listed}; do "
            "dpkg-query -W -f='${db:Status-Abbrev}' $p 2>/dev/null | grep -q '^ii' "
            '|| missing="$missing $p"; done; '
            '[ -z "$missing" ] || { echo "installing:$missing"; apt-get update -qq && '
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
            "$missing; }"
        )

    def ensure_venv(self) -> None:
        """The project's venv made with the root's /usr/bin/python3 (re-made when pins change)."""
        wanted = hashlib.sha256(
            b"".join((REPO / f).read_bytes() for f in ("requirements.txt", "requirements-dev.txt"))
        ).hexdigest()
        stamp = self.path / PROJECT.lstrip("/") / ".venv" / ".pins"
        if stamp.exists() and stamp.read_text() == wanted:
            return
        say(f"{self.suite}: making the virtual environment")
        self.chroot(
            f"cd {PROJECT} && rm -rf .venv && /usr/bin/python3 -m venv .venv && "
            ".venv/bin/python -m pip install -q --disable-pip-version-check "
            "-r requirements-dev.txt"
        )
        stamp.write_text(wanted)

    def versions(self) -> None:
        self.chroot(
            'echo "Debian $(cat /etc/debian_version)"; '
            "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' orthanc "
            "orthanc-python orthanc-postgresql dcmtk 'postgresql-[0-9]*' python3 "
            "| sed -n 's/^ii *//p'; "
            f"[ -x {PROJECT}/.venv/bin/python ] && {PROJECT}/.venv/bin/python -c "
            '\'import sys, pydicom, pynetdicom; print("Python", sys.version.split()[0], '
            '"pydicom", pydicom.__version__, "pynetdicom", pynetdicom.__version__)\' || true',
            check=False,
        )


@contextlib.contextmanager
def locked(suite: str) -> Iterator[None]:
    """One process at a time per root (mounts and the project copy are shared)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{suite}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def in_roots(suites: list[str], module: str, args: list[str], *, share_results: bool) -> int:
    """``python -m MODULE ARGS`` in the project inside each root; 1 if any run failed.

    ``share_results`` mounts the host's ``bench/results`` inside (benchmarks).
    """
    failed = []
    for suite in suites:
        root = Root(suite)
        with locked(suite):
            root.ensure()
            root.sync_project()
            with root.mounted():
                if share_results:
                    root.share_results()
                root.ensure_packages()
                root.ensure_venv()
                say(f"=== {suite}: {SUITES[suite]} ===")
                root.versions()
                quoted = " ".join(shlex.quote(a) for a in args)
                code = root.chroot(
                    f"cd {PROJECT} && .venv/bin/python -m {module} {quoted}", check=False
                )
        say(f"=== {suite}: {module} exited with {code} ===")
        if code != 0:
            failed.append(suite)
    if failed:
        say(f"FAILED on: {', '.join(failed)}")
        return 1
    return 0


def side_by_side(commands: dict[str, list[str]]) -> dict[str, int]:
    """Run the commands at once, each line of their output prefixed with its name.

    Whole lines are written, one at a time, so the stacks' outputs interleave
    by line and each stays readable with ``grep '^[sid]'``. Returns each
    command's exit code.
    """
    lock = threading.Lock()

    def relay(name: str, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            with lock:
                sys.stdout.buffer.write(f"[{name}] ".encode() + line)
                sys.stdout.buffer.flush()

    running = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for name, command in commands.items()
    }
    relays = [
        threading.Thread(target=relay, args=(name, process.stdout), daemon=True)
        for name, process in running.items()
    ]
    for thread in relays:
        thread.start()
    codes = {name: process.wait() for name, process in running.items()}
    for thread in relays:
        thread.join()
    return codes


def tests_side_by_side(suites: list[str], pytest_args: list[str]) -> int:
    """``test`` of each suite in a process of its own, all at once; 1 if any failed."""
    started = time.monotonic()
    say(f"testing {', '.join(suites)} side by side")
    codes = side_by_side(
        {suite: [sys.executable, str(SELF), "test", suite, "--", *pytest_args] for suite in suites}
    )
    minutes = (time.monotonic() - started) / 60
    failed = [suite for suite, code in codes.items() if code != 0]
    if failed:
        say(f"FAILED on: {', '.join(failed)} (all stacks done in {minutes:.1f} min)")
        return 1
    say(f"passed on: {', '.join(suites)} in {minutes:.1f} min")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "action", choices=["test", "bench", "run", "versions", "shell", "remove", "make"]
    )
    parser.add_argument("suites", nargs="+", metavar="SUITE", help=", ".join(SUITES))
    parser.add_argument(
        "--one-by-one", action="store_true", help="test several stacks in turn, not side by side"
    )
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: pytest's, bench's or the command"
    )
    if "--" in argv:
        at = argv.index("--")
        args = parser.parse_args(argv[:at])
        args.pytest_args = argv[at + 1 :]
    else:
        args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("stacks: debootstrap, mount and chroot need root")
    if args.action == "test" and len(set(args.suites)) > 1 and not args.one_by_one:
        return tests_side_by_side(list(dict.fromkeys(args.suites)), args.pytest_args)
    if args.action in ("test", "bench"):
        module = "pytest" if args.action == "test" else "bench"
        return in_roots(args.suites, module, args.pytest_args, share_results=module == "bench")
    for suite in args.suites:
        root = Root(suite)
        with locked(suite):
            if args.action == "remove":
                root.remove()
                continue
            root.ensure()
            if args.action == "make":
                continue
            root.sync_project()
            with root.mounted():
                if args.action == "versions":
                    root.ensure_venv()
                    root.versions()
                elif args.action == "run":
                    root.ensure_venv()
                    code = root.chroot(f"cd {PROJECT} && {' '.join(args.pytest_args)}", check=False)
                    if code:
                        return code
                else:
                    root.chroot(f"cd {PROJECT} && exec /bin/bash || exec /bin/sh", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
