"""Benchmark 2: C-GET and C-MOVE of 1,000 protocols, plugin against Orthanc's own.

Both sides retrieve 1,000 instances (the first of the benchmark library,
factory default sizes) with one request naming all their SOP Instance
UIDs: the plugin on the DPP model (.20.3 / .20.2), Orthanc on Study Root at
IMAGE level. Orthanc's C-MOVE sends the same DPP instances; its C-GET cannot
send DPP classes at all (see :func:`bench.orthanc_setup.twin_file`), so it is
measured on Raw Data "twins" of the same protocols (same count, same bytes
but for their UIDs), and its C-MOVE of the twins is shown too, to relate the
two. C-MOVE goes to the same destination,
:mod:`bench.store_scp` in its own process, registered in Orthanc's modality
list (which the plugin also reads); C-GET comes back to the requester, which
offers the storage SOP classes with the SCP role. Runs alternate between the
two sides so that a burst of load on this shared machine hits both.

Orthanc sends instances as it stores them (with the plugin's normalization
attributes, a few hundred bytes more); the plugin sends the originals. MB/s
counts the bytes each side actually delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom.sop_class import (
    RawDataStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from bench import corpus, orthanc_setup
from bench.child import Child
from bench.dimse import DimseError, RetrieveResult, accepted, get, move
from bench.report import percentile, ratio, table
from orthanc_dpp.model.sop import DPP_GET, DPP_MOVE, DPP_STORAGE_CLASSES
from tests.orthanc_server import free_port

ORTHANC_AET = "ORTHANC"
PLUGIN = "plugin"
NATIVE = "Orthanc"
NATIVE_TWINS = "Orthanc, Raw Data twins"
#: What each operation's plugin figure is divided by (see the module's docstring).
REFERENCE = {"C-GET": NATIVE_TWINS, "C-MOVE": NATIVE}


def _identifier(uids: list[str], level: str | None) -> Dataset:
    ds = Dataset()
    if level:
        ds.QueryRetrieveLevel = level
    ds.SOPInstanceUID = uids
    return ds


def _bytes_moved(destination: Child, timeout: float = 30.0) -> tuple[int, int]:
    """Instances and bytes the destination reports for the association(s) just finished."""
    instances = size = 0
    line = destination.wait_event("association", timeout)
    instances, size = line["instances"], line["bytes"]
    for extra in destination.drain():  # a retrieve split over several associations
        if extra.get("event") == "association":
            instances += extra["instances"]
            size += extra["bytes"]
    return instances, size


def run(
    count: int, repeats: int, budget: float, pending_interval: float | None = None
) -> dict[str, Any]:
    """Alternate plugin and native runs of each operation: `repeats` each, within `budget` s.

    ``pending_interval`` sets the plugin's PendingResponseInterval (None: its default).
    """
    print(f"\n== C-GET / C-MOVE of {count:,} protocols", flush=True)
    corpus.ensure(count)
    loaded = orthanc_setup.prepare(count, twins=True)
    paths = corpus.files(count)
    twins = orthanc_setup.twin_uids(paths)
    sizes = corpus.sizes(paths)
    uids = [str(dcmread(p, specific_tags=["SOPInstanceUID"]).SOPInstanceUID) for p in paths]
    result: dict[str, Any] = {
        "count": count,
        "mean_size_kib": sizes.mean_kib,
        "total_mib": sizes.total_bytes / 2**20,
        "loading": loaded,
        "pending_interval": pending_interval,
    }
    dest_port = free_port()
    destination = Child("bench.store_scp", str(dest_port), orthanc_setup.DESTINATION_AET)
    orthanc = None
    try:
        destination.wait_event("ready", 60)
        settings = {} if pending_interval is None else {"PendingResponseInterval": pending_interval}
        orthanc = orthanc_setup.server(count, destination_port=dest_port, twins=True, **settings)
        orthanc.start(timeout=600)
        served = accepted(orthanc.dpp_port, orthanc.aet, [DPP_GET, DPP_MOVE])
        storage = [*sorted(DPP_STORAGE_CLASSES), str(RawDataStorage)]
        dpp_ident = _identifier(uids, None)
        native_ident = _identifier(uids, "IMAGE")
        twin_ident = _identifier(twins, "IMAGE")
        native_get = str(StudyRootQueryRetrieveInformationModelGet)
        native_move = str(StudyRootQueryRetrieveInformationModelMove)
        dest = orthanc_setup.DESTINATION_AET

        def native_moved(identifier: Dataset) -> RetrieveResult:
            return _moved(
                destination, move(orthanc.dicom_port, ORTHANC_AET, native_move, identifier, dest)
            )

        def plugin_moved() -> RetrieveResult:
            return _moved(
                destination, move(orthanc.dpp_port, orthanc.aet, DPP_MOVE, dpp_ident, dest)
            )

        sides: dict[str, dict[str, Callable[[], RetrieveResult] | None]] = {
            "C-GET": {
                NATIVE_TWINS: lambda: get(
                    orthanc.dicom_port, ORTHANC_AET, native_get, twin_ident, storage
                ),
                PLUGIN: (lambda: get(orthanc.dpp_port, orthanc.aet, DPP_GET, dpp_ident, storage))
                if DPP_GET in served
                else None,
            },
            "C-MOVE": {
                NATIVE: lambda: native_moved(native_ident),
                PLUGIN: plugin_moved if DPP_MOVE in served else None,
                NATIVE_TWINS: lambda: native_moved(twin_ident),
            },
        }
        for operation, runners in sides.items():
            missing = [side for side, fn in runners.items() if fn is None]
            if missing:
                print(f"  the DPP listener does not accept {operation} yet: plugin skipped")
            runs: dict[str, list[RetrieveResult]] = {side: [] for side in runners}
            errors: dict[str, str] = {}
            started = time.monotonic()
            for attempt in range(repeats):
                if attempt and time.monotonic() - started > budget:
                    break
                for side, fn in runners.items():
                    if fn is None or side in errors:
                        continue
                    destination.drain()
                    try:
                        outcome = fn()
                    except (DimseError, TimeoutError, RuntimeError) as exc:
                        errors[side] = str(exc)
                        print(f"  {operation} {side}: failed: {exc}", flush=True)
                        continue
                    runs[side].append(outcome)
                    print(
                        f"  {operation} {side:<8} {outcome.completed:,} completed, "
                        f"{outcome.failed} failed in {outcome.seconds:.2f} s "
                        f"(status 0x{outcome.status:04X})",
                        flush=True,
                    )
            result[operation] = {
                side: _summary(items, errors.get(side)) for side, items in runs.items()
            }
    finally:
        destination.stop()
        if orthanc is not None:
            orthanc.stop()
    return result


def _moved(destination: Child, outcome: RetrieveResult) -> RetrieveResult:
    if outcome.completed or outcome.failed:  # else no association was opened
        outcome.received, outcome.received_bytes = _bytes_moved(destination)
    return outcome


def _summary(items: list[RetrieveResult], error: str | None) -> dict[str, Any]:
    if not items:
        return {"runs": 0, "error": error}
    rates = [r.received / r.seconds for r in items if r.seconds]
    mbs = [r.received_bytes / r.seconds / 1e6 for r in items if r.seconds]
    return {
        "runs": len(items),
        "error": error,
        "completed": items[-1].completed,
        "failed": items[-1].failed,
        "final_status": f"0x{items[-1].status:04X}",
        "received": items[-1].received,
        "received_bytes": items[-1].received_bytes,
        "seconds": [r.seconds for r in items],
        "instances_per_s": percentile(rates, 0.5),
        "mb_per_s": percentile(mbs, 0.5),
    }


def tables(result: dict[str, Any]) -> str:
    rows = []
    for operation in ("C-GET", "C-MOVE"):
        sides = result.get(operation, {})
        native = sides.get(REFERENCE[operation], {})
        for side, fig in sides.items():
            rows.append(
                [
                    operation,
                    side,
                    fig.get("runs"),
                    fig.get("received"),
                    fig.get("failed"),
                    fig.get("instances_per_s"),
                    fig.get("mb_per_s"),
                    ratio(fig.get("instances_per_s"), native.get("instances_per_s")),
                    fig.get("error") or "",
                ]
            )
    title = (
        f"C-GET / C-MOVE of {result['count']:,} protocols "
        f"(mean {result['mean_size_kib']:.1f} KiB, {result['total_mib']:.1f} MiB; median of runs"
        + (
            f"; plugin's PendingResponseInterval {interval:g} s)"
            if (interval := result.get("pending_interval")) is not None
            else ")"
        )
    )
    return table(
        title,
        ["op", "SCP", "runs", "received", "failed", "instances/s", "MB/s", "x native", "error"],
        rows,
    )
