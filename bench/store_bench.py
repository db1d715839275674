"""Benchmark 3: ingest. C-STORE to the DPP listener and ``POST /dpp/protocols``, with baselines.

C-STORE: the same protocols (``count`` per measurement, taken from the cached
library) are sent by 1, 2, 4 and 8 concurrent associations, first to a bare
pynetdicom storage SCP that decodes each dataset and keeps it in memory
(``python -m bench.store_bench scp PORT AET``, its own process: the ceiling
of this stack), then to the plugin's listener in an Orthanc started on a
fresh temporary data folder for each measurement (all protocols go into one
Orthanc series, whose size changes Orthanc's own cost per store). The
senders are pynetdicom SCUs with TCP_NODELAY, one child process per
association (``python -m bench.store_bench send ...``), files sent as
stored (pynetdicom does not decode a file it sends). Every plugin
measurement is checked afterwards: Orthanc must hold exactly the
instances that were acknowledged (the speed may not come from answering
early).

REST: for 1 and 2 client threads (keep-alive connections), ``count`` other
protocols are POSTed to Orthanc's own ``POST /instances`` (one file a
request, what that route takes) of a fresh Orthanc whose plugin is
disabled, then to the plugin's ``/dpp/protocols`` (multipart, ``rest_batch``
files a request) of another fresh Orthanc. Orthanc's own
route gets each file as the plugin stores it (normalized beforehand and not
timed): without the patient/study/series identity the plugin adds, Orthanc
refuses a DPP file.

``profile`` runs py-spy on Orthanc during the one-sender C-STORE and the
first REST measurement and prints where the plugin's time goes
(bench/README.md, "Profiles"; bench/store_profile.py). The report printed
after the run is bench/store_report.py's.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import math
import multiprocessing
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import STACK, corpus, orthanc_setup
from bench.child import Child, serve_until_stopped
from bench.store_profile import Profiler
from bench.store_report import BARE, NATIVE, PLUGIN, REST, one_line
from tests.orthanc_server import OrthancServer, free_port

SENDERS = (1, 2, 4, 8)
REST_THREADS = (1, 2)
BARE_AET = "BENCH_STORE"
#: Longest a measurement may take before the run fails (bounded loops only).
MEASURE_TIMEOUT = 900.0
#: Longest wait for one C-STORE response: a lost response (see :func:`sender`)
#: is reported as a failure instead of hanging the run.
STALL_TIMEOUT = 60.0


# -- the processes: bare SCP and sender -------------------------------------------


def bare_scp(port: int, aet: str) -> None:
    """A pynetdicom storage SCP that decodes every dataset and keeps it in a list.

    Tuned like the plugin's listener: pynetdicom's per-message log handlers off.
    """
    from pynetdicom import AE, evt
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False

    from orthanc_dpp.dicom.connections import set_tcp_nodelay
    from orthanc_dpp.model.sop import STORAGE_CLASSES, TRANSFER_SYNTAXES

    kept: list[Any] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with lock:
            kept.append(ds)
        return 0x0000

    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 20
    ae.network_timeout = None
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_C_STORE, on_store)]
    serve_until_stopped(ae, port, handlers)


def sender(port: int, aet: str, list_file: str, start_at: float) -> None:
    """Send the files listed in `list_file` over one association from `start_at` (wall clock).

    One process per association: several pynetdicom associations in one
    process occasionally lost a C-STORE response under load (both ends idle,
    the sender waiting), and they shared one interpreter lock. Prints the
    wall-clock times of the first C-STORE and of the last response.
    """
    from bench.dimse import DimseError, connect
    from orthanc_dpp.model.sop import STORAGE_CLASSES

    paths = [p for p in Path(list_file).read_text().split("\n") if p]
    try:
        assoc = connect(port, aet, sorted(STORAGE_CLASSES))
    except DimseError as exc:
        print(json.dumps({"event": "done", "error": str(exc)}), flush=True)
        return
    assoc.dimse_timeout = STALL_TIMEOUT
    time.sleep(max(0.0, start_at - time.time()))
    stored = failed = 0
    error = None
    started = time.time()
    for path in paths:
        answer = assoc.send_c_store(path)
        if answer and int(answer.Status) == 0:
            stored += 1
            continue
        failed += 1
        error = error or f"{path}: {answer!r}"[:300]
        if not assoc.is_established:
            break
    ended = time.time()
    with contextlib.suppress(Exception):
        assoc.release()
    line = {
        "event": "done",
        "stored": stored,
        "failed": failed,
        "started": started,
        "ended": ended,
        "error": error,
    }
    print(json.dumps(line), flush=True)


# -- measurements ---------------------------------------------------------------


def _send(port: int, aet: str, senders: int, paths: Sequence[Path], work: Path) -> dict[str, Any]:
    """One measurement: `senders` sender processes, one association each; the figures.

    Files are dealt round-robin; every sender starts at the same wall-clock
    time once all have had time to connect, and the figure is the instances
    acknowledged from the first C-STORE to the last response.
    """
    start_at = time.time() + 3.0 + senders
    children = []
    try:
        for number in range(senders):
            list_file = work / f"send-{uuid.uuid4().hex}.txt"
            list_file.write_text("\n".join(str(p) for p in paths[number::senders]))
            args = (str(port), aet, str(list_file), repr(start_at))
            children.append(Child("bench.store_bench", "send", *args))
        lines = [child.wait_event("done", MEASURE_TIMEOUT) for child in children]
    finally:
        for child in children:
            child.stop()
    started = [line["started"] for line in lines if "started" in line]
    ended = [line["ended"] for line in lines if "ended" in line]
    seconds = max(ended) - min(started) if started else None
    stored = sum(line.get("stored", 0) for line in lines)
    errors = [line["error"] for line in lines if line.get("error")]
    return {
        "stored": stored,
        "failed": sum(line.get("failed", 0) for line in lines),
        "seconds": seconds,
        "per_s": stored / seconds if seconds else None,
        "error": errors[0] if errors else None,
    }


def _rest_post(
    orthanc: OrthancServer, uri: str, bodies: Sequence[tuple[bytes, str, int]], threads: int
) -> dict[str, Any]:
    """POST `bodies` (body, content type, files in it) from `threads` keep-alive clients."""
    todo: queue.Queue[tuple[bytes, str, int] | None] = queue.Queue()
    for body in bodies:
        todo.put(body)
    for _ in range(threads):
        todo.put(None)
    stored = [0] * threads
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def work(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", orthanc.http_port, timeout=300)
        start.wait()
        try:
            while (item := todo.get()) is not None:
                body, content_type, _files = item
                connection.request("POST", uri, body, {"Content-Type": content_type})
                answer = connection.getresponse()
                text = answer.read()
                if answer.status != 200:
                    errors.append(f"HTTP {answer.status}: {text[:300]!r}")
                    continue
                if uri == "/instances":
                    stored[number] += 1
                else:
                    stored[number] += int(json.loads(text).get("Stored", 0))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join(MEASURE_TIMEOUT)
    seconds = time.perf_counter() - started
    total = sum(stored)
    return {
        "stored": total,
        "failed": sum(files for _, _, files in bodies) - total,
        "seconds": seconds,
        "per_s": total / seconds if seconds else None,
        "error": errors[0] if errors else None,
    }


def _multipart(files: Sequence[bytes]) -> tuple[bytes, str, int]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for data in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts += [data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(parts), content_type, len(files)


def _instances(orthanc: OrthancServer) -> int:
    return int(orthanc.get_json("/statistics")["CountInstances"])


def _platform(orthanc: OrthancServer) -> dict[str, Any]:
    """What the figures depend on: Orthanc, its Python plugin, and whether calls release the lock.

    Scaling with concurrent associations hangs on the last: a plugin that
    keeps Python's interpreter lock while Orthanc stores lets no other
    association's Python run meanwhile.
    """
    platform = orthanc.get_json("/dpp/status").get("Platform", {})
    return {
        "stack": STACK or "host",
        "orthanc": platform.get("Orthanc"),
        "python_plugin": platform.get("PythonPlugin"),
        "python": platform.get("Python"),
        "lock_released_in_calls": platform.get("InterpreterLockReleasedInCalls"),
    }


#: The plugin's C-STORE timing metrics (docs/operations.md, "Metrics"), as Orthanc prints them.
_STORE_METRIC = re.compile(
    r"^orthanc_dpp_(c_store_seconds_count|c_store_(?:orthanc_)?seconds_sum) (\S+)"
)


def _store_times(orthanc: OrthancServer) -> dict[str, float]:
    """Mean milliseconds per stored C-STORE in the handler, and of them in Orthanc's own store.

    From the plugin's metrics, published once a second: waits for the count
    to stop moving.
    """
    values: dict[str, float] = {}
    for _ in range(10):
        time.sleep(1.2)
        previous = values
        text = orthanc.get("/tools/metrics-prometheus").decode()
        values = {m[1]: float(m[2]) for m in map(_STORE_METRIC.match, text.splitlines()) if m}
        if values and values == previous:
            break
    count = values.get("c_store_seconds_count", 0.0)
    if not count:
        return {}
    return {
        "handler_ms": values["c_store_seconds_sum"] / count * 1000,
        "orthanc_store_ms": values["c_store_orthanc_seconds_sum"] / count * 1000,
    }


def _decode_ms(paths: Sequence[Path]) -> float:
    """Mean milliseconds to read one file as the bare SCP's handler reads its dataset.

    Timed here, on the same files: ``dcmread`` of the whole file, a little
    more than pynetdicom's ``event.dataset`` (the dataset alone), so the
    ceiling computed with it is, if anything, too high.
    """
    import pydicom

    datas = [path.read_bytes() for path in paths]
    started = time.perf_counter()
    for data in datas:
        pydicom.dcmread(io.BytesIO(data))
    return (time.perf_counter() - started) / len(datas) * 1000 if datas else math.nan


def _normalized(paths: Sequence[Path]) -> list[bytes]:
    workers = max(1, os.cpu_count() or 1)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(orthanc_setup.normalized_file, paths, chunksize=50)


def run(
    count: int,
    senders: Sequence[int] = SENDERS,
    rest_threads: Sequence[int] = REST_THREADS,
    rest_batch: int = 20,
    profile: bool = False,
) -> dict[str, Any]:
    """C-STORE (bare SCP vs plugin) per sender count, then REST (Orthanc vs plugin) per threads.

    Each measurement stores protocols of its own (a slice of the library).
    """
    print(f"\n== C-STORE and REST upload, {count:,} protocols per measurement", flush=True)
    measurements = len(senders) + len(rest_threads)
    corpus.ensure(count * measurements)
    paths = corpus.files(count * measurements)
    slices = [paths[i * count : (i + 1) * count] for i in range(measurements)]
    sizes = corpus.sizes(paths[:count])
    result: dict[str, Any] = {
        "count": count,
        "mean_size_kib": sizes.mean_kib,
        "rest_batch": rest_batch,
        "c_store": {},
        "rest": {},
    }
    os.environ.setdefault("TCP_NODELAY", "1")  # as orthanc_setup.server: Orthanc's best setting
    work = Path(tempfile.mkdtemp(prefix="dpp-store-bench-"))
    scp_port = free_port()
    scp = Child("bench.store_bench", "scp", str(scp_port), BARE_AET)
    try:
        scp.wait_event("ready", 60)
        for number, n in enumerate(senders):
            part = slices[number]
            bare = _send(scp_port, BARE_AET, n, part, work)
            print(f"  C-STORE {n} sender(s) {BARE:<8} {one_line(bare)}", flush=True)
            with _orthanc(work / f"c-store-{n}", enabled=True) as plugin:
                assert plugin.process is not None
                spy = (
                    Profiler(plugin.process.pid, work / "c-store.txt")
                    if profile and n == 1
                    else None
                )
                ours = _send(plugin.dpp_port, plugin.aet, n, part, work)
                if spy is not None:
                    result["profile_c_store"] = spy.stop("handlers._store")
                _check_held(ours, _instances(plugin))
                ours.update(_store_times(plugin))
                result.setdefault("platform", _platform(plugin))
            print(f"  C-STORE {n} sender(s) {PLUGIN:<8} {one_line(ours)}", flush=True)
            result["c_store"][str(n)] = {BARE: bare, PLUGIN: ours}
    finally:
        scp.stop()
    result["bare_decode_ms"] = _decode_ms(slices[0][:500])
    try:
        rest_slices = slices[len(senders) :]
        for threads, part in zip(rest_threads, rest_slices, strict=True):
            files = _normalized(part)
            with _orthanc(work / f"native-{threads}", enabled=False) as native:
                singles = [(data, "application/dicom", 1) for data in files]
                baseline = _rest_post(native, "/instances", singles, threads)
                _check_held(baseline, _instances(native))
            print(f"  REST {threads} thread(s) {NATIVE}: {one_line(baseline)}", flush=True)
            bodies = [
                _multipart([p.read_bytes() for p in part[i : i + rest_batch]])
                for i in range(0, len(part), rest_batch)
            ]
            with _orthanc(work / f"rest-{threads}", enabled=True) as plugin:
                assert plugin.process is not None
                first = threads == rest_threads[0]
                spy = Profiler(plugin.process.pid, work / "rest.txt") if profile and first else None
                uploaded = _rest_post(plugin, "/dpp/protocols", bodies, threads)
                if spy is not None:
                    result["profile_rest"] = spy.stop("protocols.upload")
                _check_held(uploaded, _instances(plugin))
            print(f"  REST {threads} thread(s) {REST}: {one_line(uploaded)}", flush=True)
            result["rest"][str(threads)] = {NATIVE: baseline, REST: uploaded}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


@contextlib.contextmanager
def _orthanc(folder: Path, *, enabled: bool) -> Iterator[OrthancServer]:
    """An Orthanc on the fresh data folder `folder`, the plugin enabled or not, stopped after."""
    server = OrthancServer(
        folder,
        # Every sender comes from 127.0.0.1: room for 8 (the default is 5 per address).
        dpp={**orthanc_setup.DPP_SETTINGS, "MaximumConnectionsPerAddress": 16, "Enabled": enabled},
        config=orthanc_setup.orthanc_config(None),
    )
    server.start(wait_listener=enabled, timeout=120)
    try:
        yield server
    finally:
        server.stop(check=False)


def _check_held(figures: dict[str, Any], held: int) -> None:
    """Orthanc must hold exactly what was acknowledged: nothing answered early."""
    figures["orthanc_holds"] = held
    if held != figures.get("stored", 0) and not figures.get("error"):
        figures["error"] = f"{figures.get('stored')} acknowledged but Orthanc holds {held}"


if __name__ == "__main__":
    if sys.argv[1] == "scp":
        bare_scp(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "send":
        sender(int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
