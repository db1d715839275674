"""One SOP Instance UID, one protocol: C-FIND, C-GET and REST never disagree.

Re-sending a stored UID with other content, or with its own patient, study
and series, used to make the index show the newcomer while C-GET sent the
stored file, or show the UID twice. Each case is checked through every way
out: C-FIND, C-GET and ``/dpp/protocols``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from pydicom import Dataset

from dpp_tools.samples import make_protocol, to_bytes
from tests.orthanc_server import HttpError, OrthancServer
from tests.peers import c_find, c_get, find_identifier
from tests.stores import c_store
from tests.waiting import eventually

MODALITIES = {"scu": ["TEST_SCU", "127.0.0.1", 104], "getter": ["GETTER", "127.0.0.1", 104]}


def server(tmp_path_factory: pytest.TempPathFactory, name: str, **config: object):
    orthanc = OrthancServer(
        tmp_path_factory.mktemp(name), config={"DicomModalities": MODALITIES, **config}
    )
    with orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def keeps_first(tmp_path_factory) -> Iterator[OrthancServer]:
    yield from server(tmp_path_factory, "keeps-first")


@pytest.fixture(scope="module")
def overwrites(tmp_path_factory) -> Iterator[OrthancServer]:
    yield from server(tmp_path_factory, "overwrites", OverwriteInstances=True)


def seen(orthanc: OrthancServer, uid: str) -> tuple[list[str], list[str], str]:
    """Protocol names by C-FIND, by C-GET, and by REST, for one UID."""
    answers = c_find(orthanc, find_identifier(SOPInstanceUID=uid))
    found = [str(ds.ProtocolName) for code, ds in answers if code == 0xFF00]
    final, received = c_get(orthanc, [uid])
    assert int(final.Status) == 0x0000
    rest = orthanc.get_json(f"/dpp/protocols/{uid}")["ProtocolName"]
    return found, [str(ds.ProtocolName) for ds in received], rest


def poisoned(ds: Dataset) -> Dataset:
    changed = copy.deepcopy(ds)
    changed.ProtocolName = "POISONED NAME"
    return changed


def with_identity(ds: Dataset, suffix: str) -> Dataset:
    """The same SOP Instance UID filed under a patient, study and series of its own."""
    changed = copy.deepcopy(ds)
    changed.PatientID = f"INTRUDER-{suffix}"
    changed.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.1{suffix}"
    changed.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.2{suffix}"
    return changed


def test_identical_resend_succeeds(keeps_first) -> None:
    ds = make_protocol(9400, "CT")
    assert c_store(keeps_first, ds).Status == 0x0000
    assert c_store(keeps_first, ds).Status == 0x0000
    uid = str(ds.SOPInstanceUID)
    assert seen(keeps_first, uid) == ([str(ds.ProtocolName)],) * 2 + (str(ds.ProtocolName),)


def test_resend_with_other_content_is_refused(keeps_first) -> None:
    ds = make_protocol(9401, "CT")
    uid, name = str(ds.SOPInstanceUID), str(ds.ProtocolName)
    assert c_store(keeps_first, ds).Status == 0x0000
    refused = c_store(keeps_first, poisoned(ds))
    assert refused.Status == 0x0111
    assert refused.ErrorComment.startswith("SOP Instance UID already stored with other")
    assert seen(keeps_first, uid) == ([name], [name], name)
    # The same through REST: 409 with the reason.
    with pytest.raises(HttpError) as conflict:
        keeps_first.post("/dpp/protocols", to_bytes(poisoned(ds)))
    assert conflict.value.status == 409
    (failure,) = conflict.value.json()["Files"]
    assert failure["Error"].startswith("SOP Instance UID already stored with other content")
    assert seen(keeps_first, uid) == ([name], [name], name)


def test_same_uid_under_another_patient_is_refused(keeps_first) -> None:
    ds = make_protocol(9402, "XA")
    uid, name = str(ds.SOPInstanceUID), str(ds.ProtocolName)
    assert c_store(keeps_first, ds).Status == 0x0000
    refused = c_store(keeps_first, with_identity(ds, "9402"))
    assert refused.Status == 0x0111
    assert refused.ErrorComment.startswith("SOP Instance UID stored under other patient")
    assert seen(keeps_first, uid) == ([name], [name], name)
    assert "SOP Instance UID stored under other patient/study/series" in keeps_first.log()


def test_a_second_instance_stored_around_the_plugin_is_ignored_and_reported(keeps_first) -> None:
    ds = make_protocol(9403, "CT")
    uid, name = str(ds.SOPInstanceUID), str(ds.ProtocolName)
    assert c_store(keeps_first, ds).Status == 0x0000
    # Orthanc's own route takes it (it carries patient/study/series of its own).
    keeps_first.post("/instances", to_bytes(poisoned(with_identity(ds, "9403"))))
    assert keeps_first.wait_for_log(f"SOP Instance UID {uid} is stored twice in Orthanc")
    assert seen(keeps_first, uid) == ([name], [name], name)


def test_overwrite_replaces_everywhere(overwrites) -> None:
    ds = make_protocol(9404, "CT")
    uid = str(ds.SOPInstanceUID)
    assert c_store(overwrites, ds).Status == 0x0000
    assert c_store(overwrites, poisoned(ds)).Status == 0x0000
    assert seen(overwrites, uid) == (["POISONED NAME"],) * 2 + ("POISONED NAME",)
    # Another patient/study/series: the newcomer replaces the old instance in Orthanc too.
    newer = with_identity(ds, "9404")
    newer.ProtocolName = "THIRD VERSION"
    assert c_store(overwrites, newer).Status == 0x0000
    assert seen(overwrites, uid) == (["THIRD VERSION"],) * 2 + ("THIRD VERSION",)
    lookup = overwrites.post("/tools/lookup", uid.encode(), "text/plain")
    assert len(lookup) == 1


def test_overwrite_made_around_the_plugin_is_picked_up(overwrites) -> None:
    """An overwrite made around the plugin (another node, Orthanc's routes) reaches the index."""
    ds = with_identity(make_protocol(9405, "XA"), "9405")
    uid = str(ds.SOPInstanceUID)
    assert c_store(overwrites, ds).Status == 0x0000
    changed = poisoned(ds)
    overwrites.post("/instances", to_bytes(changed))
    assert eventually(
        lambda: overwrites.get_json(f"/dpp/protocols/{uid}")["ProtocolName"] == "POISONED NAME",
        timeout=30,
    )
    assert seen(overwrites, uid) == (["POISONED NAME"],) * 2 + ("POISONED NAME",)
