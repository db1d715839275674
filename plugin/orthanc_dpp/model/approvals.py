"""What Protocol Approval instances say about protocols, for people (REST, the library page).

A Protocol Approval (PS3.3 C.34.15) lists the protocols it is about in its
Approval Subject Sequence and one or more assertions in its Approval
Sequence: a code from CID 800 "Protocol Assertion", who asserted it, when,
and until when. The C-FIND SCP of the Protocol Approval model returns them
as they are; this module only summarises them, and decides the one yes/no
question the REST API offers (``approved``), by a rule stated in README:

* an assertion is *current* if it has no Assertion Expiration DateTime or
  that moment has not passed;
* a protocol is *approved* if some current assertion about it approves it
  for use (the "Approved for use ..." codes of CID 800) and no current
  assertion withdraws it altogether ("Disapproved for any use",
  "Deprecated protocol").

Narrower disapprovals (for an institution, a trial, pregnant patients)
are shown but do not decide: they restrict a scope the REST caller judges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from orthanc_dpp.model.index import Entry
from orthanc_dpp.model.key_table import tag
from orthanc_dpp.model.record import Record

_DCM = codes.DCM

#: CID 800 codes (DCM) that approve a protocol for use in some scope.
APPROVING: Final = frozenset(
    str(c.value)
    for c in (
        _DCM.ApprovedForUseAtTheInstitution,
        _DCM.ApprovedForUseInTheClinicalTrial,
        _DCM.ApprovedForUseOnPregnantPatients,
        _DCM.ApprovedForExperimentalUse,
    )
)
#: CID 800 codes (DCM) that withdraw a protocol from any use.
WITHDRAWING: Final = frozenset(
    str(c.value) for c in (_DCM.DisapprovedForAnyUse, _DCM.DeprecatedProtocol)
)

_SUBJECTS = tag("ApprovalSubjectSequence")
#: The moment of an assertion without a readable Assertion DateTime: before any other.
_OLDEST = datetime.min.replace(tzinfo=UTC)
_REFERENCED_UID = tag("ReferencedSOPInstanceUID")


def subjects(record: Record) -> list[str]:
    """The SOP Instance UIDs an approval is about."""
    return [
        str(item.first(_REFERENCED_UID))
        for item in record.values(_SUBJECTS) or ()
        if isinstance(item, Record) and item.first(_REFERENCED_UID)
    ]


def _items(record: Record, keyword: str) -> list[Record]:
    return [i for i in record.values(tag(keyword)) or () if isinstance(i, Record)]


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _moment(value: str | None) -> datetime | None:
    """A DT value as an aware datetime (UTC if it has no offset), None if unreadable."""
    if not value:
        return None
    try:
        moment = DT(value.strip())
    except (ValueError, TypeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Decision(NamedTuple):
    """One assertion about one protocol, reduced to what :func:`is_approved` and
    :func:`state_of` read: the two rules are stated once, over these."""

    #: Assertion DateTime; the oldest moment when it is absent or unreadable.
    asserted: datetime
    #: Not expired (no Assertion Expiration DateTime, or it has not passed).
    current: bool
    approves: bool
    withdraws: bool
    #: Made about the content the protocol holds now (``AppliesToStoredContent``).
    applies: bool


class _Assertion(NamedTuple):
    """An Approval Sequence item as parsed once: its decision without ``now``."""

    asserted: datetime
    expires: datetime | None
    approves: bool
    withdraws: bool


def _parsed(item: Record) -> _Assertion:
    code = next(iter(_items(item, "AssertionCodeSequence")), None)
    value = _text(code.first(tag("CodeValue"))) if code else None
    return _Assertion(
        _moment(_text(item.first(tag("AssertionDateTime")))) or _OLDEST,
        _moment(_text(item.first(tag("AssertionExpirationDateTime")))),
        value in APPROVING,
        value in WITHDRAWING,
    )


def decisions_of(approval: Entry, now: datetime, applies: bool) -> Iterator[Decision]:
    """The :class:`Decision` of each assertion of the approval instance ``approval``.

    Filtering a library by approval asks this of every approval on every
    request: its assertions are parsed on the first call and kept on the entry
    (``Entry.assertions``; an entry never changes), so later calls only
    compare moments with ``now``.
    """
    parsed: tuple[_Assertion, ...] | None = approval.assertions
    if parsed is None:
        parsed = tuple(_parsed(item) for item in _items(approval.record, "ApprovalSequence"))
        approval.assertions = parsed
    for asserted, expires, approves, withdraws in parsed:
        yield Decision(asserted, expires is None or expires > now, approves, withdraws, applies)


def _decisions_in(summaries: Iterable[dict[str, Any]]) -> list[Decision]:
    """The decisions of :func:`summary` results (marked with ``AppliesToStoredContent``)."""
    return [
        Decision(
            _moment(a.get("AssertionDateTime")) or _OLDEST,
            a["Current"],
            a["Approves"],
            a["Withdraws"],
            s.get("AppliesToStoredContent", True),
        )
        for s in summaries
        for a in s["Assertions"]
    ]


def assertion(item: Record, now: datetime) -> dict[str, Any]:
    """One item of the Approval Sequence as JSON-able values."""
    code = next(iter(_items(item, "AssertionCodeSequence")), None)
    asserter = next(iter(_items(item, "AsserterIdentificationSequence")), None)
    roles = _items(asserter, "OrganizationalRoleCodeSequence") if asserter else []
    parsed = _parsed(item)
    return {
        "AssertionCode": None
        if code is None
        else {
            "CodeValue": _text(code.first(tag("CodeValue"))),
            "CodingSchemeDesignator": _text(code.first(tag("CodingSchemeDesignator"))),
            "CodeMeaning": _text(code.first(tag("CodeMeaning"))),
        },
        # A person by name; a device (observer type DEV) by its AE title.
        "Asserter": None
        if asserter is None
        else _text(asserter.first(tag("PersonName")) or asserter.first(tag("StationAETitle"))),
        "AsserterRole": _text(roles[0].first(tag("CodeMeaning"))) if roles else None,
        "AssertionDateTime": _text(item.first(tag("AssertionDateTime"))),
        "AssertionExpirationDateTime": _text(item.first(tag("AssertionExpirationDateTime"))),
        "Comment": _text(item.first(tag("AssertionComments"))),
        "Current": parsed.expires is None or parsed.expires > now,
        "Approves": parsed.approves,
        "Withdraws": parsed.withdraws,
    }


def summary(orthanc_id: str, sop_instance_uid: str, record: Record, now: datetime) -> dict:
    """One approval instance: its identity and each of its assertions."""
    return {
        "OrthancID": orthanc_id,
        "SOPInstanceUID": sop_instance_uid,
        "Assertions": [assertion(item, now) for item in _items(record, "ApprovalSequence")],
    }


def approved(approvals: Iterable[dict[str, Any]]) -> bool:
    """:func:`is_approved` over :func:`summary` results about one protocol."""
    return is_approved(_decisions_in(approvals))


def is_approved(decisions: Iterable[Decision]) -> bool:
    """The README rule (``Approved``) over the decisions made about one protocol.

    Only approvals of the content stored now (``applies``, see
    :mod:`orthanc_dpp.storage.approved_content`) can approve; a withdrawal
    withdraws whatever content it was made for, the safe reading.
    """
    current = [d for d in decisions if d.current]
    return any(d.approves and d.applies for d in current) and not any(d.withdraws for d in current)


#: The values of ``ApprovalState``.
STATES: Final = ("approved", "rejected", "expired", "none")


def state(approvals: Iterable[dict[str, Any]]) -> str:
    """:func:`state_of` over :func:`summary` results about one protocol."""
    return state_of(_decisions_in(approvals))


def state_of(decisions: Iterable[Decision]) -> str:
    """``ApprovalState`` over the decisions made about one protocol: the latest one.

    Only approvals of the content stored now count (``applies``), withdrawals
    too: a decision is about content. Among their current assertions that
    approve or withdraw, the latest by Assertion DateTime decides (a
    withdrawal wins a tie): ``approved`` or ``rejected``. With none current,
    ``expired`` if an approving one has lapsed, else ``none``. Unlike
    :func:`is_approved`, an approval made after a withdrawal overrides it.
    """
    deciding = [d for d in decisions if d.applies and (d.approves or d.withdraws)]
    current = [d for d in deciding if d.current]
    if current:
        latest = max(current, key=lambda d: (d.asserted, d.withdraws))
        return "rejected" if latest.withdraws else "approved"
    return "expired" if any(d.approves for d in deciding) else "none"
