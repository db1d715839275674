"""The test-data factory: deterministic, valid, realistic DICOM that survives encoding.

Every other test trusts these instances, so the checks here are strict: each
value must satisfy its VR, each text must fit its character set, every
transfer syntax must round-trip element for element, and DCMTK must parse the
files.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset, config
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value
from pynetdicom.sop_class import CTImageStorage

from dpp_tools import samples
from dpp_tools.samples import (
    CHARSETS,
    KINDS,
    SOP_CLASS_BY_KIND,
    TRANSFER_SYNTAXES,
    make_library,
    make_non_dpp,
    make_protocol,
    to_bytes,
)

CODECS = {"": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}
# Patient, study and series identity: Orthanc needs them, DPP IODs have none.
NOT_IN_DPP = {"PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "Modality"}
SPECIFICATIONS = (
    "AcquisitionProtocolElementSpecificationSequence",
    "ReconstructionProtocolElementSpecificationSequence",
    "StorageProtocolElementSpecificationSequence",
)
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def elements(ds: Dataset) -> Iterator[DataElement]:
    """Every element of `ds`, sequence items included, depth first."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from elements(item)


def values(elem: DataElement) -> list[object]:
    value = elem.value
    return list(value) if isinstance(value, MultiValue | list) else [value]


def read(data: bytes) -> Dataset:
    """Decode a Part 10 file, failing on any pydicom warning (e.g. a bad character)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pydicom.dcmread(io.BytesIO(data))


def sample() -> list[Dataset]:
    """A few instances of every kind and character set, plus a larger one."""
    instances = [
        make_protocol(seed, kind, charset=charset)
        for seed, (kind, charset) in enumerate((k, c) for k in KINDS for c in CHARSETS)
    ]
    return [*instances, make_protocol(77, "CT", target_size=60_000), make_non_dpp(5)]


# -- determinism and identity


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_seed_gives_the_same_instance_byte_for_byte(kind: str) -> None:
    for seed in (0, 1, 12345):
        first, second = make_protocol(seed, kind), make_protocol(seed, kind)
        assert first == second
        assert to_bytes(first) == to_bytes(second)
    assert make_protocol(1, kind).SOPInstanceUID != make_protocol(2, kind).SOPInstanceUID


def test_seeds_vary_the_content() -> None:
    protocols = [make_protocol(seed, kind) for seed in range(40) for kind in ("CT", "XA")]
    assert len({ds.ProtocolName for ds in protocols}) > 40
    assert len({ds.Manufacturer for ds in protocols}) >= 4
    assert len({ds.InstitutionName for ds in protocols}) >= 8
    rpids = {ds.PotentialScheduledProtocolCodeSequence[0].CodeValue for ds in protocols}
    assert len(rpids) > 15
    assert {len(ds.PotentialScheduledProtocolCodeSequence) for ds in protocols} == {1, 2}
    present = [("PredecessorProtocolSequence" in ds) for ds in protocols]
    assert any(present) and not all(present)
    assert any("ClinicalTrialProtocolID" in ds for ds in protocols)
    assert any(isinstance(ds.get("PotentialReasonsForProcedure"), MultiValue) for ds in protocols)


@pytest.mark.parametrize("kind", KINDS)
def test_sop_class_and_file_meta_match_the_kind(kind: str) -> None:
    ds = make_protocol(3, kind)
    assert ds.SOPClassUID == SOP_CLASS_BY_KIND[kind]
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    if kind != "APPROVAL":
        assert ds.EquipmentModality == kind
        assert ds.ProtocolName.startswith(kind)


def test_kind_and_charset_are_checked() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_protocol(1, "MR")
    with pytest.raises(ValueError, match="charset"):
        make_protocol(1, "CT", charset="ISO_IR 144")


@pytest.mark.parametrize("kind", KINDS)
def test_no_patient_study_or_series_attributes_anywhere(kind: str) -> None:
    for seed in range(20):
        ds = make_protocol(seed, kind)
        found = {elem.keyword for elem in elements(ds)} & NOT_IN_DPP
        assert not found, (seed, found)
        assert not any(elem.tag.group == 0x0010 for elem in ds)


def test_the_non_dpp_instance_is_an_ordinary_ct_image() -> None:
    image = make_non_dpp(3)
    assert image.SOPClassUID == CTImageStorage
    assert {"PatientID", "StudyInstanceUID", "SeriesInstanceUID"} <= set(image.dir())
    assert image.Modality == "CT"
    assert len(image.PixelData) == image.Rows * image.Columns * 2
    assert make_non_dpp(3) == image and make_non_dpp(4).SOPInstanceUID != image.SOPInstanceUID


# -- content follows the standard


def test_every_value_is_valid_for_its_vr() -> None:
    for ds in sample() + list(make_library(60, seed=500, kinds=KINDS)):
        for elem in elements(ds):
            if elem.VR == "SQ":
                continue
            for value in values(elem):
                # Number strings and names are checked in their encoded text form.
                text = str(value) if elem.VR in ("IS", "DS", "PN") else value
                validate_value(elem.VR, text, config.RAISE)  # raises with the reason


def test_uids_are_valid_and_unique_across_a_library() -> None:
    library = list(make_library(300, seed=40, kinds=KINDS))
    uids = [ds.SOPInstanceUID for ds in library]
    assert len(set(uids)) == len(uids)
    assert all(len(uid) <= 64 and UID_PATTERN.match(uid) for uid in uids)
    other = {ds.SOPInstanceUID for ds in make_library(60, seed=40 + 300, kinds=KINDS)}
    assert not other & set(uids)
    same_seed = {make_protocol(5, kind).SOPInstanceUID for kind in KINDS}
    assert len(same_seed) == len(KINDS)


def test_library_items_are_the_seeded_protocols_except_shared_specifications() -> None:
    library = list(make_library(40, seed=900))
    for i, ds in enumerate(library):
        alone = make_protocol(900 + i, ("CT", "XA")[i % 2])
        for keyword in SPECIFICATIONS:
            del ds[keyword], alone[keyword]
        assert ds == alone


def test_library_instances_do_not_share_top_level_elements() -> None:
    first, second = (ds for ds in make_library(2, seed=11, kinds=("CT",)))
    first.ProtocolName = "CHANGED"
    first.PotentialScheduledProtocolCodeSequence[0].CodeValue = "CHANGED"
    assert second.ProtocolName != "CHANGED"
    assert second.PotentialScheduledProtocolCodeSequence[0].CodeValue != "CHANGED"


def test_approvals_reference_protocols() -> None:
    for seed in range(10):
        approval = make_protocol(seed, "APPROVAL")
        subject = approval.ApprovalSubjectSequence[0]
        kind = {uid: k for k, uid in SOP_CLASS_BY_KIND.items()}[subject.ReferencedSOPClassUID]
        assert kind in ("CT", "XA")
        assert subject.ReferencedSOPInstanceUID == make_protocol(seed, kind).SOPInstanceUID
        for item in approval.ApprovalSequence:
            assert item.AssertionCodeSequence[0].CodingSchemeDesignator == "DCM"
            assert item.AsserterIdentificationSequence[0].ObserverType == "PSN"
    library = list(make_library(6, seed=3, kinds=("CT", "APPROVAL", "XA")))
    for before, approval in ((library[0], library[1]), (library[3], library[4])):
        subject = approval.ApprovalSubjectSequence[0]
        assert subject.ReferencedSOPInstanceUID == before.SOPInstanceUID
        assert subject.ReferencedSOPClassUID == before.SOPClassUID


def test_protocol_elements_reference_each_other_consistently() -> None:
    for seed in range(30):
        ds = make_protocol(seed, ("CT", "XA")[seed % 2], target_size=20_000 if seed < 5 else None)
        specifications = [ds[keyword].value for keyword in SPECIFICATIONS]
        for items in specifications:
            assert [item.ProtocolElementNumber for item in items] == list(range(1, len(items) + 1))
        acquisitions, reconstructions, storages = (len(items) for items in specifications)
        assert acquisitions >= 2
        for items, sources in (
            (specifications[1], acquisitions),
            (specifications[2], reconstructions),
        ):
            for item in items:
                constraint = item.ParametersSpecificationSequence[0]
                assert constraint.ConstraintType == "EQUAL"
                source = constraint.ConstraintValueSequence[0].SelectorUSValue
                assert 1 <= source <= sources
        assert storages == reconstructions


def test_constraints_point_into_the_performed_sequences() -> None:
    performed = {
        "AcquisitionProtocolElementSpecificationSequence": 0x00189920,
        "ReconstructionProtocolElementSpecificationSequence": 0x00189934,
        "StorageProtocolElementSpecificationSequence": 0x00189936,
    }
    for seed in range(20):
        ds = make_protocol(seed, ("CT", "XA")[seed % 2])
        for keyword, sequence in performed.items():
            for item in ds[keyword].value:
                for constraint in item.ParametersSpecificationSequence:
                    pointer = constraint.SelectorSequencePointer
                    first = pointer[0] if isinstance(pointer, MultiValue) else pointer
                    assert first == sequence
                    items = constraint.SelectorSequencePointerItems
                    assert (items[0] if isinstance(items, MultiValue) else items) == (
                        item.ProtocolElementNumber
                    )
                    vr = constraint.SelectorAttributeVR
                    assert vr == pydicom.datadict.dictionary_VR(constraint.SelectorAttribute)
                    n = len(constraint.ConstraintValueSequence)
                    assert {"RANGE_INCL": n == 2, "EQUAL": n == 1}.get(constraint.ConstraintType, n)
                    assert all(
                        f"Selector{vr}Value" in v for v in constraint.ConstraintValueSequence
                    )
        for constraint in ds.get("PatientSpecificationSequence", []):
            assert "SelectorSequencePointer" not in constraint


def test_codes_come_from_their_schemes() -> None:
    """SCT and DCM codes exist in pydicom's code dictionary with that meaning; RPIDs look right."""
    known = {
        scheme: {(c.value, c.meaning) for c in getattr(codes, scheme).concepts.values()}
        for scheme in ("SCT", "DCM")
    }
    used: set[tuple[str, str, str]] = set()
    for ds in [make_protocol(seed, kind) for seed in range(25) for kind in KINDS]:
        for elem in elements(ds):
            if elem.VR == "SQ" and elem.keyword.endswith("CodeSequence"):
                for item in elem.value:
                    used.add((item.CodingSchemeDesignator, item.get("CodeValue"), item.CodeMeaning))
    for scheme, value, meaning in used:
        if scheme in known:
            assert (value, meaning) in known[scheme], (scheme, value, meaning)
    playbook = {(value, meaning) for scheme, value, meaning in used if scheme == "RADLEX"}
    assert len(playbook) > 10
    assert all(re.fullmatch(r"RPID\d+", value) for value, _ in playbook)
    assert len({value for value, _ in playbook}) == len(playbook)  # one meaning per RPID
    assert {("RPID16", "CT Chest wo IV Contrast"), ("RPID22", "CT Head wo IV Contrast")} >= {
        pair for pair in playbook if pair[0] in ("RPID16", "RPID22")
    }


