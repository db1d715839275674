"""The versions of a protocol, from the index alone: both directions, lost links, cycles."""

from __future__ import annotations

from pydicom.dataset import Dataset

from orthanc_dpp.model import snapshot
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.versions import versions
from tests.datasets import LOST_PREDECESSOR, build, version_chain


def indexed(*datasets: Dataset) -> ProtocolIndex:
    index = ProtocolIndex()
    for number, ds in enumerate(datasets):
        index.put(f"o{number}", ds)
    return index


def chain_of(index: ProtocolIndex, uid: str) -> dict[str, list[tuple]]:
    """Each link as (UID, stored, distance, of), for compact assertions."""
    entry = index.get(uid)
    assert entry is not None
    answer = versions(index, entry)
    return {
        side: [(v["SOPInstanceUID"], v["Stored"], v["Distance"], v["Of"]) for v in links]
        for side, links in answer.items()
    }


def test_a_chain_nearest_first_with_the_lost_first_link() -> None:
    v1, v2, v3 = version_chain(1, 3)
    index = indexed(v3, v1, v2)
    uid1, uid2, uid3 = (str(v.SOPInstanceUID) for v in (v1, v2, v3))
    assert chain_of(index, uid2) == {
        "Predecessors": [(uid1, True, 1, uid2), (LOST_PREDECESSOR, False, 2, uid1)],
        "Successors": [(uid3, True, 1, uid2)],
    }
    assert chain_of(index, uid1)["Successors"] == [(uid2, True, 1, uid1), (uid3, True, 2, uid2)]
    assert chain_of(index, uid3)["Successors"] == []
    entry = index.get(uid3)
    assert entry is not None
    nearest, _, lost = versions(index, entry)["Predecessors"]
    assert nearest == {
        "SOPInstanceUID": uid2,
        "Stored": True,
        "Distance": 1,
        "Of": uid3,
        "OrthancID": "o2",
        "SOPClassUID": str(v2.SOPClassUID),
        "ProtocolName": str(v2.ProtocolName),
        "EquipmentModality": "CT",
        "Manufacturer": str(v2.Manufacturer),
        "ManufacturerModelName": str(v2.ManufacturerModelName),
        "InstanceCreationDate": "20170418",
        "InstanceCreationTime": str(v2.InstanceCreationTime),
        "ContentCreatorName": str(v2.ContentCreatorName),
    }
    assert lost == {
        "SOPInstanceUID": LOST_PREDECESSOR,
        "Stored": False,
        "Distance": 3,
        "Of": uid1,
        "SOPClassUID": str(v1.SOPClassUID),
    }


def test_successors_follow_the_index_as_it_changes() -> None:
    v1, v2, v3 = version_chain(3, 3, "XA")
    index = indexed(v1, v2, v3)
    uid1 = str(v1.SOPInstanceUID)
    assert len(chain_of(index, uid1)["Successors"]) == 2
    index.remove("o2")
    assert chain_of(index, uid1)["Successors"] == [(str(v2.SOPInstanceUID), True, 1, uid1)]
    index.remove("o0")
    assert chain_of(index, str(v2.SOPInstanceUID))["Predecessors"] == [
        (uid1, False, 1, str(v2.SOPInstanceUID))
    ]


def test_a_cycle_lists_each_protocol_once() -> None:
    def naming(uid: str, predecessor: str) -> Dataset:
        return build(
            {
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.200.1",
                "SOPInstanceUID": uid,
                "ProtocolName": f"Protocol {uid}",
                "PredecessorProtocolSequence": [
                    {"ReferencedSOPInstanceUID": predecessor},
                    {"ReferencedSOPInstanceUID": uid},  # itself, too
                ],
            }
        )

    index = indexed(naming("1.1", "1.3"), naming("1.2", "1.1"), naming("1.3", "1.2"))
    assert chain_of(index, "1.1") == {
        "Predecessors": [("1.3", True, 1, "1.1"), ("1.2", True, 2, "1.3")],
        "Successors": [("1.2", True, 1, "1.1"), ("1.3", True, 2, "1.2")],
    }


def test_a_protocol_with_two_predecessors_and_no_uid_in_an_item() -> None:
    merged = build(
        {
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.200.1",
            "SOPInstanceUID": "2.1",
            "PredecessorProtocolSequence": [
                {"ReferencedSOPInstanceUID": "2.8"},
                {"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.200.1"},
                {"ReferencedSOPInstanceUID": "2.9"},
            ],
        }
    )
    index = indexed(merged, build({"SOPInstanceUID": "2.9", "ProtocolName": "Old"}))
    assert chain_of(index, "2.1")["Predecessors"] == [
        ("2.8", False, 1, "2.1"),
        ("2.9", True, 1, "2.1"),
    ]
    assert chain_of(index, "2.9")["Successors"] == [("2.1", True, 1, "2.9")]


def test_an_index_loaded_from_a_snapshot_knows_the_successors() -> None:
    """A start-up puts records from the snapshot: the links come back without a file read."""
    chain = version_chain(6, 3)
    saved = indexed(*chain)
    text = snapshot.dump([(e.orthanc_id, e.record) for e in saved.snapshot()], 5)
    loaded = ProtocolIndex()
    for orthanc_id, record in snapshot.load(text, loaded.records)[0]:
        loaded.put_record(orthanc_id, record)
    uid = str(chain[0].SOPInstanceUID)
    assert chain_of(loaded, uid) == chain_of(saved, uid)
    assert [link[0] for link in chain_of(loaded, uid)["Successors"]] == [
        str(ds.SOPInstanceUID) for ds in chain[1:]
    ]
