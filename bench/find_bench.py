"""Benchmark 1: C-FIND over libraries of 1,000 / 10,000 / 100,000 protocols, and index start-up.

Three C-FIND SCPs answer the same typical queries over the same protocols:

* **plugin**: the DPP listener inside Orthanc, answering from its index;
* **(a) bare SCP**: :mod:`bench.baseline_scp`, a list and a filter in its own
  process, the ceiling of a pynetdicom SCP (target: plugin >= 0.8x its rate);
* **(b) Orthanc**: Orthanc's own C-FIND (Study Root, IMAGE level) on its own
  port, over the same instances as Orthanc stores them (target: plugin faster).

Each query runs on one association, one after another, for a time budget
(at least one measured query after one warm-up; a query slower than the
budget is measured once, its warm-up run counting). Orthanc cannot match
inside sequences and files the Series-level attributes (Protocol Name,
Manufacturer) once per series, so its match counts differ from the
DPP-model answers: the table shows every side's match count so the reader
sees what was compared.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from bench import corpus, orthanc_setup
from bench.child import Child, rss_kib
from bench.counting_scu import CountingAssociation
from bench.dimse import DimseError, accepted, connect, find
from bench.report import percentile, ratio, table
from orthanc_dpp.model import snapshot
from orthanc_dpp.model.sop import DPP_FIND
from tests.orthanc_server import free_port

BASELINE_AET = "BASELINE_FIND"
ORTHANC_AET = "ORTHANC"

#: Broad queries measured a second time with the counting requester
#: (bench/counting_scu.py), which does not decode the identifiers: with
#: pynetdicom's requester the requester itself limits a fast SCP.
COUNTED = {"universal, counting SCU": "universal"}
#: Issue 15's target for those: plugin responses/s at least this many times (a)'s.
BROAD_TARGET = 2.0
#: Seconds a stop may take: after a first start on 100,000 protocols the plugin
#: saves its snapshot and Python frees the index (about 40 s on a busy machine).
STOP_TIMEOUT = 300.0


def _session(port: int, aet: str, model: str, counting: bool) -> tuple[Any, Callable[..., Any]]:
    """An association and the function running one C-FIND on it."""
    if counting:
        counted = CountingAssociation(port, aet, model)
        return counted, counted.find
    assoc = connect(port, aet, [model])
    return assoc, lambda identifier: find(assoc, model, identifier)


def _measure_side(
    port: int,
    aet: str,
    model: str,
    identifier: Dataset,
    counting: bool,
    budget: float,
    max_queries: int,
) -> dict[str, Any]:
    session, ask = _session(port, aet, model, counting)
    try:
        return measure(lambda: ask(identifier), budget, max_queries)
    finally:
        session.release()


def _code_item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _return_keys() -> Dataset:
    """A realistic handful of return keys, as a protocol-management tool would list protocols."""
    ds = Dataset()
    ds.SOPClassUID = ""
    ds.SOPInstanceUID = ""
    ds.ProtocolName = ""
    ds.PotentialScheduledProtocolCodeSequence = [
        _code_item(CodeValue="", CodingSchemeDesignator="", CodeMeaning="")
    ]
    ds.EquipmentModality = ""
    ds.Manufacturer = ""
    ds.ManufacturerModelName = ""
    ds.InstanceCreationDate = ""
    return ds


def queries(uid: str) -> dict[str, Dataset]:
    """The typical queries, DPP model; `uid` is one stored protocol's SOP Instance UID."""
    name = _return_keys()
    name.ProtocolName = "*Head*"  # wild card, case-sensitive (PS3.4 C.2.2.2.4)

    code = _return_keys()  # one RadLex Playbook code, as a scheduler looks protocols up
    code.PotentialScheduledProtocolCodeSequence = [
        _code_item(CodeValue="RPID22", CodingSchemeDesignator="RADLEX", CodeMeaning="")
    ]

    equipment = _return_keys()  # what a scanner asks for: its modality and manufacturer
    equipment.EquipmentModality = "CT"
    equipment.ModelSpecificationSequence = [_code_item(Manufacturer="SIEMENS")]

    single = _return_keys()  # one known protocol, as a tool refreshes what it shows
    single.SOPInstanceUID = uid

    # universal: the whole library, as a protocol manager synchronises
    return {
        "name *Head*": name,
        "code RPID22": code,
        "CT + SIEMENS": equipment,
        "one UID": single,
        "universal": _return_keys(),
    }


