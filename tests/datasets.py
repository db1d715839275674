"""Datasets and indexes that several unit test modules build the same way.

Plain helpers (no fixtures): a dataset from a ``{keyword: value}`` spec, a
deeply nested dataset, a protocol as Orthanc stores it, a small index of
protocols, and raw identifier bytes for property tests. Test modules import
these from here, never from each other.
"""

from __future__ import annotations

import copy
import datetime
import struct
from typing import Any

from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model import normalization, sop
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization

CT = sop.CT_DPP_STORAGE


def code(value: str, scheme: str, meaning: str, **extra: Any) -> dict[str, Any]:
    return {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning, **extra}


def build(spec: dict[str, Any]) -> Dataset:
    """A dataset from {keyword: value}; a list of dicts is a sequence."""
    ds = Dataset()
    for keyword, value in spec.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        vr = dictionary_VR(tag)
        if vr == "SQ":
            value = Sequence([build(item) for item in value])
        elif value == "":
            value = None
        ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    return ds


def make_index(count: int = 10) -> ProtocolIndex:
    index = ProtocolIndex()
    for n in range(count):
        index.put(
            f"o{n}",
            build(
                {
                    "SpecificCharacterSet": "ISO_IR 192",
                    "SOPClassUID": CT,
                    "SOPInstanceUID": f"1.2.826.0.1.3680043.8.498.{n}",
                    "ProtocolName": f"CT Kopf {n}" if n % 2 else f"Thorax {n}",
                    "InstitutionName": "Hôpital Nord",
                    "PotentialScheduledProtocolCodeSequence": [code("RPID16", "RADLEX", "Head")],
                }
            ),
        )
    index.put(
        "approval",
        build({"SOPClassUID": sop.PROTOCOL_APPROVAL_STORAGE, "SOPInstanceUID": "1.2.3.9"}),
    )
    return index


TAGS = [
    0x00080005,
    0x00080012,
    0x00080013,
    0x00080016,
    0x00080018,
    0x00080052,
    0x00080070,
    0x00080221,
    0x00181030,
    0x00180050,
    0x00280010,
    0x00700084,
    0x00091001,
    0x00720065,
    0x00189906,
    0x00189912,
    0x00100010,
    0x00200013,
    0x00080201,
    0x00281050,
]


VRS = ["CS", "DA", "TM", "UI", "LO", "SH", "PN", "DS", "IS", "US", "FD", "OB", "SQ", "UN", "AT"]


@st.composite
def raw_identifiers(draw: st.DrawFn) -> bytes:
    """Explicit VR Little Endian elements with any VR and any bytes."""
    chosen = sorted(draw(st.sets(st.sampled_from(TAGS), min_size=1, max_size=5)))
    data = b""
    for tag in chosen:
        vr = draw(st.sampled_from(VRS))
        alphabet = st.sampled_from(list(b"09AZaz*?-\\^= .:\x00\x1b\xc3\xa9\xff"))
        value = bytes(draw(st.lists(alphabet, max_size=20)))
        if vr in ("OB", "SQ", "UN"):
            data += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value))
        else:
            data += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value))
        data += value
    return data


def nested(depth: int) -> Dataset:
    ds = Dataset()
    ds.ProtocolName = "leaf"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([ds])
        ds = outer
    ds.SOPInstanceUID = "1.2.3"
    return ds


LABELS = Normalization()


def stored(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as Orthanc stores it from the plugin: normalized, then encoded."""
    normalization.normalize(ds, LABELS)
    return to_bytes(ds, syntax)


def identifier_for(uids: list[str] | str) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uids
    return ds


KVP = 0x00180060
#: The predecessor the first version of a :func:`version_chain` names: never stored.
LOST_PREDECESSOR = "1.2.826.0.1.3680043.8.498.990"


def kvp_constraint(ds: Dataset) -> Dataset:
    """The first acquisition element's constraint on KVP (0018,0060), as sample protocols have."""
    element = ds.AcquisitionProtocolElementSpecificationSequence[0]
    return next(p for p in element.ParametersSpecificationSequence if p.SelectorAttribute == KVP)


def version_chain(seed: int, count: int, kind: str = "CT") -> list[Dataset]:
    """``count`` versions of ``make_protocol(seed, kind)``, oldest first, as a physicist makes them.

    Each later version is a copy of the one before with its own SOP Instance
    UID, made a day later, naming the one before in its Predecessor Protocol
    Sequence, and with the tube voltage of its first acquisition element
    raised by 10 kV. The first names :data:`LOST_PREDECESSOR`, which is not stored.
    """
    first = make_protocol(seed, kind)
    first.PredecessorProtocolSequence = [
        build(
            {
                "ReferencedSOPClassUID": first.SOPClassUID,
                "ReferencedSOPInstanceUID": LOST_PREDECESSOR,
            }
        )
    ]
    chain = [first]
    for number in range(1, count):
        before = chain[-1]
        ds = copy.deepcopy(before)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), kind, "version", str(number)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        made = datetime.datetime.strptime(before.InstanceCreationDate, "%Y%m%d")
        ds.InstanceCreationDate = (made + datetime.timedelta(days=1)).strftime("%Y%m%d")
        ds.PredecessorProtocolSequence = [
            build(
                {
                    "ReferencedSOPClassUID": before.SOPClassUID,
                    "ReferencedSOPInstanceUID": before.SOPInstanceUID,
                }
            )
        ]
        constraint = kvp_constraint(ds).ConstraintValueSequence[0]
        constraint.SelectorDSValue = f"{float(constraint.SelectorDSValue) + 10:g}"
        chain.append(ds)
    return chain


def make_performed(
    seed: int,
    defined: list[str],
    date: str = "20240305",
    time: str = "101500",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.200.2",
) -> Dataset:
    """A CT (default) Performed Procedure Protocol instance of its own patient and study,
    referencing the defined protocols ``defined`` (SOP Instance UIDs), started at ``date``,
    ``time`` (Performed Procedure Step Start Date/Time); Study Date a day earlier."""
    ds = build(
        {
            "SOPClassUID": sop_class,
            "SOPInstanceUID": f"1.2.826.0.1.3680043.10.1387.{seed}.1",
            "PatientID": f"PERF{seed:04d}",
            "PatientName": f"Performed^{seed}",
            "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1387.{seed}.2",
            "SeriesInstanceUID": f"1.2.826.0.1.3680043.10.1387.{seed}.3",
            "StudyDate": f"{int(date) - 1}",
            "StudyTime": "080000",
            "Modality": "CTPROTOCOL",
            "PerformedProcedureStepStartDate": date,
            "PerformedProcedureStepStartTime": time,
            "ReferencedDefinedProtocolSequence": [
                {"ReferencedSOPClassUID": CT, "ReferencedSOPInstanceUID": uid} for uid in defined
            ],
        }
    )
    return ds
