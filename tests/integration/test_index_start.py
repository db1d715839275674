"""A start without an index snapshot, on the real Orthanc: the fast loader indexes what the
previous one did (``FastIndexLoad``), and Orthanc answers ``/changes?last`` as the feed's
progress expects."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from pydicom import Dataset

from dpp_tools.samples import make_library, make_non_dpp, make_protocol, to_bytes
from orthanc_dpp.model import snapshot
from orthanc_dpp.model.key_table import TABLE_HH_6_1
from tests.orthanc_server import OrthancServer
from tests.peers import c_find, store_protocols


def drop_snapshot(orthanc: OrthancServer) -> bool:
    """Delete the index snapshot (a global property in Orthanc's SQLite index), Orthanc stopped."""
    with contextlib.closing(sqlite3.connect(orthanc.folder / "db" / "index")) as db, db:
        cursor = db.execute("DELETE FROM GlobalProperties WHERE property = ?", (snapshot.PROPERTY,))
        return cursor.rowcount > 0


def universal_answer(orthanc: OrthancServer) -> list[Any]:
    """Every C-FIND response to a query returning every top-level key of Table HH.6-1."""
    identifier = Dataset()
    for row in TABLE_HH_6_1:
        identifier.add_new(row.tag, row.vr, [] if row.vr == "SQ" else None)
    return sorted(
        (status, ds.to_json() if ds is not None else "")
        for status, ds in c_find(orthanc, identifier)
    )


def test_start_without_snapshot_indexes_what_the_previous_loader_did(make_server) -> None:
    orthanc = make_server(dpp={"ApprovalStorers": ["TEST_SCU"]})  # approvals over DICOM too
    orthanc.start()
    store_protocols(orthanc, make_library(9, seed=700, kinds=("CT", "XA", "APPROVAL")))
    own = make_protocol(790, "XA")  # its own patient/study/series: outside the library series
    own.PatientID, own.StudyInstanceUID, own.SeriesInstanceUID = "P790", "1.2.790", "1.2.790.1"
    orthanc.post("/instances", to_bytes(own))
    orthanc.post("/instances", to_bytes(make_non_dpp(5)))  # not a protocol
    last = orthanc.get_json("/changes?last")
    assert last["Last"] == orthanc.get_json("/changes?limit=10000")["Last"] > 0

    answers = {}
    for fast in (False, True):
        orthanc.stop()
        assert drop_snapshot(orthanc)
        orthanc.config["DefinedProcedureProtocol"]["FastIndexLoad"] = fast
        orthanc.start()
        status = orthanc.get_json("/dpp/status")
        assert status["Index"]["Ready"] and status["Index"]["LoadProgress"] is None
        assert status["Protocols"]["Total"] == 10
        answers[fast] = (
            orthanc.get_json("/dpp/protocols?limit=1000"),
            orthanc.get_json("/dpp/status")["Protocols"],
            universal_answer(orthanc),
        )
    assert "from the snapshot" not in orthanc.log()
    assert answers[True] == answers[False]
    assert len(answers[True][2]) == 7 + 1  # the 7 DPPs (approvals are another model), success
