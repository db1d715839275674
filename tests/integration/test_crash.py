"""Orthanc killed (SIGKILL) in the middle of a C-STORE burst: nothing answered Success is lost."""

from __future__ import annotations

import signal
import threading

from pydicom import Dataset

from dpp_tools.samples import make_library
from tests.orthanc_server import OrthancServer
from tests.peers import associate, c_find, c_get, find_identifier
from tests.waiting import eventually

SENDERS = 4
PER_SENDER = 200  # more than a sender can store before the kill


def test_sigkill_during_a_store_burst_loses_nothing_answered_success(make_server) -> None:
    orthanc: OrthancServer = make_server(
        config={"DicomModalities": {"scu": ["TEST_SCU", "127.0.0.1", 104]}},
        dpp={"SnapshotInterval": 1},
    )
    orthanc.start()
    confirmed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def send(batch: list[Dataset]) -> None:
        try:
            assoc = associate(orthanc)
        except AssertionError:
            return
        try:
            for ds in batch:
                if stop.is_set():
                    break
                answer = assoc.send_c_store(ds)
                if answer and answer.get("Status") == 0x0000:
                    with lock:
                        confirmed.append(str(ds.SOPInstanceUID))
        except Exception:
            pass  # the kill ends the association
        finally:
            if assoc.is_established:
                assoc.abort()

    library = list(make_library(SENDERS * PER_SENDER, seed=7300))
    senders = [
        threading.Thread(target=send, args=(library[i::SENDERS],), daemon=True)
        for i in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    eventually(lambda: len(confirmed) >= 40, step=0.05)  # asserted below
    assert orthanc.process is not None
    orthanc.process.send_signal(signal.SIGKILL)
    orthanc.process.wait(30)
    orthanc.process = None
    stop.set()
    for sender in senders:
        sender.join(30)
    assert len(confirmed) >= 40, "the burst never got going"

    orthanc.start()
    total = orthanc.get_json("/dpp/status")["Protocols"]["Total"]
    assert total >= len(confirmed)
    missing = []
    for chunk in range(0, len(confirmed), 50):
        uids = confirmed[chunk : chunk + 50]
        answers = c_find(orthanc, find_identifier(SOPInstanceUID=uids))
        found = {str(ds.SOPInstanceUID) for code, ds in answers if code == 0xFF00}
        missing += sorted(set(uids) - found)
    in_orthanc = [
        uid for uid in missing if orthanc.post("/tools/lookup", uid.encode(), "text/plain")
    ]
    assert not missing, (
        f"{len(missing)} of {len(confirmed)} confirmed protocols not found by C-FIND; "
        f"{len(in_orthanc)} of them are in Orthanc (an index gap, not a lost file)"
    )
    sample = confirmed[:: max(1, len(confirmed) // 10)]
    final, received = c_get(orthanc, sample, ae_title="TEST_SCU")
    assert int(final.Status) == 0x0000
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(sample)
    assoc = associate(orthanc)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
