"""Benchmark: protocol management for a fleet (issue 26, "Scale") over REST.

A library of N generated protocols (default 100,000) in version chains, with
Protocol Approvals, and M Performed Procedure Protocol references (default
1,000,000) is loaded once into an Orthanc data folder of its own; then the
plugin starts on it, without an index snapshot and again on the snapshot it
saved, and the management routes are timed against ``GET /dpp/protocols/{uid}``
asked in the same run (the issue's baseline): a page of the list, searches,
``?sort=usage``, ``?approval=approved``, ``/diff`` and ``/versions``.

How the library is made (cheapest honest way, every instance stored through
Orthanc's ``POST /instances`` with the plugin's index off, so that it is built
from the change log at the next start as after any restart):

* protocols: the cached corpus (:mod:`bench.corpus`), each normalized as the
  plugin stores it; in chains of :data:`CHAIN`, each protocol but the first of
  a chain names the one before it in Predecessor Protocol Sequence;
* approvals: every :data:`APPROVAL_EVERY`-th protocol gets a Protocol
  Approval made by the plugin's own builder, approving and rejecting in turn;
* usage: ceil(M / :data:`PER_INSTANCE`) CT and XA Performed Procedure
  Protocol instances (alternating), each referencing :data:`PER_INSTANCE`
  distinct protocols in its Referenced Defined Protocol Sequence, drawn with
  a skew (:func:`references`) so that a few protocols are used often, many
  rarely and some never: ``sort=usage`` and ``unused`` then have work to do.
  A reference is one item; the plugin counts each instance once per protocol.

The figures are latencies (median, p95) of one keep-alive HTTP client, each
request type for ``budget`` seconds; a ratio to the baseline and whether the
issue's target (list and search under 200 ms, diff, versions and usage under
50 ms) is met. Nothing is asserted: machines are shared and noisy.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import math
import multiprocessing
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from bench import RESULTS, STACK, corpus, orthanc_setup
from bench.child import rss_kib
from bench.report import percentile, ratio, table
from dpp_tools.samples import to_bytes
from orthanc_dpp.model import approval_instance, normalization, snapshot
from orthanc_dpp.model import usage as protocol_usage
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.usage import CT_PERFORMED, XA_PERFORMED
from orthanc_dpp.storage import approved_content
from orthanc_dpp.storage.part10 import encode_part10, parse_part10
from tests.orthanc_server import OrthancServer

#: Protocols per version chain (v1 <- v2 <- v3).
CHAIN = 3
#: One protocol in this many gets an approval (approving and rejecting in turn).
APPROVAL_EVERY = 10
#: Referenced Defined Protocol Sequence items per performed instance.
PER_INSTANCE = 100
#: Skew of the references: a protocol's index is N * random() ** SKEW.
SKEW = 3.0
PATIENT = "BENCH-FLEET"
#: Issue 26's targets, in ms.
LIST_TARGET_MS = 200.0
DETAIL_TARGET_MS = 50.0
#: Where the requests' UIDs and offsets are taken: this many spread over the library.
SPREAD = 50
STOP_TIMEOUT = 600.0
ASSERTED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PERFORMED_FROM = datetime(2026, 2, 1, 7, 0, tzinfo=UTC)


def predecessor(position: int) -> int | None:
    """Position of the protocol the one at `position` derives from (None: a chain's first)."""
    return position - 1 if position % CHAIN else None


def approval_of(position: int) -> str | None:
    """The assertion made about the protocol at `position` ("approved", "rejected" or None)."""
    if position % APPROVAL_EVERY:
        return None
    return "approved" if position % (2 * APPROVAL_EVERY) == 0 else "rejected"


def instance_count(references_wanted: int, per_instance: int = PER_INSTANCE) -> int:
    """Performed instances needed for `references_wanted` references, `per_instance` each."""
    return math.ceil(references_wanted / per_instance) if references_wanted > 0 else 0


def references(number: int, protocols: int, per_instance: int = PER_INSTANCE) -> list[int]:
    """The distinct protocol positions performed instance `number` references (deterministic).

    Skewed toward the library's first protocols (``N * random() ** SKEW``):
    the most used one is referenced by a large share of the instances, the
    last ones by few or none, as in a department where a few protocols are
    performed all day.
    """
    wanted = min(per_instance, protocols)
    rng = random.Random(number)
    chosen: dict[int, None] = {}  # ordered and distinct
    while len(chosen) < wanted:
        chosen[min(protocols - 1, int(protocols * rng.random() ** SKEW))] = None
    return list(chosen)


def performed_dataset(number: int, referenced: list[tuple[str, str]]) -> Dataset:
    """Performed Procedure Protocol instance `number` (CT if even, XA if odd) using `referenced`.

    `referenced` holds (SOP Class UID, SOP Instance UID) of the defined
    protocols; the instance is an ordinary patient instance (one patient,
    one study and one series per class) performed `number` minutes after
    :data:`PERFORMED_FROM`, so that LastUsed differs between protocols.
    """
    sop_class = CT_PERFORMED if number % 2 == 0 else XA_PERFORMED
    modality = "CT" if number % 2 == 0 else "XA"
    when = PERFORMED_FROM + timedelta(minutes=number)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench-fleet-performed", str(number)])
    ds.PatientID = PATIENT
    ds.PatientName = "Benchmark^Fleet"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["bench-fleet-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bench-fleet-series", modality])
    ds.Modality = modality
    ds.InstanceNumber = number + 1
    ds.PerformedProcedureStepStartDate = when.strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = when.strftime("%H%M%S")
    items = []
    for referenced_class, referenced_uid in referenced:
        item = Dataset()
        item.ReferencedSOPClassUID = referenced_class
        item.ReferencedSOPInstanceUID = referenced_uid
        items.append(item)
    ds.ReferencedDefinedProtocolSequence = items
    return ds  # to_bytes adds the file meta