# -- character sets


@pytest.mark.parametrize("charset", CHARSETS)
def test_text_fits_the_character_set_and_survives_encoding(charset: str) -> None:
    codec = CODECS[charset]
    for seed in range(8):
        for kind in KINDS:
            ds = make_protocol(seed, kind, charset=charset)
            assert ds.get("SpecificCharacterSet", "") == charset
            texts = [str(v) for elem in elements(ds) if elem.VR in TEXT_VRS for v in values(elem)]
            for text in texts:
                text.encode(codec)  # strict: raises if the character set cannot hold it
            back = read(to_bytes(ds))
            assert back == ds
            names = [ds.InstitutionName, str(ds.get("ContentCreatorName", ""))]
            if charset == "ISO_IR 100":
                assert any(any(ord(c) > 127 for c in name) for name in names)
                assert ds.InstitutionName.encode("latin_1") in to_bytes(ds)
            if charset == "ISO_IR 192":  # non-Latin script in an LO value
                assert any(ord(c) > 255 for c in ds.InstitutionName)
                assert back.InstitutionName == ds.InstitutionName
            if charset == "":
                assert all(text.isascii() for text in texts)


def test_utf8_person_names_carry_non_latin_scripts() -> None:
    names = [
        str(make_protocol(seed, "CT", charset="ISO_IR 192").ContentCreatorName)
        for seed in range(40)
    ]
    assert all(any(ord(c) > 255 for c in name) for name in names)
    assert any("=" in name for name in names)  # ideographic / phonetic component groups
    assert any(re.search("[\u0370-\u03ff]", name) for name in names)  # Greek


