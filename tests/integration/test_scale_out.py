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
from orthanc_dpp.sop import DPP_FIND
from tests.orthanc_server import PYTHON_PLUGIN, HttpError, OrthancServer
from tests.peers import associate, c_get
from tests.postgres import (
    PG_BIN,
    PG_INDEX_PLUGIN,
    PG_STORAGE_PLUGIN,
    PostgresCluster,
    postgres_available,
)
from tests.waiting import seconds_until

pytestmark = pytest.mark.skipif(
    not postgres_available(),
    reason=f"PostgreSQL server binaries ({PG_BIN}) or orthanc-postgresql are not installed",
)

CHANGE_POLL_INTERVAL = 1.0  # the plugin's default
RECONCILE_INTERVAL = 1.0
FOUND_WITHIN = 2.0  # seconds: the promise for stores made through another node
# A deletion through B reaches A at the next reconciliation, which the feed
# runs between two change-log polls: at most both intervals, plus slack.
GONE_WITHIN = RECONCILE_INTERVAL + CHANGE_POLL_INTERVAL + 3.0
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
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OrthancServer, OrthancServer]]:
    """Nodes A and B on one fresh database; everything stopped and removed afterwards."""
    folder: Path = tmp_path_factory.mktemp("scale-out")
    with PostgresCluster() as database:
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
