"""The C-FIND handler's bounds: time limit, a closed association, identifier limits."""

from __future__ import annotations

import zlib
from io import BytesIO
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from dpp_tools.samples import make_protocol
from orthanc_dpp.dicom.scp import handlers
from orthanc_dpp.model import sop
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.storage.decoding import DatasetLimits
from orthanc_dpp.storage.library import ProtocolLibrary
from tests.datasets import raw_identifiers
from tests.fake_orthanc import FakeOrthancApi
from tests.scp_harness import find_event, gate, handler, universal


def codes(responses: list) -> list[int]:
    return [c if isinstance(c, int) else int(c.Status) for c, _ in responses]


def test_a_query_past_its_time_limit_ends_with_refine(monkeypatch) -> None:
    clock = iter(range(0, 10_000, 3))  # every reading 3 s later than the last
    monkeypatch.setattr(handlers.time, "monotonic", lambda: next(clock))
    responses = list(handler(time_limit=5)(find_event(universal())))
    *pending, (final, _) = responses
    assert len(pending) < 10  # stopped before all ten matches
    assert int(final.Status) == 0xA700
    assert final.ErrorComment == "Query ran longer than FindTimeLimit (5 s); refine it"


def test_a_closed_association_stops_the_query_without_an_answer() -> None:
    assoc = SimpleNamespace(is_established=True)
    responses = handler()(find_event(universal(), assoc))
    first = next(responses)
    assert codes([first]) == [0xFF00]
    assoc.is_established = False  # the requester went away
    rest = list(responses)
    assert rest == []


def test_unbounded_query_answers_everything() -> None:
    responses = list(handler()(find_event(universal())))
    assert codes(responses) == [0xFF00] * 10 + [0x0000]


@pytest.mark.parametrize("count", [3, 4])
def test_identifier_values_are_bounded(count: int) -> None:
    identifier = universal()
    identifier.SOPInstanceUID = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(count)]
    limits = DatasetLimits(maximum_values=3)
    responses = list(handler(limits=limits)(find_event(identifier)))
    if count == 3:
        assert codes(responses) == [0xFF00] * 3 + [0x0000]
    else:
        assert codes(responses) == [0xA700]
        assert "more than MaximumValuesPerKey (3)" in responses[0][0].ErrorComment


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of the garbage values
@settings(max_examples=200, deadline=None)
@given(data=raw_identifiers(), deflated=st.booleans())
def test_any_identifier_bytes_end_with_one_final_status(data: bytes, deflated: bool) -> None:
    """Raw bytes through the whole handler: bounded decode, limits, matching; never a raise."""
    syntax = ExplicitVRLittleEndian
    if deflated:
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
        syntax = DeflatedExplicitVRLittleEndian
    event = find_event(universal())
    event.request.Identifier = BytesIO(data)
    event.context.transfer_syntax = syntax
    limits = DatasetLimits(maximum_size=1 << 16, maximum_depth=2, maximum_values=3)
    responses = list(handler(limits=limits)(event))
    *pending, (final, dataset) = responses
    assert dataset is None
    assert all(
        code == 0xFF00 or int(getattr(code, "Status", code)) in (0xFF00, 0xFF01)
        for code, _ in pending
    )
    code = final if isinstance(final, int) else int(final.Status)
    assert code in (0x0000, 0xA700, 0xA900, 0xC000)


def store_event(ds: Dataset, ae_title: str) -> SimpleNamespace:
    """A C-STORE event of ``ds`` from ``ae_title``, on the context of its SOP class."""
    assoc = SimpleNamespace(
        is_established=True,
        requestor=SimpleNamespace(ae_title=ae_title, address="127.0.0.1", port=1234),
    )
    return SimpleNamespace(
        assoc=assoc,
        request=SimpleNamespace(
            DataSet=BytesIO(encode(ds, False, True)),
            AffectedSOPClassUID=ds.SOPClassUID,
            AffectedSOPInstanceUID=ds.SOPInstanceUID,
        ),
        context=SimpleNamespace(
            transfer_syntax=ExplicitVRLittleEndian, abstract_syntax=ds.SOPClassUID
        ),
        file_meta=file_meta(ds),
    )