def test_the_seed_chooses_among_the_character_sets() -> None:
    chosen = {make_protocol(seed, "CT").get("SpecificCharacterSet", "") for seed in range(40)}
    assert chosen == set(CHARSETS)


# -- encoding


@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda uid: uid.name)
def test_round_trip_through_every_transfer_syntax(transfer_syntax: str) -> None:
    for ds in sample():
        data = to_bytes(ds, transfer_syntax)
        assert data[128:132] == b"DICM"
        back = read(data)
        assert back.file_meta.TransferSyntaxUID == transfer_syntax
        assert back == ds
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # ds untouched


def test_a_decoded_file_re_encodes_in_another_byte_order() -> None:
    ds = make_protocol(8, "XA", charset="ISO_IR 192")
    big = read(to_bytes(ds, ExplicitVRBigEndian))
    assert read(to_bytes(big, ExplicitVRLittleEndian)) == ds


def test_to_bytes_keeps_the_callers_file_meta() -> None:
    image = make_non_dpp(1)
    image.file_meta.MediaStorageSOPClassUID = SOP_CLASS_BY_KIND["CT"]
    back = read(to_bytes(image))
    assert back.file_meta.MediaStorageSOPClassUID == SOP_CLASS_BY_KIND["CT"]
    assert back.SOPClassUID == CTImageStorage
    with pytest.raises(ValueError, match="uncompressed"):
        to_bytes(image, "1.2.840.10008.1.2.4.50")


