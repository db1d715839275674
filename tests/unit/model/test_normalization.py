"""Normalization adds only what Orthanc needs and is exactly reversible."""

import copy
import io

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence

from orthanc_dpp.model.normalization import (
    RECORD_CREATOR,
    RECORD_GROUP,
    Normalization,
    NormalizationError,
    has_record,
    library_uids,
    normalize,
    reverse,
)
from orthanc_dpp.model.sop import CT_DPP_STORAGE, STORAGE_CLASSES, TRANSFER_SYNTAXES, XA_DPP_STORAGE
from orthanc_dpp.storage.part10 import encode_part10

LABELS = Normalization()


def dpp(**extra: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_DPP_STORAGE
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.ProtocolName = "CT HEAD"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def with_meta(ds: Dataset, transfer_syntax: str) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def test_dpp_gets_library_identity_and_record():
    ds = dpp()
    result = normalize(ds, LABELS)
    study, series = library_uids(LABELS, CT_DPP_STORAGE)
    assert ds.PatientID == "DPP-PROTOCOL-LIBRARY"
    assert ds.PatientName == "Defined Procedure Protocol Library"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study, series)
    assert ds.SeriesDescription == "CT Defined Procedure Protocols"
    assert [ds[t].keyword for t in result.added] == [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientName",
        "StudyDescription",
        "SeriesDescription",
    ]
    assert ds[RECORD_GROUP, 0x0010].value == RECORD_CREATOR
    assert has_record(ds)


def test_series_per_sop_class_and_deterministic_uids():
    ct = normalize(dpp(), LABELS).dataset
    xa = normalize(dpp(SOPClassUID=XA_DPP_STORAGE), LABELS).dataset
    assert ct.StudyInstanceUID == xa.StudyInstanceUID
    assert ct.SeriesInstanceUID != xa.SeriesInstanceUID
    other = normalize(dpp(), Normalization(patient_id="OTHER")).dataset
    assert other.StudyInstanceUID != ct.StudyInstanceUID


def test_instance_with_identity_is_untouched():
    ds = dpp(PatientID="P1", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.4")
    before = copy.deepcopy(ds)
    result = normalize(ds, LABELS)
    assert not result.changed
    assert ds == before
    assert not has_record(ds)


def test_empty_identity_is_filled_and_restored_empty():
    ds = dpp(PatientID="", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.4")
    original = copy.deepcopy(ds)
    result = normalize(ds, LABELS)
    assert [ds[t].keyword for t in result.filled] == ["PatientID"]
    assert ds.PatientID == "DPP-PROTOCOL-LIBRARY"
    assert "PatientName" in ds  # descriptive attributes still added
    assert reverse(ds) == original


def test_reserved_creator_in_a_dataset_needing_normalization_is_refused():
    ds = dpp()
    ds.private_block(RECORD_GROUP, RECORD_CREATOR, create=True).add_new(0x01, "LT", "x")
    with pytest.raises(NormalizationError, match="reserved by the plugin"):
        normalize(ds, LABELS)


def test_missing_sop_class_is_refused():
    ds = dpp()
    del ds.SOPClassUID
    with pytest.raises(NormalizationError, match="SOP Class UID"):
        normalize(ds, LABELS)


def test_other_private_creators_in_the_same_group_survive():
    ds = dpp()
    ds.private_block(RECORD_GROUP, "VENDOR X", create=True).add_new(0x01, "LO", "keep me")
    original = copy.deepcopy(ds)
    normalize(ds, LABELS)
    assert ds[RECORD_GROUP, 0x0011].value == RECORD_CREATOR  # next free block
    assert reverse(ds) == original


@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_record_survives_encoding_in_every_transfer_syntax(transfer_syntax):
    original = with_meta(dpp(), transfer_syntax)
    ds = with_meta(dpp(), transfer_syntax)
    normalize(ds, LABELS)
    read = pydicom.dcmread(io.BytesIO(encode_part10(ds)))
    assert read.PatientID == "DPP-PROTOCOL-LIBRARY"
    assert reverse(read) == original


# -- property: reverse(normalize(x)) == x on varied datasets -----------------

# Latin-1 text, so that it encodes in both ISO_IR 100 and ISO_IR 192.
texts = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\\", exclude_categories=["Cc"]
    ),
    max_size=20,
)
codes = st.builds(
    lambda value, meaning: Dataset().from_json(
        {
            "00080100": {"vr": "SH", "Value": [value]},
            "00080102": {"vr": "SH", "Value": ["RADLEX"]},
            "00080104": {"vr": "LO", "Value": [meaning]},
        }
    ),
    st.from_regex(r"RPID[0-9]{1,4}", fullmatch=True),
    texts.filter(lambda t: t.strip() != ""),
)


@st.composite
def dpp_datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192"]))
    ds.SOPClassUID = draw(st.sampled_from(sorted(STORAGE_CLASSES)))
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498." + str(draw(st.integers(1, 10**12)))
    ds.ProtocolName = draw(texts)
    ds.Manufacturer = draw(texts)
    if draw(st.booleans()):
        ds.PotentialScheduledProtocolCodeSequence = Sequence(draw(st.lists(codes, max_size=3)))
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "PatientName"):
        choice = draw(st.sampled_from(["absent", "empty", "value"]))
        if choice == "empty":
            setattr(ds, keyword, "")
        elif choice == "value":
            setattr(ds, keyword, "1.2.3.4" if keyword.endswith("UID") else draw(texts) or "X")
    if draw(st.booleans()):
        ds.private_block(RECORD_GROUP, "OTHER VENDOR", create=True).add_new(0x01, "LO", "v")
    ds.SeriesDescription = draw(texts) if draw(st.booleans()) else None
    if ds.SeriesDescription is None:
        del ds.SeriesDescription
    return ds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=dpp_datasets(), transfer_syntax=st.sampled_from(TRANSFER_SYNTAXES))
def test_reverse_of_normalize_is_identity(ds, transfer_syntax):
    # Compare with the dataset as a receiver decodes it (implicit VR turns
    # unknown private elements into UN on both sides).
    received = encode_part10(with_meta(ds, transfer_syntax))
    original = pydicom.dcmread(io.BytesIO(received))
    ds = pydicom.dcmread(io.BytesIO(received))
    result = normalize(ds, LABELS)
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert str(ds[keyword].value).strip(" \x00"), keyword  # only DICOM's padding
    stored = pydicom.dcmread(io.BytesIO(encode_part10(ds)))
    restored = reverse(stored)
    assert restored == original
    assert has_record(stored) is False
    assert result.changed or not has_record(ds)
