"""A throwaway PostgreSQL cluster from Debian's binaries, for the scale-out tests.

The cluster lives in a fresh temporary folder (data, log and Unix socket
inside it), listens on a free port of 127.0.0.1 only, and is removed by
:meth:`PostgresCluster.stop`. Orthanc nodes reach it over TCP with a
password (SCRAM), like a real deployment; local socket connections are
trusted so the helper itself needs no password.

``initdb`` and ``postgres`` refuse to run as root. When the tests run as
root (our machines and CI do), the server runs as Debian's ``postgres``
account, which the ``postgresql`` package creates together with the
binaries; if that account is absent, as ``nobody``, which every Debian
system has. Nothing on the system is created or changed: the temporary
folder (made in the world-traversable temporary directory, mode 0700) is
handed to that account and removed again at the end. As a normal user the
server simply runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.orthanc_server import free_port


def _newest_server() -> Path:
    """The bin folder of the newest PostgreSQL server installed (15 on Debian 12, 17, 18...)."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()]
    if not found:
        return Path("/usr/lib/postgresql/15/bin")  # named in the skip reason
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


PG_BIN = Path(os.environ.get("DPP_PG_BIN", _newest_server()))
PG_VERSION = PG_BIN.parent.name
PG_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
PG_STORAGE_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLStorage.so"
# Accounts tried, in order, when running as root (see the module docstring).
SERVICE_ACCOUNTS = ("postgres", "nobody")


def postgres_available() -> bool:
    """Debian's PostgreSQL server binaries and Orthanc's PostgreSQL plugins are installed."""
    needed = [PG_BIN / "initdb", PG_BIN / "postgres", PG_BIN / "pg_isready", PG_BIN / "createdb"]
    return all(p.exists() for p in needed) and all(
        os.path.exists(p) for p in (PG_INDEX_PLUGIN, PG_STORAGE_PLUGIN)
    )


def _service_account() -> pwd.struct_passwd | None:
    """The account to run the server as: None means "as I am" (not root)."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_ACCOUNTS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"running as root and none of the accounts {SERVICE_ACCOUNTS} exists")


class PostgresCluster:
    """One PostgreSQL server with one database for Orthanc; ``start``, then ``stop``."""

    def __init__(
        self,
        *,
        database: str = "orthanc",
        username: str = "orthanc",
        password: str = "orthanc-test-password",
        max_connections: int = 50,
    ) -> None:
        self.database = database
        self.username = username
        self.password = password
        self.max_connections = max_connections
        self.port = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.account = _service_account()

    # -- paths -----------------------------------------------------------------

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "socket"

    @property
    def log_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "postgres.log"

    def log(self) -> str:
        if self.folder is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    # -- running commands as the service account ---------------------------------

    def _popen_args(self) -> dict[str, Any]:
        """Keyword arguments that make a child run as the service account."""
        assert self.folder is not None
        env = {
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            "HOME": str(self.folder),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PGHOST": str(self.socket_dir),
        }
        args: dict[str, Any] = {"env": env, "cwd": self.folder}
        if self.account is not None:
            args.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return args

    def _run(self, *command: str | Path, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            timeout=timeout,
            **self._popen_args(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(str(command[0])).name} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    # -- life cycle ------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster and database, start the server, wait until it accepts logins."""
        self.folder = Path(tempfile.mkdtemp(prefix="dpp-postgres-"))
        try:
            self._create()
            self._launch(timeout)
            self._run(PG_BIN / "createdb", "-p", str(self.port), "-U", self.username, self.database)
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        assert self.folder is not None
        self.socket_dir.mkdir()
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if self.account is not None:
            for path in (self.folder, self.socket_dir, password_file):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        self._run(
            PG_BIN / "initdb",
            "-D",
            self.data,
            "-U",
            self.username,
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        password_file.unlink()

    def _launch(self, timeout: float) -> None:
        """Run ``postgres`` as our child (not daemonized), so stopping it is ours to do.

        The first launch takes a free port; a relaunch (:meth:`resume`) keeps
        it, so that Orthanc's nodes find the server where it was.
        """
        self.port = self.port or free_port()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"port={self.port}",
                "-c",
                f"unix_socket_directories={self.socket_dir}",
                "-c",
                f"max_connections={self.max_connections}",
                # A throwaway cluster: durability buys nothing, speed does.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._popen_args(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start-up:\n{self.log()[-3000:]}")
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                timeout=10,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL did not accept connections:\n{self.log()[-3000:]}")

    def halt(self, timeout: float = 30.0) -> None:
        """Stop the server like ``pg_ctl stop -m fast``, keeping its data: connections drop.

        A fast shutdown rolls back open transactions and closes every
        client connection at once: to the nodes, the database is gone.
        """
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)  # "fast" shutdown
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again, on the same port, with the same data."""
        assert self.folder is not None and self.process is None, "resume after halt only"
        self._launch(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown, then kill) and remove every file of the cluster."""
        self.halt(timeout)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.port = 0

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for Orthanc -------------------------------------------------------------

    def psql(self, sql: str) -> str:
        """Run one SQL statement through the local socket; unaligned, tuples only."""
        return self._run(
            PG_BIN / "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-p",
            str(self.port),
            "-U",
            self.username,
            "-d",
            self.database,
            "-c",
            sql,
        ).strip()

    def orthanc_section(self, **overrides: Any) -> dict[str, Any]:
        """Orthanc's ``PostgreSQL`` section for a node of a multi-node set-up.

        ``Lock: false`` is what lets a second Orthanc open the same database
        (docs/design.md, fact 15); index and files both live in PostgreSQL, so the
        nodes share storage without a shared folder.
        """
        section: dict[str, Any] = {
            "EnableIndex": True,
            "EnableStorage": True,
            "Host": "127.0.0.1",
            "Port": self.port,
            "Database": self.database,
            "Username": self.username,
            "Password": self.password,
            "Lock": False,
            "IndexConnectionsCount": 2,
            "MaximumConnectionRetries": 10,
            "ConnectionRetryInterval": 1,
        }
        section.update(overrides)
        return section
