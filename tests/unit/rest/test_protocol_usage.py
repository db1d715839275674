"""``Usage`` in the protocol summaries, ``GET /dpp/protocols?sort=usage`` and ``?unused=``."""

from __future__ import annotations

import json

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model.usage import Performed, ProtocolUsage
from orthanc_dpp.rest.http import Request
from orthanc_dpp.rest.protocols import DppRestApi
from tests.fake_orthanc import rest_api


def library(count: int) -> tuple[DppRestApi, ProtocolUsage, list[str]]:
    """``count`` CT protocols stored through the REST handler, and their usage to fill."""
    usage = ProtocolUsage()
    rest, _, _ = rest_api(usage=usage)
    uids = []
    for seed in range(count):
        data = to_bytes(make_protocol(300 + seed, "CT"))
        answer = rest.upload(
            Request("POST", headers={"content-type": "application/dicom"}, body=data)
        )
        uids.append(json.loads(answer.body)["Files"][0]["SOPInstanceUID"])
    return rest, usage, uids


def listed(rest: DppRestApi, **query: str) -> list[str]:
    answer = rest.protocols(Request("GET", get=query))
    assert answer.status == 200, answer.body
    return [p["SOPInstanceUID"] for p in json.loads(answer.body)["Protocols"]]


def test_a_protocol_shows_how_often_and_when_last_it_was_performed() -> None:
    rest, usage, uids = library(2)
    usage.add("p1", Performed((uids[0],), "20240301101500"))
    usage.add("p2", Performed((uids[0],), "20240302"))
    answer = json.loads(rest.protocol(Request("GET"), uids[0]).body)
    assert answer["Usage"] == {"Count": 2, "LastUsed": "20240302"}
    answer = json.loads(rest.protocol(Request("GET"), uids[1]).body)
    assert answer["Usage"] == {"Count": 0, "LastUsed": None}
    entries = json.loads(rest.protocols(Request("GET")).body)["Protocols"]
    assert {e["SOPInstanceUID"]: e["Usage"]["Count"] for e in entries} == {uids[0]: 2, uids[1]: 0}


def test_the_list_sorts_by_usage_and_filters_the_unused() -> None:
    rest, usage, uids = library(4)
    usage.add("p1", Performed((uids[2],), "20240101"))
    usage.add("p2", Performed((uids[2], uids[1]), "20240102"))
    usage.add("p3", Performed((uids[3],), "20240103"))
    assert listed(rest) == uids  # the index's order, as before
    assert listed(rest, sort="usage") == [uids[2], uids[1], uids[3], uids[0]]
    assert listed(rest, sort="usage", limit="2", offset="1") == [uids[1], uids[3]]
    assert listed(rest, unused="true") == [uids[0]]
    assert listed(rest, unused="false", sort="usage") == [uids[2], uids[1], uids[3]]
    answer = json.loads(rest.protocols(Request("GET", get={"unused": "true"})).body)
    assert answer["Total"] == 1


def test_bad_sort_or_unused_answer_400() -> None:
    rest, _, _ = library(1)
    answer = rest.protocols(Request("GET", get={"sort": "name"}))
    assert answer.status == 400
    assert json.loads(answer.body)["Error"] == (
        "query parameter 'sort' must be one of ('usage',), got 'name'"
    )
    assert rest.protocols(Request("GET", get={"unused": "maybe"})).status == 400