def file_meta(ds: Dataset) -> FileMetaDataset:
    """The file meta pynetdicom hands a C-STORE handler."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


@pytest.mark.parametrize("ae_title", ["APPROVER", "MODALITY"])
def test_approvals_are_stored_over_dicom_only_by_approval_storers(caplog, ae_title) -> None:
    api = FakeOrthancApi()
    handle = handlers.StoreHandler(
        ProtocolLibrary(api, Normalization()),
        gate(),
        lambda stored: None,
        options=handlers.StoreOptions(approval_storers=frozenset({"APPROVER"})),
    )
    protocol = handle(store_event(make_protocol(11, "CT"), ae_title))
    assert int(protocol.Status) == 0x0000  # protocols: whoever may store
    with caplog.at_level("INFO", "orthanc_dpp"):
        answer = handle(store_event(make_protocol(12, "APPROVAL"), ae_title))
    if ae_title == "APPROVER":
        assert int(answer.Status) == 0x0000 and len(api.files) == 2
    else:
        assert int(answer.Status) == 0x0124 and answer.ErrorComment == "Not authorised"
        assert len(api.files) == 1
        assert (
            "C-STORE of a Protocol Approval from MODALITY@127.0.0.1:1234 refused: AET MODALITY "
            "is not in ApprovalStorers"
        ) in caplog.text


# -- C-STORE: the dataset is the instance the command announces ----------------------------


def test_a_dataset_that_is_the_announced_instance_passes() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    request = SimpleNamespace(
        AffectedSOPClassUID=sop.CT_DPP_STORAGE, AffectedSOPInstanceUID="1.2.3"
    )
    handlers.check_announced_class(request, sop.CT_DPP_STORAGE)
    handlers.check_announced_instance(request, ds)


@pytest.mark.parametrize(
    ("own", "affected", "comment", "detail"),
    [
        (
            "1.2.4",
            "1.2.3",
            "SOP Instance UID is not the Affected SOP Instance UID",
            "the dataset's SOP Instance UID 1.2.4 is not the Affected SOP Instance UID 1.2.3",
        ),
        (
            None,
            "1.2.3",
            "SOP Instance UID (0008,0018) missing from the dataset",
            "the dataset announced as 1.2.3 has no SOP Instance UID",
        ),
        (
            "1.2.4",
            None,
            "SOP Instance UID is not the Affected SOP Instance UID",
            "the dataset's SOP Instance UID 1.2.4 is not the Affected SOP Instance UID (none)",
        ),
    ],
)
def test_a_dataset_that_is_another_instance_is_refused(own, affected, comment, detail) -> None:
    ds = Dataset()
    if own is not None:
        ds.SOPInstanceUID = own
    with pytest.raises(handlers.NotAnnounced) as caught:
        handlers.check_announced_instance(SimpleNamespace(AffectedSOPInstanceUID=affected), ds)
    assert (caught.value.status, caught.value.comment, caught.value.detail) == (
        0xC000,
        comment,
        detail,
    )


def test_a_command_naming_another_class_than_its_context_is_refused() -> None:
    request = SimpleNamespace(AffectedSOPClassUID=sop.PROTOCOL_APPROVAL_STORAGE)
    with pytest.raises(handlers.NotAnnounced) as caught:
        handlers.check_announced_class(request, sop.CT_DPP_STORAGE)
    assert caught.value.status == 0xA900
    assert caught.value.comment == "Affected SOP Class UID is not the presentation context's"
    assert caught.value.detail == (
        f"Affected SOP Class UID {sop.PROTOCOL_APPROVAL_STORAGE} is not the presentation "
        f"context's {sop.CT_DPP_STORAGE}"
    )
