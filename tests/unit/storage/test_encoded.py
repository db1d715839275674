"""The store path walks the received bytes instead of decoding them, and splices additions in."""

import io

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from orthanc_dpp.model import normalization
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.sop import CT_DPP_STORAGE
from orthanc_dpp.storage import encoded
from orthanc_dpp.storage.decoding import DatasetLimits, LimitExceeded, nesting_depth
from orthanc_dpp.storage.library import ProtocolLibrary
from orthanc_dpp.storage.part10 import encode_part10, parse_part10, read_part10, spliced_part10
from tests.datasets import nested
from tests.fake_orthanc import FakeOrthancApi


def protocol(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_DPP_STORAGE
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.91"
    ds.ProtocolName = "Tête sans contraste 頭部"
    code = Dataset()
    code.CodeValue = "RPID22"
    code.CodingSchemeDesignator = "RADLEX"
    code.CodeMeaning = "CT Head"
    ds.PotentialScheduledProtocolCodeSequence = Sequence([code])
    element = Dataset()
    element.ProtocolElementNumber = 1
    element.ProtocolElementName = "Scout"
    element.ConceptNameCodeSequence = Sequence([code])
    ds.AcquisitionProtocolElementSequence = Sequence([element])
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def dataset_bytes(ds: Dataset, implicit: bool) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
def test_scan_finds_every_top_level_element_where_it_starts(implicit: bool) -> None:
    ds = protocol()
    data = dataset_bytes(ds, implicit)
    elements = encoded.scan(data, implicit, 8)
    assert list(elements.tags) == [int(tag) for tag in ds.keys()]  # noqa: SIM118
    whole = pydicom.filereader.read_dataset(io.BytesIO(data), implicit, True)
    starts, ends = elements.starts[:-1], elements.starts[1:]
    for tag, start, end in zip(elements.tags, starts, ends, strict=True):
        alone = pydicom.filereader.read_dataset(io.BytesIO(data[start:end]), implicit, True)
        assert list(alone.keys()) == [tag]
        assert alone.get_item(tag).value == whole.get_item(tag).value


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("depth", [0, 1, 7, 8, 9, 30])
def test_scan_counts_nesting_as_the_decoding_limit_does(implicit: bool, depth: int) -> None:
    ds = nested(depth)
    data = dataset_bytes(ds, implicit)
    decoded = nesting_depth(pydicom.filereader.read_dataset(io.BytesIO(data), implicit, True), 8)
    if decoded <= 8:
        encoded.scan(data, implicit, 8)
    else:
        with pytest.raises(encoded.TooDeep):
            encoded.scan(data, implicit, 8)


@pytest.mark.parametrize("implicit", [False, True])
def test_damaged_bytes_are_not_vouched_for(implicit: bool) -> None:
    data = dataset_bytes(protocol(), implicit)
    for cut in (3, 9, len(data) // 2, len(data) - 1):
        with pytest.raises(encoded.Unreadable):
            encoded.scan(data[:cut], implicit, 8)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    "attributes", [{}, {"PatientID": ""}, {"PatientID": "P1", "StudyInstanceUID": "1.2.3"}]
)
def test_spliced_file_equals_the_encoded_one(transfer_syntax: str, attributes: dict) -> None:
    ds = protocol(**attributes)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    data = encode_part10(ds)
    old = parse_part10(data)
    old_result = normalization.normalize(old, Normalization())
    expected = pydicom.dcmread(io.BytesIO(encode_part10(old)))
    new, elements = read_part10(data, 8)
    assert elements is not None
    result = normalization.normalize(new, Normalization())
    assert result.added == old_result.added and result.filled == old_result.filled
    spliced = spliced_part10(new, elements, result)
    assert spliced is not None
    stored = pydicom.dcmread(io.BytesIO(spliced))
    assert stored == expected
    assert stored.file_meta.TransferSyntaxUID == transfer_syntax
    assert normalization.reverse(stored) == parse_part10(data)


def test_non_ascii_labels_are_encoded_whole() -> None:
    ds = protocol()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    new, elements = read_part10(encode_part10(ds), 8)
    assert elements is not None
    result = normalization.normalize(new, Normalization(patient_name="Protocoles^Tête"))
    assert spliced_part10(new, elements, result) is None  # the caller encodes it all


def test_deep_nesting_in_an_upload_is_read_as_before() -> None:
    ds = nested(12)
    ds.SOPClassUID = CT_DPP_STORAGE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    read, elements = read_part10(encode_part10(ds), 8)
    assert elements is None and nesting_depth(read, 20) == 12


def test_the_library_stores_the_spliced_file_and_indexes_the_original() -> None:
    api = FakeOrthancApi()
    library = ProtocolLibrary(api, Normalization())
    ds = protocol()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = encode_part10(ds)
    read, elements = read_part10(data, 8)
    stored = library.store(read, data, elements=elements)
    assert stored.status == "Success"
    assert stored.dataset == parse_part10(data)
    assert library.original_dataset(stored.orthanc_id) == parse_part10(data)
    kept = pydicom.dcmread(io.BytesIO(library.stored_bytes(stored.orthanc_id)))
    assert kept.PatientID == Normalization().patient_id


def test_a_c_store_too_deep_is_refused_as_before() -> None:
    from types import SimpleNamespace

    from orthanc_dpp.dicom.scp.handlers import store_dataset

    raw = dataset_bytes(nested(9), False)
    event = SimpleNamespace(
        request=SimpleNamespace(DataSet=io.BytesIO(raw)),
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
    )
    with pytest.raises(LimitExceeded, match="MaximumNestingDepth"):
        store_dataset(event, DatasetLimits(maximum_depth=8))  # type: ignore[arg-type]
    event.request.DataSet = io.BytesIO(dataset_bytes(nested(8), False))
    ds, elements = store_dataset(event, DatasetLimits(maximum_depth=8))  # type: ignore[arg-type]
    assert elements is not None and ds.SOPInstanceUID == "1.2.3"