def orthanc_queries(uid: str) -> dict[str, Dataset]:
    """The nearest queries Orthanc's own C-FIND understands (Study Root, IMAGE level).

    Sequence keys are sent as in the DPP queries (Orthanc does not match
    them); the equipment query adds the top-level Manufacturer, which Orthanc
    matches (at Series level, like Protocol Name).
    """
    out = queries(uid)
    for ds in out.values():
        ds.QueryRetrieveLevel = "IMAGE"
    out["CT + SIEMENS"].Manufacturer = "SIEMENS"
    return out


def measure(run: Callable[[], Any], budget: float, max_queries: int) -> dict[str, Any]:
    """Repeat one query for `budget` seconds (bounded by `max_queries`); latency figures."""
    warm = run()
    matches, final = warm.matches, warm.status
    # A query slower than the budget is measured once: its warm-up is its measurement.
    latencies = [warm.seconds] if warm.seconds >= budget else []
    started = time.monotonic()
    error = None
    while len(latencies) < max_queries and (
        not latencies or (warm.seconds < budget and time.monotonic() - started < budget)
    ):
        try:
            result = run()
        except DimseError as exc:
            # Seen once in hundreds of quick queries to Orthanc: a response
            # that never arrives (the client waits DIMSE_TIMEOUT). Keep the
            # queries measured so far rather than none.
            if not latencies:
                raise
            error = str(exc)
            break
        latencies.append(result.seconds)
        matches, final = result.matches, result.status
    total = sum(latencies)
    return {
        "error_after_runs": error,
        "queries": len(latencies),
        "matches": matches,
        "final_status": f"0x{final:04X}",
        "queries_per_s": len(latencies) / total if total else None,
        "responses_per_s": matches * len(latencies) / total if total else None,
        "median_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
    }


