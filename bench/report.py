"""Small statistics and plain-text tables: what the benchmarks print and save."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import RESULTS, STACK


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values (a table shows it as "-")."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def ratio(value: float | None, reference: float | None) -> float:
    if value is None or reference is None or not reference or math.isnan(reference):
        return math.nan
    return value / reference


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table (numbers right-aligned), ready for stdout or a README."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    out = [f"\n{title}\n", line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out) + "\n"


def save(results: dict[str, Any]) -> Path:
    """Write the raw numbers to a timestamped JSON file (and ``latest.json``) under results/.

    Inside a stack root (``tools/stacks.py bench``, which sets ``DPP_STACK``)
    the names carry the stack, so that its run does not replace the host's
    ``latest.json``.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    payload = {
        "time": stamp,
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "stack": STACK or "host"},
        **results,
    }
    suffix = f"-{STACK}" if STACK else ""
    path = RESULTS / f"bench-{stamp}{suffix}.json"
    text = json.dumps(_clean(payload), indent=2, default=str)
    path.write_text(text)
    (RESULTS / f"latest{suffix}.json").write_text(text)
    return path


def _cpus() -> int:
    return os.cpu_count() or 0


def _clean(value: Any) -> Any:
    """NaN (a missing figure) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
