"""Orthanc servers for the benchmarks, on data folders prepared once per library size.

Loading 100,000 protocols into Orthanc takes far longer than benchmarking
them, so each size gets a folder ``bench/results/orthanc/<factory>-<size>/``
that is loaded once (marked by ``loaded.json``) and reused by later runs.
Loading 100,000 protocols one at a time through the plugin's own paths
(C-STORE to its listener, ``POST /dpp/protocols``) runs at a few dozen per
second, and neither path may be used concurrently: two concurrent stores
stop the plugin (seen with Python plugin 4.0: one thread waits inside
``orthanc.RestApiPost`` while another waits for the interpreter in the
received-instance hook). So the default loader, ``normalized``, encodes
each file exactly as the plugin stores it (the plugin's own
``normalization.normalize`` and ``encode_part10``) on every core, and posts the
results to Orthanc's ``/instances`` from several threads; the plugin's
received-instance hook sees them already normalized and keeps them as they
are, and its index loads them from the change log like any instance. The
two plugin paths remain selectable (``--load-method``), one stream at a time.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom.sop_class import RawDataStorage

from bench import RESULTS, STACK, corpus
from bench.dimse import SCU_AET, DimseError, connect
from orthanc_dpp.model import normalization
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.sop import STORAGE_CLASSES
from orthanc_dpp.storage.part10 import encode_part10, parse_part10
from tests.orthanc_server import HttpError, OrthancServer

DESTINATION_AET = "BENCH_DEST"
TWIN_PATIENT = "BENCH-RAW-DATA-TWINS"
LOAD_WORKERS = 4
REST_BATCH = 50
#: Streams into the plugin's own store paths: one, as concurrent ones deadlock (see above).
PLUGIN_STREAMS = 1
LOAD_METHODS = ("normalized", "c-store", "rest")
#: What :func:`prepare` uses (``python -m bench --load-method`` sets it).
DEFAULT_LOAD_METHOD = "normalized"


def orthanc_config(destination_port: int | None) -> dict[str, Any]:
    """Orthanc settings shared by the plugin and Orthanc's own DICOM server in a run.

    Both apply Orthanc's modality list and ``DicomAlwaysAllow*`` options, so
    the same settings open C-FIND/C-GET/C-MOVE to the benchmark's client on
    both ports and name the C-MOVE destination for both.
    """
    modalities: dict[str, Any] = {SCU_AET: [SCU_AET, "127.0.0.1", 104]}
    if destination_port is not None:
        modalities[DESTINATION_AET] = [DESTINATION_AET, "127.0.0.1", destination_port]
    return {
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": modalities,
        "DicomScpTimeout": 300,
        "DicomScuTimeout": 300,
    }


#: The plugin's settings for the benchmark: its defaults (NetworkTimeout
#: included: sending a long answer counts as activity), except more room for
#: associations and a quicker change poll.
DPP_SETTINGS: dict[str, Any] = {
    "MaximumAssociations": 20,
    "ChangePollInterval": 1,
}


def folder_for(size: int, twins: bool = False) -> Path:
    """The prepared data folder of a library size.

    One per stack (``DPP_STACK``, set inside ``tools/stacks.py`` roots): an
    Orthanc of another version must not open, and perhaps upgrade, the
    host's database.
    """
    suffix = "-with-twins" if twins else ""
    if STACK:
        suffix += f"-{STACK}"
    return RESULTS / "orthanc" / f"{corpus.factory_version()}-{size}{suffix}"


def server(
    size: int, destination_port: int | None = None, *, twins: bool = False, **dpp: Any
) -> OrthancServer:
    """An (unstarted) Orthanc on the prepared folder of `size` (see :func:`prepare`)."""
    # DCMTK, under Orthanc's own DICOM server and SCU, leaves Nagle's
    # algorithm on unless TCP_NODELAY=1 is in its environment: its C-STORE
    # sub-operations then stall on delayed ACKs (about 20 instances/s instead
    # of 180 here), as pynetdicom's do (docs/design.md, fact 7), which the plugin
    # avoids. Orthanc inherits this process's environment: give the baseline
    # its best setting too.
    os.environ.setdefault("TCP_NODELAY", "1")
    folder = folder_for(size, twins)
    log = folder / "orthanc.log"
    if log.exists():
        log.unlink()  # one run's log only; it is appended to otherwise
    return OrthancServer(
        folder,
        dpp={**DPP_SETTINGS, **dpp},
        config=orthanc_config(destination_port),
    )


def _is_prepared(folder: Path, count: int) -> bool:
    marker = folder / "loaded.json"
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("count") == count
    except ValueError:
        return False


def prepare(size: int, method: str | None = None, *, twins: bool = False) -> dict[str, Any] | None:
    """Load the first `size` protocols into the folder of `size` unless already done.

    Returns the loading figures when it loaded, None when the folder was ready.
    With `twins`, the folder (another one) also holds a Raw Data twin of each
    protocol (see :func:`twin_file`), for Orthanc's own C-GET.
    The ``normalized`` method loads with the plugin's listener and index
    disabled (``Enabled: false``; its received-instance hook stays on): the
    index is then built from the change log at the next start, as after any
    restart, instead of one instance at a time while loading.
    """
    folder = folder_for(size, twins)
    expected = size * 2 if twins else size
    if _is_prepared(folder, expected):
        return None
    method = method or DEFAULT_LOAD_METHOD
    corpus.ensure(size)
    shutil.rmtree(folder, ignore_errors=True)
    orthanc = server(size, twins=twins, Enabled=method != "normalized")
    orthanc.start(wait_listener=method != "normalized", timeout=120)
    try:
        paths = corpus.files(size)
        print(f"  loading {size:,} protocols into Orthanc by {method} ({folder})", flush=True)
        figures = load(orthanc, paths, method)
        if twins:
            _post_all(orthanc, [twin_file(p) for p in paths])
        total = orthanc.get_json("/statistics")["CountInstances"]
        if total != expected:
            raise RuntimeError(f"Orthanc holds {total} instances, not {expected}")
    finally:
        orthanc.stop()
    marker = {"count": expected, "factory": corpus.factory_version(), **figures}
    (folder / "loaded.json").write_text(json.dumps(marker, indent=2))
    return figures


def load(orthanc: OrthancServer, paths: list[Path], method: str) -> dict[str, Any]:
    """Store `paths` into a running Orthanc by `method`, printing progress; return the figures."""
    loaders: dict[str, Callable[[OrthancServer, list[Path]], None]] = {
        "normalized": store_normalized,
        "c-store": store_dimse,
        "rest": store_rest,
    }
    started = time.monotonic()
    step = 5000
    for start in range(0, len(paths), step):
        part = paths[start : start + step]
        loaders[method](orthanc, part)
        rate = (start + len(part)) / (time.monotonic() - started)
        print(f"    {start + len(part):,}/{len(paths):,} stored ({rate:.0f}/s)", flush=True)
    seconds = time.monotonic() - started
    return {
        "method": method,
        "load_seconds": seconds,
        "rate_per_s": len(paths) / seconds if seconds else None,
    }


def _parallel(
    paths: list[Path], work: Callable[[queue.Queue[Path | None]], None], workers: int
) -> None:
    """Run `work` on `workers` threads that share a queue of paths; re-raise the first error."""
    todo: queue.Queue[Path | None] = queue.Queue()
    for path in paths:
        todo.put(path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work(todo)
        except BaseException as exc:
            errors.append(exc)
            while True:  # let the other workers finish quickly
                try:
                    todo.get_nowait()
                except queue.Empty:
                    break
            for _ in range(workers):
                todo.put(None)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for _ in threads:
        todo.put(None)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def store_dimse(orthanc: OrthancServer, paths: list[Path]) -> None:
    """C-STORE to the plugin's listener (PLUGIN_STREAMS associations)."""

    def work(todo: queue.Queue[Path | None]) -> None:
        try:
            assoc = connect(orthanc.dpp_port, orthanc.aet, list(STORAGE_CLASSES))
        except DimseError:
            raise RuntimeError("the DPP listener refused the loading association") from None
        try:
            while (path := todo.get()) is not None:
                status = assoc.send_c_store(path)
                if not status or int(status.Status) != 0:
                    raise RuntimeError(f"C-STORE of {path} failed: {status}")
        finally:
            assoc.release()

    _parallel(paths, work, PLUGIN_STREAMS)


