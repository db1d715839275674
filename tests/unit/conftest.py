"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from orthanc_dpp.record_cache import RecordCache


@pytest.fixture
def records() -> RecordCache:
    """A record cache of the test's own: records compared with each other must share one."""
    return RecordCache()