def test_pixel_data_reads_the_same_in_both_byte_orders() -> None:
    image = make_non_dpp(2)
    little = read(to_bytes(image, ExplicitVRLittleEndian)).PixelData
    big = read(to_bytes(image, ExplicitVRBigEndian)).PixelData
    assert little == big == image.PixelData


@pytest.mark.parametrize("target", [15_000, 120_000, 400_000])
def test_target_size_is_reached_by_adding_protocol_elements(target: int) -> None:
    ds = make_protocol(21, "CT", target_size=target)
    size = len(to_bytes(ds))
    assert abs(size - target) <= max(0.05 * target, 4_000), size
    default = make_protocol(21, "CT")
    added = len(ds.AcquisitionProtocolElementSpecificationSequence) - len(
        default.AcquisitionProtocolElementSpecificationSequence
    )
    assert added >= (target - len(to_bytes(default))) // 10_000
    assert ds.ProtocolName == default.ProtocolName


def test_default_sizes_are_a_few_kilobytes() -> None:
    sizes = [len(to_bytes(make_protocol(seed, kind))) for seed in range(12) for kind in KINDS]
    assert min(sizes) > 1_000 and max(sizes) < 40_000
    assert 3_000 < sorted(sizes)[len(sizes) // 2] < 15_000


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="DCMTK's dcmdump is not installed")
@pytest.mark.parametrize("transfer_syntax", TRANSFER_SYNTAXES, ids=lambda uid: uid.name)
def test_dcmtk_parses_the_files(transfer_syntax: str, tmp_path: Path) -> None:
    for charset in CHARSETS:
        ds = make_protocol(30, "CT", charset=charset)
        path = tmp_path / "protocol.dcm"
        path.write_bytes(to_bytes(ds, transfer_syntax))
        # +L prints long values whole; dcmdump prints text bytes as stored.
        result = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert b"E:" not in result.stderr and b"W:" not in result.stderr, result.stderr
        assert ds.ProtocolName.encode(CODECS[charset]) in result.stdout
        assert b"AcquisitionProtocolElementSpecificationSequence" in result.stdout


# -- property: any seed gives a valid, encodable instance


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    kind=st.sampled_from(KINDS),
    charset=st.sampled_from((None, *CHARSETS)),
)
def test_any_seed_gives_a_valid_instance(seed: int, kind: str, charset: str | None) -> None:
    ds = make_protocol(seed, kind, charset=charset)
    assert not {elem.keyword for elem in elements(ds)} & NOT_IN_DPP
    assert read(to_bytes(ds)) == ds
    assert samples.make_protocol(seed, kind, charset=charset) == ds
