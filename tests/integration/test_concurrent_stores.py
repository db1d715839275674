"""Many senders of one SOP Instance UID at once, also while the index loads: one protocol.

Stores used to be accepted while the index was still loading (the plugin
could not know the UID was stored already) and the claim on a UID was
released before the index knew the new instance, so one UID could end up
as two Orthanc instances, and with ``OverwriteInstances`` the older could
win later. Each sender here must get Success or a clear refusal, and
afterwards Orthanc holds one instance of the UID, C-FIND answers it once,
and C-GET sends what C-FIND shows.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset

from dpp_tools.samples import make_library, make_protocol, to_bytes
from orthanc_dpp.model import snapshot
from tests.orthanc_server import HttpError, OrthancServer
from tests.peers import associate, c_find, c_get, find_identifier

#: Protocols in the library: enough for the index load (FastIndexLoad false) to take a while.
LIBRARY = 1500
SENDERS = 8
SENDS = 4
#: Give up on a phase after this long, whatever happens (bounded test).
PHASE_SECONDS = 120.0


@pytest.fixture(scope="module", params=[False, True], ids=["keeps-first", "overwrites"])
def orthanc(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(
        tmp_path_factory.mktemp("concurrent"),
        dpp={"FastIndexLoad": False},
        config={
            "OverwriteInstances": request.param,
            "DicomModalities": {"getter": ["GETTER", "127.0.0.1", 104]},
        },
    )
    with server:
        datasets = list(make_library(LIBRARY, seed=31000, kinds=("CT", "XA")))
        for start in range(0, len(datasets), 250):
            content_type, body = multipart([to_bytes(ds) for ds in datasets[start : start + 250]])
            answer = server.post("/dpp/protocols", body, content_type)
            assert answer["Failed"] == 0
        yield server


def multipart(files: list[bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in files
    )
    return (
        f'multipart/related; type="application/dicom"; boundary={boundary}',
        body + f"--{boundary}--\r\n".encode(),
    )


def variant(base: Dataset, sender: int, send: int) -> Dataset:
    """``base`` with its own name, and (every other sender) its own patient/study/series."""
    ds = copy.deepcopy(base)
    ds.ProtocolName = f"sender {sender} send {send}"
    if sender % 2:
        ds.PatientID = f"P{sender}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.9{sender}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.9{sender}.1"
    return ds


#: What a refused sender may be told (C-STORE Error Comment, REST "Error"), all clear reasons.
CLEAR_REFUSALS = (
    "protocol index is loading",
    "SOP Instance UID being stored by another request",
    "SOP Instance UID stored under other patient/study/series",
    "SOP Instance UID already stored with other content",
)


def send(orthanc: OrthancServer, ds: Dataset, over_rest: bool) -> tuple[str, Any, str]:
    """One store: ("rest"|"dimse", status, reason); ("none", None, why) if nothing answered."""
    if over_rest:
        request = urllib.request.Request(
            orthanc.url + "/dpp/protocols",
            data=to_bytes(ds),
            method="POST",
            headers={"Content-Type": "application/dicom"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return "rest", answer.status, ""
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
            reason = body["Files"][0]["Error"] if "Files" in body else body["Error"]
            if exc.code == 503:
                assert exc.headers.get("Retry-After"), f"503 without Retry-After: {reason}"
            return "rest", exc.code, reason
        except OSError as exc:
            return "none", None, str(exc)
    try:
        assoc = associate(orthanc)
    except (AssertionError, OSError) as exc:  # the listener is not up yet
        return "none", None, str(exc)
    try:
        answer = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if "Status" not in answer:
        return "none", None, "no C-STORE response"
    return "dimse", int(answer.Status), str(answer.get("ErrorComment", ""))


def storm(orthanc: OrthancServer, base: Dataset, until: threading.Event | None = None) -> list:
    """SENDERS threads, each up to SENDS stores of ``base``'s UID, half over REST, half C-STORE.

    With ``until``, a thread stops early once it is set (the index is ready).
    """
    results: list[tuple[str, Any, str]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + PHASE_SECONDS

    def sender(number: int) -> None:
        answered = 0
        for attempt in range(SENDS * 100):  # unanswered tries (listener not up) do not count
            if time.monotonic() > deadline or answered >= SENDS:
                return
            result = send(orthanc, variant(base, number, attempt), over_rest=number < SENDERS // 2)
            with lock:
                results.append(result)
            answered += result[0] != "none"
            if until is not None and until.is_set():
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PHASE_SECONDS + 30)
    return results


def check_answers(results: list[tuple[str, Any, str]]) -> None:
    """Every answered store: Success, or a refusal that says why."""
    for kind, status, reason in results:
        if kind == "none":
            continue
        if status in (0x0000, 200):
            continue
        assert any(reason.startswith(text) or text in reason for text in CLEAR_REFUSALS), (
            kind,
            hex(status) if kind == "dimse" else status,
            reason,
        )
        if "loading" in reason:
            assert status == (0xA700 if kind == "dimse" else 503)


def one_protocol(orthanc: OrthancServer, uid: str) -> None:
    """Orthanc holds ``uid`` once; C-FIND answers it once; C-GET sends what C-FIND shows."""
    found = orthanc.request(
        "POST",
        "/tools/find",
        json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": uid}}).encode(),
        {"Content-Type": "application/json"},
    )
    assert len(json.loads(found[2])) == 1, f"Orthanc holds {uid} more than once: {found[2]!r}"
    answers = c_find(orthanc, find_identifier(SOPInstanceUID=uid, ProtocolName=""))
    matches = [ds for code, ds in answers if code == 0xFF00]
    assert answers[-1][0] == 0x0000 and len(matches) == 1
    final, received = c_get(orthanc, [uid])
    assert int(final.Status) == 0x0000 and len(received) == 1
    assert received[0].ProtocolName == matches[0].ProtocolName
    assert orthanc.get_json(f"/dpp/protocols/{uid}")["ProtocolName"] == matches[0].ProtocolName


def drop_snapshot(orthanc: OrthancServer) -> None:
    """Delete the index snapshot, Orthanc stopped: the next start reads every protocol."""
    with contextlib.closing(sqlite3.connect(orthanc.folder / "db" / "index")) as db, db:
        db.execute("DELETE FROM GlobalProperties WHERE property = ?", (snapshot.PROPERTY,))


def test_concurrent_senders_of_one_uid_make_one_protocol(orthanc: OrthancServer) -> None:
    base = make_protocol(31990, "CT")
    results = storm(orthanc, base)
    assert sum(1 for kind, *_ in results if kind != "none") >= SENDERS * SENDS
    check_answers(results)
    one_protocol(orthanc, base.SOPInstanceUID)


def test_senders_during_the_index_load_get_a_clear_answer_and_make_one_protocol(
    orthanc: OrthancServer,
) -> None:
    # The library's last protocol: the last the load reads (change-log order).
    *_, stored = make_library(LIBRARY, seed=31000, kinds=("CT", "XA"))
    orthanc.stop()
    drop_snapshot(orthanc)
    orthanc.start(wait_listener=False)
    ready = threading.Event()
    loading: list[bool] = []

    def watch() -> None:
        deadline = time.monotonic() + PHASE_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, HttpError):
                state = orthanc.get_json("/dpp/status")["Index"]["Ready"]
                loading.append(not state)
                if state:
                    ready.set()
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results = storm(orthanc, stored, until=ready)
    watcher.join()
    assert ready.is_set() and any(loading), "the index load was not seen"
    one_protocol(orthanc, stored.SOPInstanceUID)
    check_answers(results)
    # Stores did arrive during the load, and were told so.
    assert any("loading" in reason for _, _, reason in results), results
