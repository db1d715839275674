"""Two Orthanc nodes with the plugin on one PostgreSQL database (scale-out).

Both nodes run Debian's Orthanc with our plugin and Orthanc's PostgreSQL
index and storage plugins (``Lock: false``, docs/design.md, fact 15) on a
throwaway cluster from ``tests/postgres.py``. What one node stores, the
other must find and return; what one deletes, the other must stop
answering; concurrent stores through both must neither lose nor duplicate.

"Found" is checked by every function in ``FINDERS`` (REST listing, REST
look-up, C-FIND) and "retrieved" by every one in ``RETRIEVERS`` (REST
download, C-GET).

The nodes use the production ``ChangePollInterval`` (1 s): that is what
bounds how soon B sees A's stores. ``ReconcileInterval`` is 1 s here (60 s
by default): it bounds how soon A notices B's deletions (docs/design.md, fact 10).
"""

from __future__ import annotations

import io
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from dpp_tools.samples import make_library, make_protocol, to_bytes
from orthanc_dpp.model.sop import DPP_FIND
from tests.orthanc_server import PYTHON_PLUGIN, HttpError, OrthancServer
from tests.peers import associate, c_get
from tests.postgres import (
    PG_BIN,
    PG_INDEX_PLUGIN,
    PG_STORAGE_PLUGIN,
    PostgresCluster,
    postgres_available,
)
from tests.waiting import eventually, seconds_until

pytestmark = pytest.mark.skipif(
    not postgres_available(),
    reason=f"PostgreSQL server binaries ({PG_BIN}) or orthanc-postgresql are not installed",
)

CHANGE_POLL_INTERVAL = 1.0  # the plugin's default
RECONCILE_INTERVAL = 1.0
# Bounds of the waits, generous: what B sees of A's work comes through
# Orthanc's change log and the plugin's poll of it (ChangePollInterval) and
# reconciliation (ReconcileInterval), about 1 s, as the printed figures
# show; speed is for the benchmarks, a test only waits for the condition.
FOUND_WITHIN = 60.0
GONE_WITHIN = 60.0
# After PostgreSQL comes back, the nodes reconnect on their next request.
RECOVERED_WITHIN = 120.0
CONCURRENT_PER_NODE = 50


# -- ways of finding and retrieving a protocol on one node ---------------------


def found_in_list(node: OrthancServer, ds: Dataset) -> bool:
    """``GET /dpp/protocols`` (all pages) lists it."""
    return ds.SOPInstanceUID in listed_uids(node)


def found_by_uid(node: OrthancServer, ds: Dataset) -> bool:
    """``GET /dpp/protocols/{uid}`` answers with it."""
    try:
        return node.get_json(f"/dpp/protocols/{ds.SOPInstanceUID}")["SOPInstanceUID"] == (
            ds.SOPInstanceUID
        )
    except HttpError as exc:
        if exc.status == 404:
            return False
        raise


def found_by_c_find(node: OrthancServer, ds: Dataset) -> bool:
    """C-FIND on the DPP information model by Protocol Name returns it."""
    query = Dataset()
    if "SpecificCharacterSet" in ds:
        query.SpecificCharacterSet = ds.SpecificCharacterSet
    query.ProtocolName = ds.ProtocolName
    query.SOPInstanceUID = ""
    assoc = associate(node, [DPP_FIND])
    try:
        uids = [
            identifier.SOPInstanceUID
            for status, identifier in assoc.send_c_find(query, DPP_FIND)
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None
        ]
    finally:
        assoc.release()
    return ds.SOPInstanceUID in uids


def retrieved_by_rest(node: OrthancServer, ds: Dataset) -> Dataset:
    """``GET /dpp/protocols/{uid}/file``, decoded."""
    return pydicom.dcmread(io.BytesIO(node.get(f"/dpp/protocols/{ds.SOPInstanceUID}/file")))


def retrieved_by_c_get(node: OrthancServer, ds: Dataset) -> Dataset:
    """C-GET by SOP Instance UID on the DPP information model."""
    final, received = c_get(node, [str(ds.SOPInstanceUID)], ae_title="TEST_SCU")
    assert final.Status == 0x0000, f"C-GET ended with 0x{int(final.Status):04X}"
    (got,) = received
    return got