def store_rest(orthanc: OrthancServer, paths: list[Path]) -> None:
    """Multipart ``POST /dpp/protocols``, REST_BATCH files a request (PLUGIN_STREAMS at once)."""

    def work(todo: queue.Queue[Path | None]) -> None:
        batch: list[bytes] = []
        finished = False
        while not finished:
            path = todo.get()
            if path is None:
                finished = True
            else:
                batch.append(path.read_bytes())
            if batch and (finished or len(batch) >= REST_BATCH):
                _post(orthanc, batch)
                batch = []

    _parallel(paths, work, PLUGIN_STREAMS)


def _post(orthanc: OrthancServer, files: list[bytes]) -> None:
    boundary = uuid.uuid4().hex
    parts = []
    for data in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts += [data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    answer = orthanc.post("/dpp/protocols", b"".join(parts), content_type)
    if answer.get("Failed"):
        raise RuntimeError(f"REST upload failed: {json.dumps(answer)[:500]}")


def normalized_file(path: Path) -> bytes:
    """`path` encoded exactly as the plugin stores it (default normalization labels)."""
    ds = parse_part10(path.read_bytes())
    normalization.normalize(ds, Normalization())
    return encode_part10(ds)


def twin_file(path: Path) -> bytes:
    """A Raw Data Storage instance with the protocol's content, for Orthanc's own C-GET.

    Orthanc 1.10.1's C-GET cannot send DPP instances: its listener does not
    accept their storage SOP classes in the requester's SCP-role contexts
    ("C-GET SCP: storeSCU: No presentation context"), see docs/design.md, fact 1.
    So its C-GET is measured on instances of the same count and size that it
    can send: each protocol re-labelled Raw Data Storage (a class Orthanc
    knows), with its own UIDs and a patient of its own, so the plugin, which
    indexes DPP classes only, never sees them.
    """
    ds = parse_part10(path.read_bytes())
    ds.SOPClassUID = RawDataStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["bench-twin", str(ds.SOPInstanceUID)])
    ds.PatientID = TWIN_PATIENT
    ds.PatientName = "Benchmark^Twins"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["bench-twin-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["bench-twin-series"])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return encode_part10(ds)


def twin_uids(paths: list[Path]) -> list[str]:
    """SOP Instance UIDs of the twins of `paths` (as :func:`twin_file` makes them)."""
    uids = []
    for path in paths:
        uid = str(dcmread(path, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        uids.append(generate_uid(entropy_srcs=["bench-twin", uid]))
    return uids


def _post_all(orthanc: OrthancServer, files: list[bytes]) -> None:
    """POST each file to ``/instances`` (LOAD_WORKERS at once)."""
    with _posting(orthanc) as (todo, _):
        for data in files:
            todo.put(data)


@contextlib.contextmanager
def _posting(
    orthanc: OrthancServer, maxsize: int = 0
) -> Iterator[tuple[queue.Queue[bytes | None], list[BaseException]]]:
    """LOAD_WORKERS threads POSTing what is put on the queue to ``/instances``.

    Yields the queue and the list of errors so far (producers may stop
    early); on exit waits for the posts and raises the first error.
    """
    todo: queue.Queue[bytes | None] = queue.Queue(maxsize=maxsize)
    errors: list[BaseException] = []

    def post() -> None:
        while (data := todo.get()) is not None:
            if errors:
                continue
            try:
                orthanc.request("POST", "/instances", data, {"Content-Type": "application/dicom"})
            except HttpError as exc:
                # Orthanc 1.10.1 answers 404 "Inexistent tag" for instances a
                # received-instance hook modified (docs/design.md, fact 3); the
                # count is checked at the end instead.
                if exc.status != 404:
                    errors.append(exc)
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=post) for _ in range(LOAD_WORKERS)]
    for thread in threads:
        thread.start()
    try:
        yield todo, errors
    finally:
        for _ in threads:
            todo.put(None)
        for thread in threads:
            thread.join()
    if errors:
        raise RuntimeError(f"storing into Orthanc failed: {errors[0]}")


def store_normalized(orthanc: OrthancServer, paths: list[Path]) -> None:
    """Files normalized on every core by the plugin's code, posted to ``/instances`` in parallel."""
    with _posting(orthanc, maxsize=200) as (todo, errors):
        workers = max(1, (os.cpu_count() or 1))
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for data in pool.imap(normalized_file, paths, chunksize=20):
                if errors:
                    break
                todo.put(data)
