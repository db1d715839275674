"""What approvals say about protocols: assertions, expiry and the ``approved`` rule."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from pydicom import Dataset

from dpp_tools.samples import make_protocol
from orthanc_dpp.model import approvals
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.record_reading import to_record

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def approval(protocol: Dataset, seed: int, *assertions: tuple[str, str]) -> Dataset:
    """An approval of ``protocol`` with one assertion per (code, expiration) pair."""
    ds = make_protocol(seed, "APPROVAL")
    ds.ApprovalSubjectSequence[0].ReferencedSOPInstanceUID = protocol.SOPInstanceUID
    template = ds.ApprovalSequence[0]
    items = []
    for code, expires in assertions:
        item = copy.deepcopy(template)
        item.AssertionCodeSequence = [Dataset()]
        item.AssertionCodeSequence[0].CodeValue = code
        item.AssertionCodeSequence[0].CodingSchemeDesignator = "DCM"
        item.AssertionCodeSequence[0].CodeMeaning = "meaning"
        item.AssertionExpirationDateTime = expires
        items.append(item)
    ds.ApprovalSequence = items
    return ds


def summarise(ds: Dataset) -> dict:
    return approvals.summary("id", str(ds.SOPInstanceUID), to_record(ds, RecordCache()), NOW)


def test_assertions_are_summarised_with_their_state(records: RecordCache) -> None:
    protocol = make_protocol(1, "CT")
    ds = approval(protocol, 2, ("128603", ""), ("128610", "20261130235959"))
    first, second = summarise(ds)["Assertions"]
    person = ds.ApprovalSequence[0].AsserterIdentificationSequence[0]
    assert first["AssertionCode"]["CodeValue"] == "128603" and first["Asserter"] == str(
        person.PersonName
    )
    assert first["Current"] and first["Approves"] and not first["Withdraws"]
    # Expired yesterday (no offset: read as UTC), and a withdrawal.
    assert not second["Current"] and second["Withdraws"]
    assert approvals.subjects(to_record(ds, records)) == [protocol.SOPInstanceUID]


def test_the_approved_rule() -> None:
    protocol = make_protocol(1, "CT")

    def state(*assertions: tuple[str, str]) -> bool:
        return approvals.approved([summarise(approval(protocol, 3, *assertions))])

    assert state(("128603", ""))  # approved for use at the institution
    assert state(("128611", "20301231"))  # experimental use, not yet expired
    assert not state(("128603", "20200101"))  # expired
    assert not state(("128606", ""))  # "appropriate for the device" is not an approval
    assert not state(("128603", ""), ("128609", ""))  # disapproved for any use
    assert state(("128603", ""), ("128610", "20200101"))  # a deprecation that has expired
    assert state(("128603", ""), ("128623", ""))  # a narrower disapproval does not decide
    assert not approvals.approved([])
    # An unreadable expiry counts as none: the assertion stays current.
    assert state(("128603", "not a date"))


def test_the_index_finds_the_approvals_of_a_protocol() -> None:
    protocol, other = make_protocol(1, "CT"), make_protocol(2, "XA")
    index = ProtocolIndex()
    index.put("p", protocol)
    index.put("o", other)
    index.put("a1", approval(protocol, 3, ("128603", "")))
    index.put("a2", approval(protocol, 4, ("128610", "")))
    index.put("a3", approval(other, 5, ("128603", "")))
    assert [e.orthanc_id for e in index.approvals_of(protocol.SOPInstanceUID)] == ["a1", "a2"]
    index.remove("a1")
    assert [e.orthanc_id for e in index.approvals_of(protocol.SOPInstanceUID)] == ["a2"]
    assert index.approvals_of("1.2.3") == []


def test_approvals_of_other_content_do_not_decide() -> None:
    approving = {
        "Assertions": [{"Current": True, "Approves": True, "Withdraws": False}],
        "AppliesToStoredContent": False,
    }
    assert not approvals.approved([approving])
    assert approvals.approved([{**approving, "AppliesToStoredContent": True}])
    withdrawing = {
        "Assertions": [{"Current": True, "Approves": False, "Withdraws": True}],
        "AppliesToStoredContent": False,
    }
    # A withdrawal withdraws whatever content it was made for: the safe reading.
    assert not approvals.approved([{**approving, "AppliesToStoredContent": True}, withdrawing])


def decision(when: str, *, approves: bool, current: bool = True) -> dict:
    """One assertion as :func:`approvals.summary` gives it, reduced to what ``state`` reads."""
    return {
        "AssertionDateTime": when,
        "Current": current,
        "Approves": approves,
        "Withdraws": not approves,
    }


def made(*assertions: dict, applies: bool = True) -> dict:
    return {"Assertions": list(assertions), "AppliesToStoredContent": applies}


def test_the_latest_current_decision_is_the_approval_state() -> None:
    approve = decision("20260101120000", approves=True)
    reject = decision("20260301120000", approves=False)
    assert approvals.state([made(approve)]) == "approved"
    assert approvals.state([made(approve), made(reject)]) == "rejected"
    again = decision("20260601120000+0200", approves=True)
    assert approvals.state([made(reject), made(again), made(approve)]) == "approved"
    tie = decision("20260601100000+0000", approves=False)  # the same moment as ``again``
    assert approvals.state([made(again), made(tie)]) == "rejected"


def test_a_lapsed_approval_is_expired_and_nothing_is_none() -> None:
    lapsed = decision("20200101", approves=True, current=False)
    assert approvals.state([made(lapsed)]) == "expired"
    assert approvals.state([made(lapsed), made(decision("20210101", approves=True))]) == (
        "approved"
    )
    assert approvals.state([]) == "none"
    assert approvals.state([made(decision("20200101", approves=False, current=False))]) == "none"
    neutral = {"AssertionDateTime": "20260101", "Current": True, "Approves": False}
    assert approvals.state([made({**neutral, "Withdraws": False})]) == "none"


def test_decisions_about_other_content_do_not_count() -> None:
    stale = made(decision("20260101", approves=True), applies=False)
    assert approvals.state([stale]) == "none"
    stale_rejection = made(decision("20260301", approves=False), applies=False)
    assert approvals.state([made(decision("20260101", approves=True)), stale_rejection]) == (
        "approved"
    )


def test_an_approval_entrys_decisions_are_parsed_once_and_expire_with_now() -> None:
    """The list's filters ask every approval on each request: the parse is kept on the entry,
    while whether an assertion is current is judged against each request's ``now``."""
    protocol = make_protocol(1, "CT")
    index = ProtocolIndex()
    index.put("a", approval(protocol, 3, ("128603", "20261201130000"), ("128610", "")))
    (entry,) = index.approvals_of(protocol.SOPInstanceUID)
    before = list(approvals.decisions_of(entry, NOW, True))
    assert [(d.current, d.approves, d.withdraws, d.applies) for d in before] == [
        (True, True, False, True),
        (True, False, True, True),
    ]
    entry.record = None  # type: ignore[assignment]  # a second parse would fail now
    later = list(approvals.decisions_of(entry, datetime(2026, 12, 2, tzinfo=UTC), False))
    assert [(d.current, d.applies) for d in later] == [(False, False), (True, False)]
    assert [d.asserted for d in later] == [d.asserted for d in before]
    # The same rules as the summaries the list shows.
    summary = summarise(approval(protocol, 3, ("128603", "20261201130000"), ("128610", "")))
    assert approvals.is_approved(before) == approvals.approved([summary]) is False
    assert approvals.state_of(before) == approvals.state([summary])
