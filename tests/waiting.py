"""Polling with a bound, for tests that wait on another thread or process."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.02) -> bool:
    """True as soon as ``predicate`` holds, False if it still fails after ``timeout`` s.

    The default bound is generous on purpose: it is only reached when the
    test fails, and a loaded machine must not fail a test that would pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def seconds_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate`` holds; AssertionError naming ``what`` after ``timeout`` s."""
    started = time.monotonic()
    if not eventually(predicate, timeout):
        raise AssertionError(f"{what}: not within {timeout:.1f} s")
    return time.monotonic() - started
