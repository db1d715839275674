"""Protocol usage on the real Orthanc: CT Performed Procedure Protocol instances stored with
Orthanc's own ``POST /instances`` are counted for the defined protocol they reference, stay as
Orthanc stored them, stop counting when deleted, and the count survives a restart."""

from __future__ import annotations

from dpp_tools.samples import make_protocol, to_bytes
from tests.datasets import make_performed
from tests.orthanc_server import OrthancServer
from tests.waiting import eventually


def usage(server: OrthancServer, uid: str) -> dict[str, object]:
    return dict(server.get_json(f"/dpp/protocols/{uid}")["Usage"])


def test_performed_protocols_count_until_deleted_and_after_a_restart(
    server: OrthancServer,
) -> None:
    stored = server.post("/dpp/protocols", to_bytes(make_protocol(61, "CT")))
    uid = stored["Files"][0]["SOPInstanceUID"]
    other = server.post("/dpp/protocols", to_bytes(make_protocol(62, "CT")))
    other_uid = other["Files"][0]["SOPInstanceUID"]
    assert usage(server, uid) == {"Count": 0, "LastUsed": None}

    sent = {
        server.post("/instances", data)["ID"]: data
        for data in (
            to_bytes(make_performed(1, [uid], date="20240301", time="081500")),
            to_bytes(make_performed(2, [uid], date="20240415", time="143000")),
        )
    }
    assert eventually(lambda: usage(server, uid)["Count"] == 2, timeout=20)
    assert usage(server, uid) == {"Count": 2, "LastUsed": "20240415143000"}
    for orthanc_id, data in sent.items():  # ordinary patient instances, kept as sent
        assert server.get(f"/instances/{orthanc_id}/file") == data
        sop_class = server.get(f"/instances/{orthanc_id}/metadata/SopClassUid").decode()
        assert sop_class == "1.2.840.10008.5.1.4.1.1.200.2"
    listing = server.get_json("/dpp/protocols?sort=usage")["Protocols"]
    assert [p["SOPInstanceUID"] for p in listing] == [uid, other_uid]
    unused = server.get_json("/dpp/protocols?unused=true")["Protocols"]
    assert [p["SOPInstanceUID"] for p in unused] == [other_uid]

    latest = next(i for i, data in sent.items() if b"20240415" in data)
    patient = server.get_json(f"/instances/{latest}/patient")["ID"]
    server.delete(f"/patients/{patient}")  # Orthanc reports each instance it deletes
    assert eventually(lambda: usage(server, uid)["Count"] == 1, timeout=20)
    assert usage(server, uid) == {"Count": 1, "LastUsed": "20240301081500"}

    before = len(server.log())
    server.restart()  # the same data folder
    assert usage(server, uid) == {"Count": 1, "LastUsed": "20240301081500"}
    after = server.log()[before:]
    assert "2 from the snapshot" in after and "Index snapshot not used" not in after
