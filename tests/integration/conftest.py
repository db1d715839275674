"""Fixtures that start the real Orthanc with the plugin on free loopback ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.orthanc_server import OrthancServer, orthanc_available
from tests.peers import library_unchanged

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``integration`` (``-m "not integration"`` leaves them
    out), and skip them where Orthanc is not installed."""
    available = orthanc_available()
    skip = pytest.mark.skip(reason="Orthanc from Debian's packages is not installed")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
            if not available:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc with the plugin, shared by the tests of a module."""
    folder = tmp_path_factory.mktemp("orthanc")
    with OrthancServer(folder) as orthanc:
        yield orthanc
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Factory for servers with a custom configuration; all stopped at the end."""
    started: list[OrthancServer] = []

    def make(**kwargs: object) -> OrthancServer:
        orthanc = OrthancServer(tmp_path / f"orthanc{len(started)}", **kwargs)
        started.append(orthanc)
        return orthanc

    yield make
    for orthanc in started:
        orthanc.stop()


@pytest.fixture
def unchanged(orthanc: OrthancServer) -> Iterator[None]:
    """After the test: Orthanc (the module's own ``orthanc`` fixture) answers, a new
    association works, the library is intact."""
    with library_unchanged(orthanc):
        yield