Finder = Callable[[OrthancServer, Dataset], bool]
FINDERS: tuple[Finder, ...] = (found_in_list, found_by_uid, found_by_c_find)
RETRIEVERS: tuple[Callable[[OrthancServer, Dataset], Dataset], ...] = (
    retrieved_by_rest,
    retrieved_by_c_get,
)


def found_everywhere(node: OrthancServer, ds: Dataset) -> bool:
    return all(find(node, ds) for find in FINDERS)


def found_nowhere(node: OrthancServer, ds: Dataset) -> bool:
    return not any(find(node, ds) for find in FINDERS)


# -- helpers ---------------------------------------------------------------------


def listed_uids(node: OrthancServer) -> list[str]:
    """Every SOP Instance UID the node lists, duplicates kept, all pages."""
    uids: list[str] = []
    offset = 0
    while True:
        page = node.get_json(f"/dpp/protocols?offset={offset}&limit=1000")
        uids += [p["SOPInstanceUID"] for p in page["Protocols"]]
        offset += len(page["Protocols"])
        if not page["Protocols"] or offset >= page["Total"]:
            return uids


def orthanc_sop_instance_uids(node: OrthancServer) -> list[str]:
    """SOP Instance UIDs of every instance in Orthanc's database, seen through ``node``."""
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in node.get_json("/instances?expand")]


def as_received(ds: Dataset) -> Dataset:
    """``ds`` as the node decodes it (sent in Explicit VR Little Endian)."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def store(node: OrthancServer, datasets: list[Dataset]) -> list[int]:
    """C-STORE over one association to the node's DPP listener; the statuses."""
    assoc = associate(node)
    # pynetdicom leaves Nagle on; without this a C-STORE SCU crawls (docs/design.md, fact 7).
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def report(label: str, seconds: list[float]) -> None:
    print(
        f"\nscale-out: {label}: n={len(seconds)} max={max(seconds):.3f} s "
        f"median={statistics.median(seconds):.3f} s"
    )


