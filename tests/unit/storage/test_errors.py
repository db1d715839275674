"""``undecodable_as_store_error``: how a received dataset that cannot be decoded is refused."""

from __future__ import annotations

import pytest

from orthanc_dpp.model import dimse_status
from orthanc_dpp.storage.decoding import LimitExceeded
from orthanc_dpp.storage.errors import StoreError, undecodable_as_store_error


def test_a_limit_keeps_its_own_statuses_and_comment() -> None:
    limit = LimitExceeded("dataset larger than 10 bytes", "MaximumDatasetSize")
    with pytest.raises(StoreError) as refused, undecodable_as_store_error():
        raise limit
    assert (refused.value.dimse_status, refused.value.http_status) == (0xA700, 413)
    assert refused.value.reason == "dataset larger than 10 bytes"
    assert refused.value.__cause__ is limit


def test_anything_else_is_cannot_understand() -> None:
    with pytest.raises(StoreError) as refused, undecodable_as_store_error():
        raise ValueError("bad length")
    assert refused.value.dimse_status == dimse_status.STORE_CANNOT_UNDERSTAND
    assert refused.value.http_status == 400
    assert refused.value.reason == "cannot decode the dataset: bad length"


def test_nothing_happens_when_the_dataset_decodes() -> None:
    with undecodable_as_store_error():
        decoded = 1
    assert decoded == 1
