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

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

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


def decision(item: Record, now: datetime) -> dict[str, Any]:
    """What :func:`approved` and :func:`state` read of one Approval Sequence item.

    A part of :func:`assertion`: filtering a whole library by approval needs
    no names, roles or code meanings.
    """
    code = next(iter(_items(item, "AssertionCodeSequence")), None)
    value = _text(code.first(tag("CodeValue"))) if code else None
    moment = _moment(_text(item.first(tag("AssertionExpirationDateTime"))))
    return {
        "AssertionDateTime": _text(item.first(tag("AssertionDateTime"))),
        "Current": moment is None or moment > now,
        "Approves": value in APPROVING,
        "Withdraws": value in WITHDRAWING,
    }


def decisions(record: Record, now: datetime) -> list[dict[str, Any]]:
    """:func:`decision` of each assertion of an approval instance."""
    return [decision(item, now) for item in _items(record, "ApprovalSequence")]


def assertion(item: Record, now: datetime) -> dict[str, Any]:
    """One item of the Approval Sequence as JSON-able values."""
    code = next(iter(_items(item, "AssertionCodeSequence")), None)
    asserter = next(iter(_items(item, "AsserterIdentificationSequence")), None)
    roles = _items(asserter, "OrganizationalRoleCodeSequence") if asserter else []
    decided = decision(item, now)
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
        "AssertionDateTime": decided["AssertionDateTime"],
        "AssertionExpirationDateTime": _text(item.first(tag("AssertionExpirationDateTime"))),
        "Current": decided["Current"],
        "Approves": decided["Approves"],
        "Withdraws": decided["Withdraws"],
    }


def summary(orthanc_id: str, sop_instance_uid: str, record: Record, now: datetime) -> dict:
    """One approval instance: its identity and each of its assertions."""
    return {
        "OrthancID": orthanc_id,
        "SOPInstanceUID": sop_instance_uid,
        "Assertions": [assertion(item, now) for item in _items(record, "ApprovalSequence")],
    }


def approved(approvals: Iterable[dict[str, Any]]) -> bool:
    """The README rule over :func:`summary` results about one protocol.

    Only approvals of the content stored now (not marked
    ``AppliesToStoredContent`` false, see :mod:`orthanc_dpp.storage.approved_content`) can
    approve; a withdrawal withdraws whatever content it was made for, the
    safe reading.
    """
    listed = list(approvals)
    current = [a for s in listed for a in s["Assertions"] if a["Current"]]
    approving = [
        a
        for s in listed
        if s.get("AppliesToStoredContent", True)
        for a in s["Assertions"]
        if a["Current"] and a["Approves"]
    ]
    return bool(approving) and not any(a["Withdraws"] for a in current)


#: The values of ``ApprovalState``.
STATES: Final = ("approved", "rejected", "expired", "none")
_OLDEST = datetime.min.replace(tzinfo=UTC)


def state(approvals: Iterable[dict[str, Any]]) -> str:
    """``ApprovalState`` over :func:`summary` results about one protocol: the latest decision.

    Only approvals of the content stored now count (``AppliesToStoredContent``),
    withdrawals too: a decision is about content. Among their current
    assertions that approve or withdraw, the latest by Assertion DateTime
    decides (a withdrawal wins a tie): ``approved`` or ``rejected``. With
    none current, ``expired`` if an approving one has lapsed, else ``none``.
    Unlike :func:`approved`, an approval made after a withdrawal overrides it.
    """
    deciding = [
        a
        for s in approvals
        if s.get("AppliesToStoredContent", True)
        for a in s["Assertions"]
        if a["Approves"] or a["Withdraws"]
    ]
    current = [a for a in deciding if a["Current"]]
    if current:
        latest = max(
            current,
            key=lambda a: (_moment(a["AssertionDateTime"]) or _OLDEST, a["Withdraws"]),
        )
        return "rejected" if latest["Withdraws"] else "approved"
    return "expired" if any(a["Approves"] for a in deciding) else "none"
