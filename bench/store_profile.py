"""py-spy on Orthanc during the ingest benchmark (``python -m bench store --profile``).

The plugin runs in Orthanc's embedded interpreter, so it is sampled from
outside by py-spy (requirements-dev.txt) and only the samples inside one
handler are summarized (bench/README.md, "Profiles: C-STORE and REST upload").
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


class Profiler:
    """py-spy sampling Orthanc (the embedded interpreter) until :meth:`stop`."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        spy = Path(sys.executable).with_name("py-spy")
        self.process: subprocess.Popen[bytes] | None = None
        if not spy.exists():
            print("  py-spy not installed (requirements-dev.txt): no profile", flush=True)
            return
        self.process = subprocess.Popen(
            [
                *(str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "250"),
                *("--output", str(output), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches

    def stop(self, root: str) -> dict[str, Any] | None:
        """Stop sampling; the summary of the samples inside function `root`."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return summarize(self.output, root) if self.output.exists() else None


def summarize(raw: Path, root: str, top: int = 25) -> dict[str, Any]:
    """One path of the plugin in a py-spy raw profile: share of samples per function.

    Only samples inside ``root``, a function named ``module.function``, count
    (``handlers._store``, the C-STORE handler's work; ``protocols.upload``,
    ``POST /dpp/protocols``), so idle threads, Orthanc's own and the index
    feed do not dilute the figures. ``inclusive``: the
    function is on the stack; ``self``: it is the innermost frame.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if f"{root.rsplit('.', 1)[-1]} (" not in stack or not count_text.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if root not in frames:
            continue
        count = int(count_text)
        total += count
        seen = frames[frames.index(root) :]
        for name in set(seen):
            inclusive[name] += count
        own[seen[-1]] += count
    return {
        "samples": total,
        "inclusive": [(name, n / total) for name, n in inclusive.most_common(top)] if total else [],
        "self": [(name, n / total) for name, n in own.most_common(top)] if total else [],
    }


def _frame(text: str) -> str:
    """``function (path/to/module.py:line)`` as ``module.function``."""
    name, _, where = text.partition(" (")
    module = where.split(":")[0].rsplit("/", 1)[-1].removesuffix(".py")
    return f"{module}.{name}" if module else name
