"""Debian's chromium driven by Playwright, for the tests that need a real browser.

Importing this module skips the importing test (module or fixture) where
Playwright is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")


CHROMIUM = Path("/usr/bin/chromium")


#: Headless, and nothing that reaches out of this machine on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