def _middle_uid(size: int) -> str:
    """SOP Instance UID of the protocol in the middle of the library."""
    path = corpus.files(size)[size // 2]
    return str(dcmread(path, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


#: The issue's target: a start without a snapshot at least this many times faster than before.
START_TARGET = 3.0
#: Starts without a snapshot per loader (alternating; the fastest of each is compared).
COLD_STARTS = 2


def _drop_snapshot(size: int) -> bool:
    """Delete the plugin's index snapshot (Orthanc stopped); True if there was one.

    The snapshot is Orthanc global property ``snapshot.PROPERTY``, a row of
    the SQLite index in the data folder (``db/index``).
    """
    index = orthanc_setup.folder_for(size) / "db" / "index"
    with contextlib.closing(sqlite3.connect(index)) as db, db:
        cursor = db.execute("DELETE FROM GlobalProperties WHERE property = ?", (snapshot.PROPERTY,))
        return cursor.rowcount > 0


def _indexed_start(size: int, **dpp: Any) -> tuple[dict[str, Any], Any]:
    """Start Orthanc with the plugin; time until its index is ready, and its memory then."""
    orthanc = orthanc_setup.server(size, **dpp)
    started = time.monotonic()
    orthanc.start(timeout=3600)
    ready = time.monotonic() - started
    status = orthanc.get_json("/dpp/status")["Index"]
    figures = {
        "ready_s": ready,
        "load_seconds": status.get("LoadSeconds"),
        "indexed": orthanc.get_json("/dpp/status")["Protocols"]["Total"],
        "rss_kib": rss_kib(orthanc.process.pid) if orthanc.process else None,
    }
    return figures, orthanc


def _cold_start(size: int, **dpp: Any) -> dict[str, Any]:
    """A start without an index snapshot (deleted first): every protocol is read."""
    dropped = _drop_snapshot(size)
    figures, orthanc = _indexed_start(size, **dpp)
    orthanc.stop(STOP_TIMEOUT)
    figures["snapshot_deleted"] = dropped
    return figures


def _startup(size: int) -> tuple[dict[str, Any], Any]:
    """Orthanc's start-up without the plugin's index, then with it; returns the server.

    With the index: starts without a snapshot (deleted before each),
    alternating the previous loader (``FastIndexLoad: false``: pydicom for
    every file and a SOP class query per instance) and the current one,
    ``COLD_STARTS`` each, so their ratio compares the two on the same files
    in the same run; then a restart on the snapshot the last one saved, what
    an administrator sees after the first start.
    """
    figures: dict[str, Any] = {}
    plain = orthanc_setup.server(size, Enabled=False)
    started = time.monotonic()
    plain.start(wait_listener=False, timeout=600)
    figures["orthanc_ready_s"] = time.monotonic() - started
    time.sleep(1)
    figures["rss_without_index_kib"] = rss_kib(plain.process.pid) if plain.process else None
    plain.stop(STOP_TIMEOUT)

    # Alternated, each kept at its best: other work on the machine slows
    # whichever start it happens to overlap, not one loader in particular.
    runs: dict[str, list[dict[str, Any]]] = {"previous_loader": [], "first_start": []}
    for _ in range(COLD_STARTS):
        runs["previous_loader"].append(_cold_start(size, FastIndexLoad=False))
        runs["first_start"].append(_cold_start(size))
    for label, starts in runs.items():
        figures[label] = {
            **min(starts, key=lambda f: f["load_seconds"] or math.inf),
            "load_seconds_each": [f["load_seconds"] for f in starts],
        }
    figures["restart"], orthanc = _indexed_start(size)
    return figures, orthanc


def run_size(
    size: int, budget: float, max_queries: int, only: list[str] | None = None
) -> dict[str, Any]:
    """Everything benchmark 1 measures for one library size."""
    print(f"\n== C-FIND, library of {size:,} protocols", flush=True)
    loaded = orthanc_setup.prepare(size)
    result: dict[str, Any] = {"size": size, "loading": loaded}
    baseline_port = free_port()
    started = time.monotonic()
    baseline = Child("bench.baseline_scp", str(baseline_port), BASELINE_AET, str(size))
    orthanc = None
    try:
        ready = baseline.wait_event("ready", timeout=1800)
        result["baseline_load"] = {
            "seconds": ready["load_seconds"],
            "ready_s": time.monotonic() - started,
            "rss_kib": ready["rss_kib"],
        }
        startup, orthanc = _startup(size)
        result["startup"] = startup
        plugin_ok = DPP_FIND in accepted(orthanc.dpp_port, orthanc.aet, [DPP_FIND])
        if not plugin_ok:
            print("  the DPP listener does not accept C-FIND yet: plugin rows skipped", flush=True)
        uid = _middle_uid(size)
        dpp = queries(uid)
        sides: dict[str, tuple[int, str, str, dict[str, Dataset]] | None] = {
            "(a) bare SCP": (baseline_port, BASELINE_AET, DPP_FIND, dpp),
            "plugin": (orthanc.dpp_port, orthanc.aet, DPP_FIND, dpp) if plugin_ok else None,
            "(b) Orthanc": (
                orthanc.dicom_port,
                ORTHANC_AET,
                str(StudyRootQueryRetrieveInformationModelFind),
                orthanc_queries(uid),
            ),
        }
        measured: dict[str, dict[str, Any]] = {}
        for name in [*dpp, *COUNTED]:
            query = COUNTED.get(name, name)
            if only and name not in only and query not in only:
                continue
            measured[name] = {}
            for side, spec in sides.items():
                if spec is None:
                    continue
                port, aet, model, identifiers = spec
                print(f"  {name:<14} {side:<13}", end=" ", flush=True)
                try:
                    figures = _measure_side(
                        port, aet, model, identifiers[query], name in COUNTED, budget, max_queries
                    )
                except (DimseError, RuntimeError, OSError) as exc:
                    figures = {"error": str(exc)}
                measured[name][side] = figures
                if "error" in figures:
                    print(f"failed: {figures['error']}", flush=True)
                else:
                    print(
                        f"{figures['queries_per_s'] or 0:8.2f} q/s, {figures['matches']} matches",
                        flush=True,
                    )
        result["queries"] = measured
        if orthanc.process is not None:
            result["startup"]["rss_after_queries_kib"] = rss_kib(orthanc.process.pid)
    finally:
        baseline.stop()
        if orthanc is not None:
            orthanc.stop(STOP_TIMEOUT)
    return result


STARTS = {
    "previous_loader": "no snapshot, previous loader",
    "first_start": "no snapshot",
    "restart": "restart (snapshot)",
}


def tables(results: list[dict[str, Any]]) -> str:
    """The per-query table (ratios against both baselines) and the start-up table."""
    rows = []
    for res in results:
        for name, sides in res.get("queries", {}).items():
            a = sides.get("(a) bare SCP", {}).get("queries_per_s")
            b = sides.get("(b) Orthanc", {}).get("queries_per_s")
            for side, fig in sides.items():
                qps = fig.get("queries_per_s")
                rows.append(
                    [
                        res["size"],
                        name,
                        side,
                        fig.get("matches"),
                        fig.get("queries"),
                        qps,
                        fig.get("median_ms"),
                        fig.get("p95_ms"),
                        fig.get("responses_per_s"),
                        ratio(qps, a),
                        ratio(qps, b),
                    ]
                )
    errors = [
        f"  {res['size']:,} {name} {side}: {fig['error']}"
        for res in results
        for name, sides in res.get("queries", {}).items()
        for side, fig in sides.items()
        if "error" in fig
    ]
    out = table(
        "C-FIND: queries/s and latency (one association, sequential queries)",
        [
            "library",
            "query",
            "SCP",
            "matches",
            "runs",
            "q/s",
            "median ms",
            "p95 ms",
            "responses/s",
            "x (a)",
            "x (b)",
        ],
        rows,
    )
    if errors:
        out += "Failed measurements:\n" + "\n".join(errors) + "\n"
    out += _broad_targets(results)
    start_rows = []
    for res in results:
        s = res.get("startup", {})
        base = res.get("baseline_load", {})
        without = s.get("rss_without_index_kib")
        for label in ("previous_loader", "first_start", "restart"):
            fig = s.get(label) or {}
            with_index = fig.get("rss_kib")
            delta = (with_index - without) if with_index and without else None
            start_rows.append(
                [
                    res["size"],
                    STARTS[label],
                    s.get("orthanc_ready_s"),
                    fig.get("ready_s"),
                    fig.get("load_seconds"),
                    without / 1024 if without else None,
                    with_index / 1024 if with_index else None,
                    delta / res["size"] if delta is not None else None,
                    base.get("seconds"),
                    base.get("rss_kib", 0) / 1024 if base.get("rss_kib") else None,
                ]
            )
    out += table(
        "Start-up and memory (plugin disabled, then enabled three times; (a) = bare SCP)",
        [
            "library",
            "start",
            "Orthanc ready s",
            "index ready s",
            "LoadSeconds",
            "RSS w/o index MiB",
            "RSS with index MiB",
            "index KiB/protocol",
            "(a) load s",
            "(a) RSS MiB",
        ],
        start_rows,
    )
    cold_rows = []
    for res in results:
        s = res.get("startup", {})
        old, new = s.get("previous_loader") or {}, s.get("first_start") or {}
        cold_rows.append(
            [
                res["size"],
                old.get("load_seconds"),
                new.get("load_seconds"),
                ratio(old.get("load_seconds"), new.get("load_seconds")),
                old.get("ready_s"),
                new.get("ready_s"),
                ratio(old.get("ready_s"), new.get("ready_s")),
                START_TARGET,
            ]
        )
    out += table(
        "Start without snapshot: index ready, current loader against the previous one "
        f"(FastIndexLoad false), same files, same run, best of {COLD_STARTS} each",
        [
            "library",
            "previous LoadSeconds",
            "current LoadSeconds",
            "x faster",
            "previous ready s",
            "current ready s",
            "x faster (ready)",
            "target x",
        ],
        cold_rows,
    )
    return out


def _broad_targets(results: list[dict[str, Any]]) -> str:
    """One line per size: broad C-FIND responses/s of the plugin against (a), and the target."""
    lines = []
    for res in results:
        for name in COUNTED:
            sides = res.get("queries", {}).get(name, {})
            plugin = sides.get("plugin", {}).get("responses_per_s")
            bare = sides.get("(a) bare SCP", {}).get("responses_per_s")
            x = ratio(plugin, bare)
            if math.isnan(x):
                continue
            verdict = "met" if x >= BROAD_TARGET else "NOT met"
            lines.append(
                f"  {res['size']:>7,} {name}: plugin {plugin:,.0f} responses/s, (a) {bare:,.0f}"
                f" -> {x:.2f}x (target >= {BROAD_TARGET:g}x: {verdict})"
            )
    return ("Broad C-FIND target (issue 15):\n" + "\n".join(lines) + "\n\n") if lines else ""


def run(
    sizes: list[int], budget: float, max_queries: int, only: list[str] | None = None
) -> list[dict[str, Any]]:
    corpus.ensure(max(sizes))
    return [run_size(size, budget, max_queries, only) for size in sizes]