# -- the two nodes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> Iterator[PostgresCluster]:
    """The nodes' PostgreSQL, removed afterwards."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, database: PostgresCluster
) -> Iterator[tuple[OrthancServer, OrthancServer]]:
    """Nodes A and B on one fresh database; everything stopped and removed afterwards."""
    folder: Path = tmp_path_factory.mktemp("scale-out")
    started: list[OrthancServer] = []
    try:
        for name in ("a", "b"):  # one after the other: A creates the schema
            node = OrthancServer(
                folder / name,
                dpp={
                    "ChangePollInterval": CHANGE_POLL_INTERVAL,
                    "ReconcileInterval": RECONCILE_INTERVAL,
                },
                config={
                    # The test SCU may find and retrieve (Orthanc's defaults
                    # leave C-FIND/C-GET to known modalities only).
                    "DicomModalities": {"scu": ["TEST_SCU", "127.0.0.1", 104]},
                    "Plugins": [PYTHON_PLUGIN, PG_INDEX_PLUGIN, PG_STORAGE_PLUGIN],
                    "PostgreSQL": database.orthanc_section(),
                    "DatabaseServerIdentifier": f"dpp-scale-out-{name}",
                    "SaveJobs": False,
                },
            )
            started.append(node)
            node.start()
        a, b = started
        assert "PostgreSQL" in a.get_json("/system")["DatabaseBackendPlugin"]
        yield a, b
    finally:
        for node in reversed(started):
            node.stop()


# -- the tests ---------------------------------------------------------------------


def test_stored_through_a_is_found_and_retrieved_through_b(
    nodes: tuple[OrthancServer, OrthancServer],
) -> None:
    a, b = nodes
    delays = []
    for seed, kind in ((5101, "CT"), (5102, "XA"), (5103, "CT"), (5104, "XA"), (5105, "CT")):
        ds = as_received(make_protocol(seed, kind))
        assert found_nowhere(b, ds)
        assert store(a, [ds]) == [0x0000]
        delays.append(
            seconds_until(
                lambda ds=ds: found_everywhere(b, ds), FOUND_WITHIN, f"B finds {kind} {seed}"
            )
        )
        for retrieve in RETRIEVERS:
            back = retrieve(b, ds)
            assert back == ds, f"{retrieve.__name__}: {ds.SOPInstanceUID} differs from what A got"
            assert "PatientID" not in back  # normalization undone on B too
    report("stored via A, found via B after", delays)


def test_deleted_through_b_disappears_from_a(nodes: tuple[OrthancServer, OrthancServer]) -> None:
    a, b = nodes
    delays = []
    for seed in (5201, 5202, 5203):
        ds = as_received(make_protocol(seed, "CT"))
        assert store(a, [ds]) == [0x0000]
        seconds_until(lambda ds=ds: found_everywhere(b, ds), FOUND_WITHIN, "B finds it")
        assert found_everywhere(a, ds)
        b.delete(f"/dpp/protocols/{ds.SOPInstanceUID}")
        assert found_nowhere(b, ds), "B still answers with what it deleted"
        assert ds.SOPInstanceUID not in orthanc_sop_instance_uids(a)  # one database
        delays.append(
            seconds_until(lambda ds=ds: found_nowhere(a, ds), GONE_WITHIN, "A forgets B's deletion")
        )
        with pytest.raises(HttpError) as gone:
            retrieved_by_rest(a, ds)
        assert gone.value.status == 404
    report("deleted via B, gone from A after", delays)


def test_concurrent_stores_through_both_lose_and_duplicate_nothing(
    nodes: tuple[OrthancServer, OrthancServer],
) -> None:
    a, b = nodes
    batches = {
        a: [as_received(ds) for ds in make_library(CONCURRENT_PER_NODE, seed=60_000)],
        b: [as_received(ds) for ds in make_library(CONCURRENT_PER_NODE, seed=70_000)],
    }
    ours = {ds.SOPInstanceUID for batch in batches.values() for ds in batch}
    assert len(ours) == 2 * CONCURRENT_PER_NODE
    statuses: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def run(node: OrthancServer, name: str) -> None:
        try:
            statuses[name] = store(node, batches[node])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, name)) for n, name in ((a, "A"), (b, "B"))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a storing thread hangs"
    assert not errors, errors
    elapsed = time.monotonic() - started
    assert statuses == {"A": [0] * CONCURRENT_PER_NODE, "B": [0] * CONCURRENT_PER_NODE}

    def complete(node: OrthancServer) -> bool:
        return ours <= set(listed_uids(node))

    for node in (a, b):
        seconds_until(lambda node=node: complete(node), FOUND_WITHIN, "every protocol listed")
    in_database = orthanc_sop_instance_uids(a)
    assert sorted(in_database) == sorted(orthanc_sop_instance_uids(b))
    assert len(in_database) == len(set(in_database)), "duplicate instances in Orthanc"
    assert ours <= set(in_database)
    for node in (a, b):
        listed = listed_uids(node)
        assert len(listed) == len(set(listed)), "a protocol listed twice"
        assert sorted(listed) == sorted(in_database), "index and database disagree"
        assert node.get_json("/dpp/protocols?limit=1")["Total"] == len(in_database)
    print(f"\nscale-out: {2 * CONCURRENT_PER_NODE} concurrent C-STOREs in {elapsed:.2f} s")


def send_until_done(
    node: OrthancServer, datasets: list[Dataset], answers: list[tuple[str, int | None]]
) -> None:
    """C-STORE each dataset once; append (SOP Instance UID, status) to ``answers`` as they come.

    The status is None when no answer came. An association the listener or
    pynetdicom aborts is opened again for the datasets that are left, so
    that one stall does not end the burst.
    """
    left = list(datasets)
    deadline = time.monotonic() + 300
    while left and time.monotonic() < deadline:
        assoc = associate(node)
        try:
            while left and assoc.is_established:
                ds = left.pop(0)
                answer = assoc.send_c_store(ds)
                answers.append((str(ds.SOPInstanceUID), int(answer.Status) if answer else None))
        finally:
            if assoc.is_established:
                assoc.release()


def test_database_lost_mid_store_gives_no_false_success(
    nodes: tuple[OrthancServer, OrthancServer], database: PostgresCluster
) -> None:
    """PostgreSQL stops (fast shutdown) during a C-STORE burst through both nodes.

    Found on Orthanc 1.10.1 with orthanc-postgresql 4.0, and the same on
    1.12.7 and 1.13.0: the nodes stay up; a store caught by the shutdown,
    or still waiting when the plugin's reconnection attempts
    (``MaximumConnectionRetries`` x ``ConnectionRetryInterval``) run out,
    fails with Orthanc's error 36 "The database is currently not
    available"; the others wait and succeed once PostgreSQL is back. Should
    a node exit instead, it is started again: what matters is that no
    protocol is answered Success without being stored, and that both nodes
    agree afterwards (on 1.13.0 they did not, until reconciliation indexed
    what the change log had shown out of order).
    """
    a, b = nodes
    batches = {
        a: [as_received(ds) for ds in make_library(CONCURRENT_PER_NODE, seed=90_000)],
        b: [as_received(ds) for ds in make_library(CONCURRENT_PER_NODE, seed=95_000)],
    }
    answers: dict[str, list[tuple[str, int | None]]] = {"A": [], "B": []}
    errors: list[BaseException] = []

    def run(node: OrthancServer, name: str) -> None:
        try:
            send_until_done(node, batches[node], answers[name])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def stored_by_both(count: int) -> bool:
        return all(sum(code == 0 for _, code in batch) >= count for batch in answers.values())

    threads = [threading.Thread(target=run, args=(n, name)) for n, name in ((a, "A"), (b, "B"))]
    for thread in threads:
        thread.start()
    restarted: list[OrthancServer] = []
    try:
        # The burst is under way: both senders have protocols stored.
        assert eventually(lambda: stored_by_both(5), timeout=60), "the burst never got going"
        database.halt()
        # Down until a sender has had a store refused (bounded).
        assert eventually(
            lambda: any(code != 0x0000 for batch in answers.values() for _, code in batch),
            timeout=120,
        ), "no store was refused while PostgreSQL was gone"
    finally:
        database.resume()
    for thread in threads:
        thread.join(300)
    assert not any(t.is_alive() for t in threads), "a storing thread hangs"
    assert not errors, errors
    for node in (a, b):
        if node.process is not None and node.process.poll() is not None:
            node.stop(check=False)  # Orthanc left when its database went away
            node.start()
            restarted.append(node)
    print(f"\nscale-out: database lost: nodes restarted: {len(restarted)}")

    sent = [answer for batch in answers.values() for answer in batch]
    succeeded = {uid for uid, code in sent if code == 0x0000}
    failed = [(uid, code) for uid, code in sent if code != 0x0000]
    print(f"scale-out: database lost: {len(succeeded)} stored, {len(failed)} refused")
    assert failed, "every store succeeded: the database was not lost mid-burst"
    unexpected = {code for _, code in failed} - {0xA700, None}
    assert not unexpected, [  # how each node logged those refusals
        line
        for node in (a, b)
        for line in node.log().splitlines()
        if any(f"refused (0x{code:04X})" in line for code in unexpected if code is not None)
    ] or failed

    # Once PostgreSQL is back, both nodes serve and agree, and every Success
    # is a protocol in Orthanc that C-FIND finds through both nodes.
    def agree() -> bool:
        stored = orthanc_sop_instance_uids(a)
        return sorted(stored) == sorted(orthanc_sop_instance_uids(b)) and sorted(
            listed_uids(a)
        ) == sorted(listed_uids(b)) == sorted(stored)

    seconds_until(agree, RECOVERED_WITHIN, "both nodes agree with the database")
    in_database = set(orthanc_sop_instance_uids(a))
    assert succeeded <= in_database, sorted(succeeded - in_database)
    by_uid = {str(ds.SOPInstanceUID): ds for batch in batches.values() for ds in batch}
    for node in (a, b):
        missed = [uid for uid in succeeded if not found_by_c_find(node, by_uid[uid])]
        assert not missed, f"C-FIND misses protocols answered Success: {missed}"
    # And the next stores succeed through both nodes.
    for node, seed in ((a, 5301), (b, 5302)):
        ds = as_received(make_protocol(seed, "CT"))
        assert store(node, [ds]) == [0x0000]
        for other in (a, b):
            seconds_until(lambda o=other, d=ds: found_everywhere(o, d), FOUND_WITHIN, "found")