def _stored(ds: Dataset) -> bytes:
    """`ds` encoded exactly as the plugin stores it (default normalization labels)."""
    normalization.normalize(ds, Normalization())
    return encode_part10(ds)


Made = tuple[str, str, list[bytes], tuple[str, str, str] | None]


def _protocol_files(task: tuple[int, Path, Path | None]) -> Made:
    """(worker) One protocol, with its predecessor named, and its approval if it gets one.

    Returns the protocol's class and UID, the files to store, and for an
    approval (its UID, the protocol's UID, the SHA-256 of the protocol's file):
    what the plugin records when it stores an approval itself (see
    :func:`_bind_approvals`).
    """
    position, path, before = task
    ds = parse_part10(path.read_bytes())
    if before is not None:
        known = dcmread(before, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        link = Dataset()
        link.ReferencedSOPClassUID = known.SOPClassUID
        link.ReferencedSOPInstanceUID = known.SOPInstanceUID
        ds.PredecessorProtocolSequence = [link]
    sop_class, uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    files = [_stored(ds)]
    assertion = approval_of(position)
    binding = None
    if assertion is not None:
        approval = approval_instance.build(
            sop_class,
            uid,
            approval_instance.ApprovalRequest(assertion, f"bench fleet, protocol {position}"),
            approval_instance.Asserter(None, "BENCH_FLEET", "bench"),
            ASSERTED,
            generate_uid(entropy_srcs=["bench-fleet-approval", uid]),
        )
        files.append(_stored(approval))
        binding = (str(approval.SOPInstanceUID), uid, hashlib.sha256(files[0]).hexdigest())
    return sop_class, uid, files, binding


def _bind_approvals(orthanc: OrthancServer, bindings: list[tuple[str, str, str]]) -> None:
    """Record in each approval the content it approved, as the plugin's store path does.

    The plugin keeps, in metadata ``approved_content.METADATA`` of each
    approval it stores, the SHA-256 of each named protocol's file; approvals
    stored around it (as here, through ``/instances``) approve nothing
    without it. The files are stored unchanged, so the digest of the bytes
    posted is the one the plugin would have recorded.
    """
    for approval_uid, protocol_uid, digest in bindings:
        found = orthanc.post("/tools/lookup", approval_uid.encode(), "text/plain")
        body = json.dumps({protocol_uid: digest}, sort_keys=True).encode()
        path = f"/instances/{found[0]['ID']}/metadata/{approved_content.METADATA}"
        orthanc.request("PUT", path, body, {"Content-Type": "text/plain"})


_LIBRARY: list[tuple[str, str]] = []


def _share_library(library: list[tuple[str, str]]) -> None:
    """(worker initializer) The protocols' identities, sent once per worker."""
    _LIBRARY[:] = library


def _performed_file(number: int) -> bytes:
    """(worker) Performed instance `number`, encoded."""
    picked = [_LIBRARY[p] for p in references(number, len(_LIBRARY), PER_INSTANCE)]
    return to_bytes(performed_dataset(number, picked))


def folder_for(protocols: int, references_wanted: int) -> Path:
    """The prepared data folder of a fleet library (one per stack, as orthanc_setup's)."""
    suffix = f"-{STACK}" if STACK else ""
    name = f"{corpus.factory_version()}-fleet-{protocols}-{references_wanted}{suffix}"
    return RESULTS / "orthanc" / name


def server(folder: Path, **dpp: Any) -> OrthancServer:
    """An (unstarted) Orthanc on `folder` with the benchmarks' settings (orthanc_setup's)."""
    return OrthancServer(
        folder, dpp={**orthanc_setup.DPP_SETTINGS, **dpp}, config=orthanc_setup.orthanc_config(None)
    )


def prepare(protocols: int, references_wanted: int) -> dict[str, Any]:
    """Load the fleet library unless its folder is ready; its marker (identities included)."""
    folder = folder_for(protocols, references_wanted)
    marker = folder / "loaded.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    corpus.ensure(protocols)
    shutil.rmtree(folder, ignore_errors=True)
    paths = corpus.files(protocols)
    tasks = [
        (i, p, None if (b := predecessor(i)) is None else paths[b]) for i, p in enumerate(paths)
    ]
    instances = instance_count(references_wanted)
    orthanc = server(folder, Enabled=False)
    orthanc.start(wait_listener=False, timeout=120)
    started = time.monotonic()
    library: list[tuple[str, str]] = []
    bindings: list[tuple[str, str, str]] = []
    workers = max(1, os.cpu_count() or 1)
    print(f"  loading {protocols:,} protocols and {instances:,} performed instances", flush=True)
    try:
        with orthanc_setup._posting(orthanc, maxsize=200) as (todo, errors):
            spawn = multiprocessing.get_context("spawn")
            with spawn.Pool(workers) as pool:
                for sop_class, uid, files, binding in pool.imap(_protocol_files, tasks, 20):
                    library.append((sop_class, uid))
                    if binding is not None:
                        bindings.append(binding)
                    for data in files:
                        todo.put(data)
                    if errors:
                        break
            protocols_s = time.monotonic() - started
            with spawn.Pool(workers, _share_library, (library,)) as pool:
                for data in pool.imap(_performed_file, range(instances), chunksize=10):
                    todo.put(data)
                    if errors:
                        break
        _bind_approvals(orthanc, bindings)
        expected = protocols + len(bindings) + instances
        total = orthanc.get_json("/statistics")["CountInstances"]
        if total != expected:
            raise RuntimeError(f"Orthanc holds {total} instances, not {expected}")
    finally:
        orthanc.stop(STOP_TIMEOUT)
    figures = {
        "protocols": protocols,
        "approvals": len(bindings),
        "performed_instances": instances,
        "references": sum(len(references(n, protocols)) for n in range(instances)),
        "load_protocols_s": protocols_s,
        "load_s": time.monotonic() - started,
        "library": library,
    }
    marker.write_text(json.dumps(figures))
    return figures


def _drop_snapshot(folder: Path) -> None:
    """Delete the index snapshot and the usage saved with it (Orthanc stopped)."""
    properties = (snapshot.PROPERTY, protocol_usage.PROPERTY)
    with contextlib.closing(sqlite3.connect(folder / "db" / "index")) as db, db:
        db.executemany(
            "DELETE FROM GlobalProperties WHERE property = ?", [(p,) for p in properties]
        )


def _start(folder: Path) -> tuple[dict[str, Any], OrthancServer]:
    """Start the plugin on `folder`; time until the index (usage included) is ready."""
    orthanc = server(folder)
    started = time.monotonic()
    orthanc.start(timeout=7200)
    ready = time.monotonic() - started
    status = orthanc.get_json("/dpp/status")
    top = orthanc.get_json("/dpp/protocols?sort=usage&limit=1")["Protocols"]
    figures = {
        "ready_s": ready,
        "load_seconds": status["Index"].get("LoadSeconds"),
        "indexed": status["Protocols"]["Total"],
        "most_used_count": top[0]["Usage"]["Count"] if top else None,
        "rss_kib": rss_kib(orthanc.process.pid) if orthanc.process else None,
    }
    return figures, orthanc


def startup(folder: Path) -> tuple[dict[str, Any], OrthancServer]:
    """A start without a snapshot (every protocol and performed instance read), then a restart."""
    _drop_snapshot(folder)
    first, orthanc = _start(folder)
    orthanc.stop(STOP_TIMEOUT)
    restart, orthanc = _start(folder)
    return {"first_start": first, "restart": restart}, orthanc


@contextlib.contextmanager
def _client(port: int) -> Iterator[Callable[[str], tuple[float, Any]]]:
    """A keep-alive HTTP client: a function GETting a path; its seconds and answer's ``Total``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def get(path: str) -> tuple[float, Any]:
        started = time.perf_counter()
        conn.request("GET", path)
        answer = conn.getresponse()
        body = answer.read()
        seconds = time.perf_counter() - started
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {answer.status} {body[:300]!r}")
        return seconds, json.loads(body).get("Total")

    try:
        yield get
    finally:
        conn.close()


def requests(library: list[tuple[str, str]]) -> dict[str, tuple[list[str], float | None]]:
    """Each request type: the paths it cycles through, and its target in ms (None: baseline).

    UIDs and offsets are spread over the library so that no answer is the
    same twice in a row; diff and versions take protocols of one chain.
    """
    count = len(library)
    spread = sorted({k * count // SPREAD for k in range(SPREAD)})
    uids = [library[p][1] for p in spread]
    firsts = sorted({p - p % CHAIN for p in spread if p - p % CHAIN + 1 < count})
    pairs = [(library[p][1], library[p + 1][1]) for p in firsts]
    most_used = [library[p][1] for p in range(min(SPREAD, count))]
    return {
        "GET /dpp/protocols/{uid} (baseline)": ([f"/dpp/protocols/{u}" for u in uids], None),
        "usage: GET /dpp/protocols/{uid} of a used one": (
            [f"/dpp/protocols/{u}" for u in most_used],
            DETAIL_TARGET_MS,
        ),
        "page: ?offset=&limit=100": (
            [f"/dpp/protocols?offset={p}&limit=100" for p in spread],
            LIST_TARGET_MS,
        ),
        "search: ?name=Head&limit=100": (["/dpp/protocols?name=Head&limit=100"], LIST_TARGET_MS),
        "search: ?modality=CT&code=RPID22": (
            ["/dpp/protocols?modality=CT&code=RPID22&limit=100"],
            LIST_TARGET_MS,
        ),
        "?sort=usage&limit=100": (["/dpp/protocols?sort=usage&limit=100"], LIST_TARGET_MS),
        "?unused=true&limit=100": (["/dpp/protocols?unused=true&limit=100"], LIST_TARGET_MS),
        "?approval=approved&limit=100": (
            ["/dpp/protocols?approval=approved&limit=100"],
            LIST_TARGET_MS,
        ),
        "/diff (v1 against v2)": (
            [f"/dpp/protocols/{a}/diff/{b}" for a, b in pairs],
            DETAIL_TARGET_MS,
        ),
        "/versions": ([f"/dpp/protocols/{u}/versions" for u in uids], DETAIL_TARGET_MS),
    }


def measure(
    get: Callable[[str], tuple[float, Any]], paths: list[str], budget: float, most: int
) -> dict[str, Any]:
    """`paths` asked in turn for `budget` seconds (at least 3, at most `most`); the figures."""
    _, total = get(paths[0])  # warm-up
    latencies: list[float] = []
    started = time.monotonic()
    while len(latencies) < most and (len(latencies) < 3 or time.monotonic() - started < budget):
        seconds, total = get(paths[len(latencies) % len(paths)])
        latencies.append(seconds)
    return {
        "requests": len(latencies),
        "total": total,
        "median_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
    }


def run(protocols: int, references_wanted: int, budget: float, most: int) -> dict[str, Any]:
    """Prepare (once), start twice, time every request type; the figures."""
    print(f"\n== Fleet: {protocols:,} protocols, {references_wanted:,} references", flush=True)
    prepared = prepare(protocols, references_wanted)
    library = prepared.pop("library")
    result: dict[str, Any] = {"library": prepared}
    started, orthanc = startup(folder_for(protocols, references_wanted))
    result["startup"] = started
    measured: dict[str, Any] = {}
    try:
        with _client(orthanc.http_port) as get:
            # The index feed works out every entry's search keys right after the
            # index is ready (search.prepare), on its own thread; a search asked
            # meanwhile works out the rest itself. One search first, so that every
            # figure below (the baseline included) is of a server a few seconds
            # after its start, not of one still busy with that.
            seconds, _ = get("/dpp/protocols?name=a&limit=1")
            result["first_search_ms"] = seconds * 1000
            print(f"  first search after ready{'':<24} {seconds * 1000:8.2f} ms", flush=True)
            for name, (paths, target) in requests(library).items():
                measured[name] = {**measure(get, paths, budget, most), "target_ms": target}
                print(f"  {name:<48} {measured[name]['median_ms']:8.2f} ms", flush=True)
    finally:
        orthanc.stop(STOP_TIMEOUT)
    result["requests"] = measured
    return result


def _under(value: float, target: float | None) -> str:
    if target is None:
        return "-"
    return "yes" if value < target else "NO"


def tables(result: dict[str, Any]) -> str:
    """The printed report: the library, start-up, and each request against the baseline."""
    lib = result["library"]
    size = (
        f"{lib['protocols']:,} protocols (+{lib['approvals']:,} approvals, chains of {CHAIN}), "
        f"{lib['references']:,} references in {lib['performed_instances']:,} performed instances"
    )
    starts = result["startup"]
    out = table(
        f"Fleet start-up, {size}",
        ["start", "ready s", "LoadSeconds", "indexed", "top Usage.Count", "RSS MiB"],
        [
            [
                label,
                s["ready_s"],
                s["load_seconds"],
                s["indexed"],
                s["most_used_count"],
                (s["rss_kib"] or math.nan) / 1024,
            ]
            for label, s in (
                ("without snapshot", starts["first_start"]),
                ("restart", starts["restart"]),
            )
        ],
    )
    measured = result["requests"]
    base = next(iter(measured.values()))["median_ms"]
    rows = [
        [
            name,
            m["requests"],
            m["total"],
            m["median_ms"],
            m["p95_ms"],
            ratio(m["median_ms"], base),
            m["target_ms"],
            _under(m["median_ms"], m["target_ms"]),
            _under(m["p95_ms"], m["target_ms"]),
        ]
        for name, m in measured.items()
    ]
    headers = [
        "request",
        "n",
        "Total",
        "median ms",
        "p95 ms",
        "x baseline",
        "target ms",
        "median <",
        "p95 <",
    ]
    return out + table(f"Fleet REST, {size}", headers, rows)
