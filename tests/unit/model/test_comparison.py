"""Differences between two protocols: attribute by attribute, through sequences, identity aside."""

from __future__ import annotations

import copy
import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dpp_tools.samples import to_bytes
from orthanc_dpp.model import normalization
from orthanc_dpp.model.comparison import IDENTITY, differences
from tests.datasets import build, kvp_constraint, version_chain

KV_PATH = (
    "AcquisitionProtocolElementSpecificationSequence[0].ParametersSpecificationSequence[2]"
    ".ConstraintValueSequence[0].SelectorDSValue"
)


def as_json(a: Dataset, b: Dataset) -> list[dict]:
    return [d.as_json() for d in differences(a, b)]


def test_two_versions_differ_only_in_the_changed_tube_voltage() -> None:
    first, second = version_chain(1, 2)
    assert as_json(first, second) == [
        {
            "Path": KV_PATH,
            "Tag": "00720072",
            "Keyword": "SelectorDSValue",
            "A": {"vr": "DS", "Value": [100.0]},
            "B": {"vr": "DS", "Value": [110.0]},
        }
    ]
    assert as_json(second, first)[0]["A"] == {"vr": "DS", "Value": [110.0]}


def test_a_copy_with_another_identity_is_identical() -> None:
    first, second = version_chain(4, 2, "XA")
    kvp_constraint(second).ConstraintValueSequence[0].SelectorDSValue = (
        kvp_constraint(first).ConstraintValueSequence[0].SelectorDSValue
    )
    second.InstanceCreationTime = "235959"
    second.InstanceCreatorUID = "1.2.3.4"
    # A protocol that came with its own patient, study and series (what the
    # plugin's normalization would otherwise add)
    for keyword in (*normalization.REQUIRED, *normalization.DESCRIPTIVE):
        setattr(second, keyword, "1.2.3" if keyword.endswith("UID") else "library")
    assert {"SOPInstanceUID", "PredecessorProtocolSequence"} <= set(first.dir())
    assert differences(first, second) == []
    assert differences(first, first) == []


def test_identity_is_only_the_top_level_instance() -> None:
    assert {0x00080018, 0x00080012, 0x00100020, 0x0020000D, 0x0018990E} <= IDENTITY
    assert 0x00080016 not in IDENTITY  # a CT and an XA protocol are different things
    a = build({"ReferencedSOPSequence": [{"ReferencedSOPInstanceUID": "1.2.3"}]})
    b = build({"ReferencedSOPSequence": [{"ReferencedSOPInstanceUID": "1.2.4"}]})
    a.ReferencedSOPSequence[0].SOPInstanceUID = "1.5"
    assert [d.path for d in differences(a, b)] == [
        "ReferencedSOPSequence[0].SOPInstanceUID",
        "ReferencedSOPSequence[0].ReferencedSOPInstanceUID",
    ]


def test_a_missing_side_is_null_and_differences_come_in_tag_order() -> None:
    a = build({"ProtocolName": "Head", "Manufacturer": "ACME", "PatientPosition": "HFS"})
    b = build({"ProtocolName": "Head", "EquipmentModality": "CT"})
    b.add_new(0x00090010, "LO", "VENDOR")
    b.add_new(0x00091001, "DS", "2.50")
    b.add_new(0x00180000, "UL", 12)  # a group length: encoding, not content
    assert as_json(a, b) == [
        {
            "Path": "Manufacturer",
            "Tag": "00080070",
            "Keyword": "Manufacturer",
            "A": {"vr": "LO", "Value": ["ACME"]},
            "B": None,
        },
        {
            "Path": "EquipmentModality",
            "Tag": "00080221",
            "Keyword": "EquipmentModality",
            "A": None,
            "B": {"vr": "CS", "Value": ["CT"]},
        },
        {
            "Path": "(0009,0010)",
            "Tag": "00090010",
            "Keyword": "",
            "A": None,
            "B": {"vr": "LO", "Value": ["VENDOR"]},
        },
        {
            "Path": "(0009,1001)",
            "Tag": "00091001",
            "Keyword": "",
            "A": None,
            "B": {"vr": "DS", "Value": [2.5]},
        },
        {
            "Path": "PatientPosition",
            "Tag": "00185100",
            "Keyword": "PatientPosition",
            "A": {"vr": "CS", "Value": ["HFS"]},
            "B": None,
        },
    ]


def test_equal_values_written_differently_are_equal() -> None:
    a = build({"KVP": "120", "SliceThickness": "1.0", "ProtocolName": "Head"})
    b = build({"KVP": "120.0", "SliceThickness": "1", "ProtocolName": "Head"})
    assert differences(a, b) == []


def test_an_item_only_one_side_has_is_reported_whole() -> None:
    first = version_chain(2, 1)[0]
    longer = copy.deepcopy(first)
    element = first.AcquisitionProtocolElementSpecificationSequence[0]
    added = build({"ProtocolElementNumber": 9})
    longer.AcquisitionProtocolElementSpecificationSequence = Sequence(
        [*first.AcquisitionProtocolElementSpecificationSequence, added]
    )
    count = len(first.AcquisitionProtocolElementSpecificationSequence)
    assert as_json(first, longer) == [
        {
            "Path": f"AcquisitionProtocolElementSpecificationSequence[{count}]",
            "Tag": "0018991F",
            "Keyword": "AcquisitionProtocolElementSpecificationSequence",
            "A": None,
            "B": {"00189921": {"vr": "US", "Value": [9]}},
        }
    ]
    del longer.AcquisitionProtocolElementSpecificationSequence
    whole = as_json(first, longer)
    assert [d["Path"] for d in whole] == ["AcquisitionProtocolElementSpecificationSequence"]
    assert whole[0]["A"]["vr"] == "SQ" and whole[0]["B"] is None
    assert len(whole[0]["A"]["Value"]) == count and element.ProtocolElementNumber == 1


def test_a_value_that_breaks_its_vr_is_compared_as_its_text() -> None:
    """The listener keeps such a value; pydicom reads it but cannot write it as a JSON number."""
    ds = version_chain(1, 1)[0]
    ds.KVP = ["999", "100"]  # one value too many, too
    data = to_bytes(ds)
    sound = pydicom.dcmread(io.BytesIO(data))
    broken = pydicom.dcmread(
        io.BytesIO(data.replace(b"DS\x08\x00999\\100 ", b"DS\x08\x00abc\\100 "))
    )
    assert as_json(sound, broken) == [
        {
            "Path": "KVP",
            "Tag": "00180060",
            "Keyword": "KVP",
            "A": {"vr": "DS", "Value": [999.0, 100.0]},
            "B": {"vr": "DS", "Value": ["abc", "100"]},
        }
    ]
    assert differences(broken, broken) == []
