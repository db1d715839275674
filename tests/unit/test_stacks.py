"""Stacks tested side by side (tools/stacks.py) and the ports their tests take.

``make test-all`` runs the Debian 13 and unstable stacks at once, on the
host's loopback; these check what keeps that safe without making a root:
each stack's ports come from its own range, and the runner keeps each
stack's lines whole, named, and its failure reported.
"""

from __future__ import annotations

import importlib.util
import itertools
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests import orthanc_server
from tests.orthanc_server import free_port, port_range

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stacks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stacks", REPO / "tools" / "stacks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_stack_has_ports_of_its_own_below_the_ephemeral_range(stacks) -> None:
    ranges = [port_range(stacks.TEST_PORTS[suite]) for suite in stacks.SUITES]
    assert all(ports is not None and ports.stop <= 32768 for ports in ranges)
    taken = [set(ports or ()) for ports in ranges]
    assert not set.intersection(*taken), "two stacks would hand out the same ports"


def test_free_port_takes_the_ranges_ports_in_turn_and_skips_a_taken_one(monkeypatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        monkeypatch.setenv(orthanc_server.PORTS_VARIABLE, f"{taken}-{taken + 10}")
        monkeypatch.setattr(orthanc_server, "_next_port", itertools.count())
        handed = [free_port() for _ in range(3)]
    # In turn from the range's start: each once, the taken one never (another
    # port of the range may happen to be in use here: then it is skipped too).
    assert taken not in handed
    assert len(set(handed)) == 3
    assert handed == sorted(handed)
    assert set(handed) <= set(range(taken + 1, taken + 11))


def test_free_port_says_when_its_range_is_used_up(monkeypatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        monkeypatch.setenv(orthanc_server.PORTS_VARIABLE, f"{taken}-{taken}")
        with pytest.raises(OSError, match=f"no free port left in DPP_TEST_PORTS={taken}-{taken}"):
            free_port()


@pytest.mark.parametrize("value", ["80-90", "30000-29000", "1024-70000", "many"])
def test_a_wrong_port_range_is_refused(value) -> None:
    with pytest.raises(ValueError):
        port_range(value)


def test_without_a_range_the_kernel_picks(monkeypatch) -> None:
    monkeypatch.delenv(orthanc_server.PORTS_VARIABLE, raising=False)
    assert port_range(None) is None
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free indeed


def test_side_by_side_names_every_line_and_returns_each_exit_code(stacks, capfdbinary) -> None:
    script = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print('{0}', i, flush=True)\n"
        "    time.sleep(0.05)\n"
        "sys.exit({1})"
    )
    codes = stacks.side_by_side(
        {
            "trixie": [sys.executable, "-c", script.format("one", 0)],
            "sid": [sys.executable, "-c", script.format("two", 3)],
        }
    )
    assert codes == {"trixie": 0, "sid": 3}
    lines = capfdbinary.readouterr().out.decode().splitlines()
    assert sorted(lines) == sorted(
        [f"[trixie] one {i}" for i in range(3)] + [f"[sid] two {i}" for i in range(3)]
    )
