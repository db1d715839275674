"""A full disk under the real Orthanc: Orthanc's storage folder, then its index folder.

Each folder in turn is a small tmpfs (``tests/volumes.py``) that a filler
file fills to the last byte while Orthanc runs. What Orthanc 1.10.1 answers
then (found here, and mapped by ``library.store_refusal``): 14 "Cannot write
to file" for a full storage folder, an SQLite error (1009 "Cannot run a
cached statement") for a full index folder. A modality must get 0xA700 (Out
of Resources) with an Error Comment saying so, a REST upload 507 with the
reason in JSON, the library must stay what Orthanc holds (no protocol
listed or found that was not stored, no stray file in the storage), and
once the filler is gone the next store must succeed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset

from dpp_tools.samples import make_protocol, to_bytes
from tests.orthanc_server import HttpError, OrthancServer
from tests.peers import c_find, find_identifier, store_protocols
from tests.stores import c_store
from tests.volumes import MountUnavailable, files_bytes, filled, tmpfs

# Room for Orthanc's SQLite index (about 0.3 MB at start) and a few protocols.
SIZE = "2m"


@pytest.fixture(params=["StorageDirectory", "IndexDirectory"])
def full_disk(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Path, Path, OrthancServer]]:
    """Orthanc with one of its folders (the parameter) on a tmpfs of its own.

    Yields the key, the tmpfs, the storage folder and the running Orthanc;
    Orthanc is stopped before the tmpfs is unmounted.
    """
    key: str = request.param
    volume = tmp_path / "volume"
    folders = {"StorageDirectory": tmp_path / "storage", "IndexDirectory": tmp_path / "index"}
    folders[key] = volume
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(tmpfs(volume, SIZE))
        except MountUnavailable as exc:
            pytest.skip(f"{exc} (a full disk needs a tmpfs of its own; run as root)")
        orthanc = OrthancServer(
            tmp_path / "orthanc", config={k: str(v) for k, v in folders.items()}
        )
        orthanc.start()
        stack.callback(orthanc.stop)
        yield key, volume, folders["StorageDirectory"], orthanc


def post(orthanc: OrthancServer, ds: Dataset) -> tuple[int, dict]:
    try:
        return 200, orthanc.post("/dpp/protocols", to_bytes(ds))
    except HttpError as exc:
        return exc.status, exc.json()


def found_by_c_find(orthanc: OrthancServer, ds: Dataset) -> bool:
    answers = c_find(orthanc, find_identifier(SOPInstanceUID=ds.SOPInstanceUID))
    assert answers[-1][0] == 0x0000
    return len(answers) > 1


def listed(orthanc: OrthancServer) -> set[str]:
    return {p["SOPInstanceUID"] for p in orthanc.get_json("/dpp/protocols?limit=1000")["Protocols"]}


def in_orthanc(orthanc: OrthancServer) -> set[str]:
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get_json("/instances?expand")}


def test_full_disk_refuses_with_out_of_resources_and_keeps_the_library_whole(
    full_disk: tuple[str, Path, Path, OrthancServer],
) -> None:
    key, volume, storage, orthanc = full_disk
    before = [make_protocol(9700 + i, "CT") for i in range(3)]
    store_protocols(orthanc, before)
    kept = {str(ds.SOPInstanceUID) for ds in before}
    by_dimse, by_rest = make_protocol(9710, "CT"), make_protocol(9711, "XA")
    lead = {
        "StorageDirectory": "Orthanc's storage is full",
        "IndexDirectory": "Orthanc's index is full or not writable",
    }[key]

    with filled(volume):
        answer = c_store(orthanc, by_dimse)
        assert answer.Status == 0xA700, answer
        assert answer.ErrorComment.startswith(lead), answer.ErrorComment
        code, body = post(orthanc, by_rest)
        assert code == 507, body
        assert (body["Stored"], body["Failed"]) == (0, 1)
        assert body["Files"][0]["HttpStatus"] == 507
        assert body["Files"][0]["Error"].startswith(lead), body
        assert "(error " in body["Files"][0]["Error"]  # Orthanc's code and its words

        # The library is what Orthanc holds, and nothing half-stored is left.
        assert listed(orthanc) == in_orthanc(orthanc) == kept
        assert not found_by_c_find(orthanc, by_dimse)
        assert not found_by_c_find(orthanc, by_rest)
        assert orthanc.status_of("GET", f"/dpp/protocols/{by_rest.SOPInstanceUID}") == 404
        statistics = orthanc.get_json("/statistics")
        assert statistics["CountInstances"] == len(kept)
        orphans = files_bytes(storage) - int(statistics["TotalDiskSize"])
        if key == "StorageDirectory":
            assert orphans == 0, "a half-written file is left in the storage"
        else:
            # Orthanc itself leaves the file it wrote before its index refused
            # it: never listed, never served (docs/design.md,
            # "Behaviour of Orthanc worth knowing").
            print(f"\nindex full: {orphans} bytes of files Orthanc wrote and does not know")
        assert orthanc.get_json("/dpp/status")["Protocols"]["Total"] == len(kept)

    # Space given back: the very next stores succeed, through both routes.
    assert c_store(orthanc, by_dimse).Status == 0x0000
    code, body = post(orthanc, by_rest)
    assert code == 200, body
    assert body["Stored"] == 1
    kept |= {str(by_dimse.SOPInstanceUID), str(by_rest.SOPInstanceUID)}
    assert listed(orthanc) == in_orthanc(orthanc) == kept
    assert found_by_c_find(orthanc, by_dimse) and found_by_c_find(orthanc, by_rest)
    stored = orthanc.get_json(f"/dpp/protocols/{by_rest.SOPInstanceUID}")
    assert stored["SOPInstanceUID"] == by_rest.SOPInstanceUID
    assert "refused (0xA700)" in orthanc.log()
