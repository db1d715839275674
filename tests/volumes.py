"""Small real file systems (tmpfs) that the tests can fill up, for Orthanc's storage or index.

Mounting needs root (our machines and CI run the integration tests as root);
where it is refused, :func:`tmpfs` raises :class:`MountUnavailable` with the
reason, for the test to skip with.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

#: The name of the file that takes all free space (:func:`filled`).
FILLER = "filler.bin"


class MountUnavailable(Exception):
    """A tmpfs cannot be mounted here (not root, or no permission in this container)."""


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=...``) at ``folder``, unmounted on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise MountUnavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def filled(folder: Path) -> Iterator[Path]:
    """Take every free byte of ``folder``'s file system; give it all back on exit."""
    filler = folder / FILLER
    with filler.open("wb", buffering=0) as out:
        chunk = 1 << 16
        while chunk:
            try:
                out.write(b"\0" * chunk)  # unbuffered: what does not fit raises at once
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2  # try smaller pieces down to one byte
    try:
        yield filler
    finally:
        filler.unlink()


def files_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` but the filler."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != FILLER)
