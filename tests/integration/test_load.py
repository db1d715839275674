"""Concurrent mixed load on the real Orthanc: no failure, nothing lost, no freeze.

Twenty peers (5 storing, 5 C-FIND, 5 C-GET, 5 C-MOVE to an in-process
storage SCP), each from its own loopback address, for ``DPP_LOAD_SECONDS``
(default 60) through ``tests.load``. Every request must be answered: one
that gets no response at all fails the run, counted apart from the others.
Twelve such peers used to freeze Orthanc 1.10.1 with the plugin (the
interpreter lock and an Orthanc mutex taken in opposite orders); the driver
bounds every wait, so a freeze fails this test with the figures and the
stuck peers instead of hanging it. Throughput is printed, never asserted.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dpp_tools.samples import make_library
from tests.load import MemoryStorageSCP, dicom_modalities, found_uids, run_load
from tests.peers import store_protocols

PEERS = {"store": 5, "find": 5, "get": 5, "move": 5}
PRELOADED = 30
#: Generous: Orthanc with the plugin idles near 100 MB; a leak per operation would pass it.
RSS_LIMIT_KB = 1536 * 1024
STOP_WITHIN = 30.0


def load_seconds() -> float:
    return float(os.environ.get("DPP_LOAD_SECONDS", "60"))


def test_twenty_mixed_peers_no_failure_no_loss_no_freeze(make_server) -> None:
    known = list(make_library(PRELOADED, seed=31_000))
    problems: list[str] = []
    report: list[str] = []
    with MemoryStorageSCP() as destination:
        orthanc = make_server(
            # Each peer calls from its own loopback address, declared as its Host:
            # the per-address limit stays at its default, as in a hospital.
            dpp={"MaximumAssociations": 40},
            config={"DicomModalities": dicom_modalities(PEERS, destination)},
        )
        orthanc.start()
        store_protocols(orthanc, known)

        result = run_load(orthanc, PEERS, known, duration=load_seconds(), destination=destination)
        report.append(result.summary())
        print(report[-1], flush=True)  # the figures, whatever follows
        problems += result.problems()
        peak = result.rss_peak_kb
        if peak is None:
            problems.append("Orthanc's resident memory could not be read")
        elif peak > RSS_LIMIT_KB:
            problems.append(f"Orthanc's peak RSS {peak / 1024:.0f} MB > {RSS_LIMIT_KB // 1024} MB")

        if result.stuck or result.stalled_after is not None:
            report.append("stored protocols not checked: the listener froze")
        else:
            stored = result.stored_uids
            missing = sorted(set(stored) - found_uids(orthanc, stored))
            total = orthanc.get_json("/dpp/status")["Protocols"]["Total"]
            report.append(
                f"after the run: {len(stored) - len(missing)} of {len(stored)} stored protocols "
                f"found by C-FIND; /dpp/status Protocols.Total {total} "
                f"(expected {PRELOADED} + {len(stored)})"
            )
            if missing:
                problems.append(f"{len(missing)} stored protocols not found, e.g. {missing[:3]}")
            if total != PRELOADED + len(stored):
                problems.append(f"Protocols.Total {total} != {PRELOADED} + {len(stored)}")

        began = time.monotonic()
        try:
            code = orthanc.stop(STOP_WITHIN)
            stop_error = None if code == 0 else f"exit code {code}"
        except AssertionError as exc:  # stop() that checks the exit code itself
            stop_error = str(exc).splitlines()[0]
        stopped = time.monotonic() - began
        report.append(f"Orthanc stopped in {stopped:.1f} s ({stop_error or 'exit code 0'})")
        if stop_error or stopped >= STOP_WITHIN:
            problems.append(f"Orthanc did not stop cleanly within {STOP_WITHIN:g} s: {stop_error}")
    print("\n".join(report[1:]), flush=True)
    if problems:
        log_tail = "\n".join(orthanc.log().splitlines()[-15:])
        pytest.fail(
            "\n".join(["load problems:", *problems, "", *report, "", "end of Orthanc's log:"])
            + f"\n{log_tail}",
            pytrace=False,
        )


# -- the driver itself -------------------------------------------------------------------


@dataclass
class SilentServer:
    """Looks like an OrthancServer to the driver, but nothing ever answers.

    The kernel completes TCP connections to both listening sockets (their
    backlog), and nobody reads: the frozen listener and REST API of the bug,
    without needing the bug.
    """

    dpp_port: int
    http_port: int
    aet: str = "ORTHANC_DPP"
    process: None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    sockets = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        sockets.append(s)
    yield SilentServer(sockets[0].getsockname()[1], sockets[1].getsockname()[1])
    for s in sockets:
        s.close()


def test_the_driver_gives_up_on_a_frozen_server_at_its_deadline(silent_server) -> None:
    """Whatever the server does, the driver returns by duration + grace, naming who is stuck."""
    known = list(make_library(3, seed=31_100))
    began = time.monotonic()
    result = run_load(
        silent_server,  # type: ignore[arg-type]
        {"store": 1, "find": 1, "get": 1, "move": 1},
        known,
        duration=1.0,
        grace=1.0,
        timeout=20.0,
        rest_timeout=0.5,
        destination=MemoryStorageSCP(),  # never contacted: no C-MOVE gets that far
    )
    took = time.monotonic() - began
    print(result.summary())
    assert took < 5.0
    assert len(result.stuck) == 4
    assert all("associating" in line for line in result.stuck)
    assert result.ok == 0
    assert result.rest.failed >= 1
    problems = "\n".join(result.problems())
    assert "4 peers stuck" in problems and "REST polls failed" in problems
