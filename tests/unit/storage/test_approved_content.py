"""An approval applies to the content its protocols held when it was stored (bindings.py)."""

from __future__ import annotations

import copy
import json

from pydicom import Dataset

from dpp_tools.samples import make_protocol
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.storage.approved_content import METADATA, ApprovedContent
from orthanc_dpp.storage.library import ProtocolLibrary
from tests.fake_orthanc import FakeOrthancApi


class Library:
    """The library, the index and the approved content, wired as the adapter does."""

    def __init__(self) -> None:
        self.api = FakeOrthancApi()
        self.index = ProtocolIndex()
        self.library = ProtocolLibrary(self.api, Normalization(), stored_as=self._stored_as)
        self.content = ApprovedContent(self.api, self.index)

    def _stored_as(self, uid: str) -> str | None:
        entry = self.index.get(uid)
        return None if entry is None else entry.orthanc_id

    def store(self, ds: Dataset) -> str:
        stored = self.library.store(copy.deepcopy(ds))
        assert stored.dataset is not None
        self.index.put(stored.orthanc_id, stored.dataset)
        entry = self.index.get_by_orthanc_id(stored.orthanc_id)
        assert entry is not None
        if entry.sop_class_uid == "1.2.840.10008.5.1.4.1.1.200.3":
            self.content.bind(entry)
        return stored.orthanc_id

    def delete(self, uid: str) -> None:
        entry = self.index.get(uid)
        assert entry is not None
        self.library.delete(entry.orthanc_id)
        self.index.remove(entry.orthanc_id)
        self.content.forget(entry.orthanc_id)

    def applies(self, approval: Dataset, protocol: Dataset) -> bool:
        a, p = self.index.get(approval.SOPInstanceUID), self.index.get(protocol.SOPInstanceUID)
        assert a is not None and p is not None
        return self.content.applies(a, p)


def approval_of(protocol: Dataset, seed: int) -> Dataset:
    ds = make_protocol(seed, "APPROVAL")
    ds.ApprovalSubjectSequence[0].ReferencedSOPClassUID = protocol.SOPClassUID
    ds.ApprovalSubjectSequence[0].ReferencedSOPInstanceUID = protocol.SOPInstanceUID
    return ds


def test_an_approval_applies_to_the_content_it_approved_only() -> None:
    here = Library()
    protocol = make_protocol(501, "CT")
    here.store(protocol)
    approval = approval_of(protocol, 601)
    approval_id = here.store(approval)
    assert here.applies(approval, protocol)
    recorded = json.loads(here.api.metadata[approval_id, str(METADATA)])
    assert set(recorded) == {protocol.SOPInstanceUID}

    changed = copy.deepcopy(protocol)
    changed.ProtocolName = "changed after the approval"
    here.delete(protocol.SOPInstanceUID)
    here.store(changed)
    assert not here.applies(approval, changed)

    here.delete(protocol.SOPInstanceUID)
    here.store(protocol)  # the approved content again
    assert here.applies(approval, protocol)


def test_the_record_is_read_back_from_orthanc() -> None:
    here = Library()
    protocol = make_protocol(502, "CT")
    here.store(protocol)
    approval = approval_of(protocol, 602)
    here.store(approval)
    fresh = ApprovedContent(here.api, here.index)  # another node, or after a restart
    a, p = here.index.get(approval.SOPInstanceUID), here.index.get(protocol.SOPInstanceUID)
    assert a is not None and p is not None and fresh.applies(a, p)


def test_an_approval_stored_before_its_protocol_or_around_the_plugin_approves_nothing() -> None:
    here = Library()
    protocol = make_protocol(503, "CT")
    approval = approval_of(protocol, 603)
    here.store(approval)  # the protocol is not stored yet
    here.store(protocol)
    assert not here.applies(approval, protocol)
    here.store(approval)  # stored again: bound to what is stored now
    assert here.applies(approval, protocol)

    other = approval_of(protocol, 604)
    stored = here.library.store(copy.deepcopy(other))  # no record, as through Orthanc's routes
    assert stored.dataset is not None
    here.index.put(stored.orthanc_id, stored.dataset)
    assert not here.applies(other, protocol)
