"""``GET /dpp/protocols?approved=&approval=`` against the states the list itself shows.

The filters skip the protocols no approval names; the unfiltered list works
``Approved`` and ``ApprovalState`` out from every approval, so each filtered
answer must be the unfiltered one, filtered by those fields, then paged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from dpp_tools.samples import make_library, make_protocol
from orthanc_dpp.model import approvals
from orthanc_dpp.model.index import Entry, ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.rest.http import Request
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.storage.library import ProtocolLibrary
from tests.fake_orthanc import FakeOrthancApi


class SomeContentChanged:
    """Says that some approvals approved content other than the protocol's now (the way
    ``ApprovedContent`` does after a protocol is replaced), a fixed third of the pairs."""

    def applies(self, approval: Entry, protocol: Entry) -> bool:
        return (approval.number + protocol.number) % 3 != 0


@pytest.fixture(scope="module", params=[None, SomeContentChanged()])
def rest(request: pytest.FixtureRequest) -> DppRestApi:
    index = ProtocolIndex()
    for number, ds in enumerate(make_library(90, kinds=("CT", "XA", "APPROVAL"))):
        index.put(f"o{number}", ds)
    for seed in range(0, 90, 4):  # second approvals of some protocols, others of none stored
        index.put(f"a{seed}", make_protocol(seed, "APPROVAL"))
    return DppRestApi(
        ProtocolLibrary(FakeOrthancApi(), Normalization()),
        index,
        status=dict,
        on_stored=lambda stored: None,
        on_deleted=index.remove,
        content=request.param,
    )


def listed(rest: DppRestApi, **query: str) -> dict[str, Any]:
    response = rest.protocols(Request("GET", get=query))
    assert response.status == 200
    return json.loads(response.body)


@pytest.mark.parametrize("search", [{}, {"modality": "CT"}, {"code": "rpid"}])
def test_the_approval_filters_keep_what_the_unfiltered_list_says(
    rest: DppRestApi, search: dict[str, str]
) -> None:
    everything = listed(rest, limit="1000", **search)["Protocols"]
    protocols = [p for p in everything if "ApprovalState" in p]
    whole = listed(rest, limit="1000")["Protocols"]
    assert any("ApprovalState" not in p for p in whole)  # approvals: listed, never chosen
    assert {p["ApprovalState"] for p in protocols} >= {"approved", "none", "rejected"}
    filters: list[dict[str, str]] = [{"approval": state} for state in approvals.STATES]
    filters += [{"approved": "true"}, {"approved": "false"}]
    filters += [
        {"approved": "true", "approval": "approved"},
        {"approved": "false", "approval": "none"},
    ]
    for wanted in filters:
        expected = [
            p["SOPInstanceUID"]
            for p in protocols
            if p["ApprovalState"] == wanted.get("approval", p["ApprovalState"])
            and str(p["Approved"]).lower() == wanted.get("approved", str(p["Approved"]).lower())
        ]
        for offset, limit in ((0, 1000), (3, 5)):
            page = listed(rest, offset=str(offset), limit=str(limit), **search, **wanted)
            assert page["Total"] == len(expected), wanted
            assert [p["SOPInstanceUID"] for p in page["Protocols"]] == expected[
                offset : offset + limit
            ]
