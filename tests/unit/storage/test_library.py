"""Storing through ProtocolLibrary: success only once stored, clear refusals."""

import io
import threading
import warnings

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.dimse_status import error_comment
from orthanc_dpp.model.normalization import Normalization, has_record
from orthanc_dpp.model.sop import CT_DPP_STORAGE, PROTOCOL_APPROVAL_STORAGE
from orthanc_dpp.storage.decoding import DatasetLimits
from orthanc_dpp.storage.library import ProtocolLibrary, StoreError, normalize_received
from orthanc_dpp.storage.part10 import encode_part10, parse_part10
from tests.fake_orthanc import FakeOrthancApi
from tests.part10_faults import deflated_bomb, lying_about_syntax, meta_end

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def part10(transfer_syntax: str = ExplicitVRLittleEndian, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_DPP_STORAGE
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.ProtocolName = "Tête sans contraste 頭部"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


@pytest.fixture
def api() -> FakeOrthancApi:
    return FakeOrthancApi()


@pytest.fixture
def library(api: FakeOrthancApi) -> ProtocolLibrary:
    return ProtocolLibrary(api, Normalization())


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_store_then_original_equals_what_was_sent(library, api, transfer_syntax):
    sent = part10(transfer_syntax)
    expected = pydicom.dcmread(io.BytesIO(encode_part10(sent)))
    stored = library.store(sent)
    assert stored.status == "Success"
    assert stored.added[:3] == ["PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
    assert stored.dataset == expected  # the caller's dataset is the original again
    in_orthanc = pydicom.dcmread(io.BytesIO(api.files[stored.orthanc_id]))
    assert in_orthanc.PatientID == "DPP-PROTOCOL-LIBRARY" and has_record(in_orthanc)
    assert library.original_dataset(stored.orthanc_id) == expected
    back = pydicom.dcmread(io.BytesIO(library.original_bytes(stored.orthanc_id)))
    assert back == expected
    assert back.file_meta.TransferSyntaxUID == transfer_syntax


def test_untouched_instance_is_returned_byte_for_byte(library, api):
    data = encode_part10(part10(PatientID="P", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.4"))
    stored = library.store(parse_part10(data), data)
    assert stored.added == []
    assert api.files[stored.orthanc_id] == data
    assert library.original_bytes(stored.orthanc_id) == data


def test_identical_resend_is_already_stored(library, caplog):
    library.store(part10())
    with caplog.at_level("INFO", "orthanc_dpp"):
        again = library.store(part10(transfer_syntax=ImplicitVRLittleEndian))
    assert again.status == "AlreadyStored"
    assert again.dataset.ProtocolName == "Tête sans contraste 頭部"
    assert "sent again, identical to the stored copy" in caplog.text


def test_resend_with_other_content_is_refused_and_the_stored_copy_kept(library, api):
    first = library.store(part10())
    with pytest.raises(StoreError) as refused:
        library.store(part10(ProtocolName="POISONED NAME"))
    assert refused.value.dimse_status == dimse_status.DUPLICATE_SOP_INSTANCE == 0x0111
    assert refused.value.http_status == 409
    assert refused.value.reason.startswith("SOP Instance UID already stored with other content")
    assert library.original_dataset(first.orthanc_id).ProtocolName == "Tête sans contraste 頭部"


def uid_index(library: ProtocolLibrary) -> dict[str, str]:
    """A stand-in for the index: which Orthanc instance holds each UID."""
    held: dict[str, str] = {}
    library.stored_as = held.get
    return held


def test_same_uid_under_another_patient_is_refused(library, api):
    held = uid_index(library)
    first = library.store(part10())
    held[first.sop_instance_uid] = first.orthanc_id
    with pytest.raises(StoreError) as refused:
        library.store(part10(PatientID="P", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.4"))
    assert refused.value.dimse_status == dimse_status.DUPLICATE_SOP_INSTANCE
    assert refused.value.reason.startswith("SOP Instance UID stored under other patient/study")
    assert first.orthanc_id in refused.value.reason
    assert list(api.files) == [first.orthanc_id]


def test_with_overwrite_the_newcomer_replaces_the_old_instance(api, caplog):
    library = ProtocolLibrary(api, Normalization(), overwrite=True)
    held = uid_index(library)
    first = library.store(part10())
    held[first.sop_instance_uid] = first.orthanc_id
    second = library.store(
        part10(PatientID="P", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.4", ProtocolName="v2")
    )
    assert second.orthanc_id != first.orthanc_id
    assert list(api.files) == [second.orthanc_id]
    assert f"instance {first.orthanc_id} replaced by {second.orthanc_id}" in caplog.text


def test_two_stores_of_one_uid_at_once_are_not_raced(library):
    with library._claim("1.2.826.0.1.3680043.8.498.77"), pytest.raises(StoreError) as busy:
        library.store(part10())
    assert busy.value.reason.startswith("SOP Instance UID being stored by another request")
    assert library.store(part10()).status == "Success"  # free again afterwards


def test_protocol_approval_is_storable(library):
    stored = library.store(part10(SOPClassUID=PROTOCOL_APPROVAL_STORAGE))
    assert stored.sop_class_uid == PROTOCOL_APPROVAL_STORAGE


@pytest.mark.parametrize(
    ("change", "code", "http", "reason"),
    [
        ({"SOPClassUID": CT_IMAGE}, 0xA900, 415, "CT Image Storage is not a Defined Procedure"),
        ({"SOPInstanceUID": "not a uid"}, 0xC000, 400, "SOP Instance UID (0008,0018) missing"),
        ({"SOPClassUID": ""}, 0xA900, 400, "SOP Class UID (0008,0016) missing"),
    ],
)
def test_refusals_say_why(library, api, change, code, http, reason):
    with pytest.raises(StoreError) as caught:
        library.store(part10(**change))
    assert (caught.value.dimse_status, caught.value.http_status) == (code, http)
    assert reason in caught.value.reason
    assert api.files == {}


def test_context_mismatch_is_a_dataset_sop_class_mismatch(library):
    with pytest.raises(StoreError) as caught:
        library.store(part10(), context_sop_class=PROTOCOL_APPROVAL_STORAGE)
    assert caught.value.dimse_status == dimse_status.STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "does not match the presentation context" in caught.value.reason


@pytest.mark.parametrize(
    ("orthanc_error", "code", "http", "comment"),
    [
        # What Orthanc 1.10.1 answers for a full storage folder, a full
        # index folder and a PostgreSQL that went away (test_storage_full.py,
        # test_scale_out.py).
        (
            (14, "Cannot write to file"),
            dimse_status.STORE_OUT_OF_RESOURCES,
            507,
            "Orthanc's storage is full or not writable (error 14: Cannot writ",
        ),
        (
            (1009, "SQLite: Cannot run a cached statement"),
            dimse_status.STORE_OUT_OF_RESOURCES,
            507,
            "Orthanc's index is full or not writable (error 1009: SQLite: Can",
        ),
        (
            (36, "The database is currently not available (probably a transient situation)"),
            dimse_status.STORE_OUT_OF_RESOURCES,
            503,
            "Orthanc's database is unavailable, try again (error 36: The data",
        ),
        (
            # A store caught by PostgreSQL's fast shutdown on a loaded machine.
            (6, "Bad sequence of calls"),
            dimse_status.STORE_OUT_OF_RESOURCES,
            503,
            "Orthanc's store was interrupted, try again (error 6: Bad sequenc",
        ),
        (
            (19, "The file storage is full"),
            dimse_status.STORE_OUT_OF_RESOURCES,
            507,
            "Orthanc's storage is full (error 19: The file storage is full)",
        ),
        (
            (15, "Bad file format"),
            dimse_status.STORE_CANNOT_UNDERSTAND,
            500,
            "Orthanc did not store the instance: (15, 'Bad file format')",
        ),
    ],
    ids=[
        "storage full",
        "index full",
        "database gone",
        "store interrupted",
        "full storage",
        "bad file",
    ],
)
def test_orthanc_failure_is_not_success(library, api, orthanc_error, code, http, comment):
    api.fail_next_post = orthanc_error
    with pytest.raises(StoreError) as caught:
        library.store(part10())
    assert (caught.value.dimse_status, caught.value.http_status) == (code, http)
    assert orthanc_error[1] in caught.value.reason
    assert error_comment(caught.value.reason) == comment
    assert api.files == {}


WHOLE = encode_part10(part10())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello", "not a DICOM Part 10 file"),
        (WHOLE[:-5], r"file truncated in element \(0018,1030\): 23 of 28 bytes"),
        (WHOLE[: meta_end(WHOLE)], "holds no dataset"),
        (WHOLE[:200], "file truncated: 4 bytes of an element at its end"),
        (WHOLE[:-30], "file truncated: 6 bytes of an element at its end"),
    ],
    ids=["not DICOM", "truncated value", "meta only", "cut in the meta", "cut in a header"],
)
def test_parse_part10_rejects_damaged_files(data, reason):
    with pytest.raises(StoreError, match=reason) as caught:
        parse_part10(data)
    assert caught.value.http_status == 400


def test_parse_part10_in_many_threads_leaves_the_warnings_machinery_as_it_was():
    """Stores run on several threads at once; each parse records pydicom's warnings
    (catch_warnings), which swaps process-wide state: interleaved, one thread would
    restore another's recorder and leave it installed for good."""
    files = [WHOLE, WHOLE[:-5], WHOLE[:200], WHOLE[:-30]] * 40
    before = (warnings.showwarning, list(warnings.filters))
    outcomes: list[list[bool]] = [[] for _ in range(6)]
    go = threading.Barrier(len(outcomes))

    def parse_all(found: list[bool]) -> None:
        go.wait()
        for data in files:
            try:
                parse_part10(data)
                found.append(True)
            except StoreError:
                found.append(False)

    threads = [threading.Thread(target=parse_all, args=(found,)) for found in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(found == [data is WHOLE for data in files] for found in outcomes)
    assert (warnings.showwarning, list(warnings.filters)) == before


def test_normalize_received_only_touches_dpp_without_identity():
    labels = Normalization()
    assert normalize_received(b"garbage", labels) is None
    image = part10(SOPClassUID=CT_IMAGE)
    assert normalize_received(encode_part10(image), labels) is None
    full = part10(PatientID="P", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.4")
    assert normalize_received(encode_part10(full), labels) is None
    normalized = normalize_received(encode_part10(part10()), labels)
    assert normalized is not None
    assert pydicom.dcmread(io.BytesIO(normalized)).PatientID == "DPP-PROTOCOL-LIBRARY"


def test_normalize_received_does_not_inflate_a_bomb_behind_a_lying_meta(caplog):
    """Orthanc's own routes (POST /instances) reach the hook: it checks before pydicom inflates."""
    bomb = lying_about_syntax(deflated_bomb(5200, 32 << 20))
    limits = DatasetLimits(maximum_size=1 << 20)
    assert normalize_received(bomb, Normalization(), limits) is None
    assert "Received instance left as it is, not read: Dataset inflates to more than" in caplog.text
    # The same protocol, small and sound, is normalized.
    assert normalize_received(deflated_bomb(5200, 16), Normalization(), limits) is not None


def test_the_claim_is_held_until_the_index_knows_the_instance(library, api):
    """A second sender of the UID while the first is being indexed is refused, not stored."""
    held = uid_index(library)
    meanwhile: list[str] = []

    def index(stored) -> None:
        try:  # another sender of the UID, under another patient, before the index is updated
            library.store(part10(PatientID="P", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.4"))
        except StoreError as exc:
            meanwhile.append(exc.reason)
        held[stored.sop_instance_uid] = stored.orthanc_id

    first = library.store(part10(), on_stored=index)
    assert meanwhile[0].startswith("SOP Instance UID being stored by another request")
    assert list(api.files) == [first.orthanc_id]  # one Orthanc instance of the UID
    with pytest.raises(StoreError) as later:  # the index knows it now
        library.store(part10(PatientID="P", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.4"))
    assert later.value.reason.startswith("SOP Instance UID stored under other patient/study")


def test_the_claim_is_released_when_indexing_fails(library):
    def broken(stored) -> None:
        raise RuntimeError("index broken")

    with pytest.raises(RuntimeError):
        library.store(part10(), on_stored=broken)
    assert library.store(part10()).status == "AlreadyStored"  # not "being stored"


def test_stores_are_refused_while_the_index_loads(api):
    loaded = False
    library = ProtocolLibrary(api, Normalization(), ready=lambda: loaded)
    with pytest.raises(StoreError) as refused:
        library.store(part10())
    assert refused.value.dimse_status == dimse_status.STORE_OUT_OF_RESOURCES == 0xA700
    assert refused.value.http_status == 503
    assert dimse_status.error_comment(refused.value.reason).startswith("protocol index is loading")
    assert not api.files
    loaded = True
    assert library.store(part10()).status == "Success"
