"""A new Protocol Approval instance, made by the plugin for ``POST /dpp/protocols/{uid}/approvals``.

A person approving or rejecting a protocol over REST gets the same DICOM
object a protocol-management tool would C-STORE: a Protocol Approval
(PS3.3 A.87, C.34.15) about that one protocol, so that any DICOM peer sees
the decision through Protocol Approval Query/Retrieve. The two REST words
map to the CID 800 codes :mod:`orthanc_dpp.model.approvals` reads:
``approved`` to "Approved for use at the institution" (one of
``APPROVING``), ``rejected`` to "Disapproved for any use" (one of
``WITHDRAWING``). The asserter is the authenticated Orthanc user when there
is one, else the plugin itself as a device named by its AE title; the
plugin has no institution setting, so its AE title also names the
institution an "at the institution" approval is for.

Only the IOD's own modules are built (SOP Common, Enhanced General
Equipment, Protocol Approval): like every DPP instance it has no patient,
study or series, which the store path's normalization adds for Orthanc.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE

#: The REST words and the CID 800 code each asserts (one of approvals.APPROVING, of WITHDRAWING).
ASSERTIONS: Final = {
    "approved": codes.DCM.ApprovedForUseAtTheInstitution,
    "rejected": codes.DCM.DisapprovedForAnyUse,
}

#: The body's members; anything else is refused, so a misspelt member is not silently ignored.
FIELDS: Final = ("Assertion", "Comment", "ExpiresOn")
#: Assertion Comments is LT: at most 10240 characters.
MAXIMUM_COMMENT: Final = 10240
#: Who made the instance (Enhanced General Equipment).
MANUFACTURER: Final = "Orthanc DPP plugin"
MODEL_NAME: Final = "orthanc_dpp"
#: Local coding schemes (PS3.3 8.2: private designators start with "99").
USER_SCHEME: Final = "99ORTHANCUSER"
INSTITUTION_SCHEME: Final = "99ORTHANCDPP"

_PN_DELIMITERS = re.compile(r"[\^=\\\x00-\x1f]")


class BadApproval(ValueError):
    """A body member that is not what the route takes; ``field`` names it (None: the whole body)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ApprovalRequest:
    """What the caller asserts about the protocol."""

    assertion: str  # a key of ASSERTIONS
    comment: str | None = None
    expires_on: date | None = None


@dataclass(frozen=True)
class Asserter:
    """Who asserts: ``user`` (authenticated by Orthanc), or with none the plugin (``ae_title``)."""

    user: str | None
    ae_title: str
    software_version: str


def parse_request(payload: Any) -> ApprovalRequest:
    """The body of ``POST /dpp/protocols/{uid}/approvals`` (parsed JSON), member by member."""
    if not isinstance(payload, dict):
        raise BadApproval(None, "the body must be a JSON object")
    extra = sorted(set(payload) - set(FIELDS))
    if extra:
        raise BadApproval(extra[0], f"unknown member '{extra[0]}' (known: {', '.join(FIELDS)})")
    assertion = payload.get("Assertion")
    if assertion not in ASSERTIONS:
        known = " or ".join(ASSERTIONS)
        raise BadApproval("Assertion", f"'Assertion' must be {known}, got {assertion!r:.40}")
    comment = payload.get("Comment")
    if comment is not None and not isinstance(comment, str):
        raise BadApproval("Comment", "'Comment' must be a string")
    if comment is not None and len(comment) > MAXIMUM_COMMENT:
        raise BadApproval("Comment", f"'Comment' is longer than {MAXIMUM_COMMENT} characters")
    return ApprovalRequest(str(assertion), comment or None, _expiry(payload.get("ExpiresOn")))


def _expiry(value: Any) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{8}", value):
        raise BadApproval("ExpiresOn", f"'ExpiresOn' must be a date YYYYMMDD, got {value!r:.40}")
    try:
        return datetime.strptime(value, "%Y%m%d").replace(tzinfo=UTC).date()
    except ValueError:
        raise BadApproval("ExpiresOn", f"'ExpiresOn' is not a calendar date: {value}") from None


def _dt(moment: datetime) -> str:
    """A DT value in UTC with its offset, so every reader places it alike."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f") + "+0000"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    if len(value) <= 16:
        item.CodeValue = value
    else:
        item.LongCodeValue = value  # CodeValue is SH: 16 characters
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning[:64]
    return item


def _asserter(asserter: Asserter) -> Dataset:
    """Identified Person or Device Macro: the Orthanc user, or the plugin as device."""
    item = Dataset()
    if asserter.user:
        item.ObserverType = "PSN"
        # A user name is not a structured name: PN delimiters become spaces.
        item.PersonName = _PN_DELIMITERS.sub(" ", asserter.user)[:64].strip() or "?"
        item.PersonIdentificationCodeSequence = [
            _code(asserter.user, USER_SCHEME, f"Orthanc user {asserter.user}")
        ]
        item.OrganizationalRoleCodeSequence = []  # the plugin does not know it
    else:
        item.ObserverType = "DEV"
        item.StationAETitle = asserter.ae_title
        item.Manufacturer = MANUFACTURER
        item.ManufacturerModelName = MODEL_NAME
    item.InstitutionName = asserter.ae_title
    item.InstitutionCodeSequence = [_institution(asserter)]
    return item


def _institution(asserter: Asserter) -> Dataset:
    return _code(asserter.ae_title, INSTITUTION_SCHEME, asserter.ae_title)


def build(
    subject_class: str,
    subject_uid: str,
    wanted: ApprovalRequest,
    asserter: Asserter,
    now: datetime,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The Protocol Approval asserting ``wanted`` about one protocol, made at ``now``."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # user names and comments in any script
    utc = now.astimezone(UTC)
    ds.InstanceCreationDate = utc.strftime("%Y%m%d")
    ds.InstanceCreationTime = utc.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.SOPClassUID = PROTOCOL_APPROVAL_STORAGE
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    # Enhanced General Equipment: the plugin made it.
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = asserter.ae_title
    ds.SoftwareVersions = asserter.software_version
    ds.InstitutionName = asserter.ae_title
    subject = Dataset()
    subject.ReferencedSOPClassUID = subject_class
    subject.ReferencedSOPInstanceUID = subject_uid
    ds.ApprovalSubjectSequence = [subject]
    code = ASSERTIONS[wanted.assertion]
    item = Dataset()
    item.AssertionCodeSequence = [_code(str(code.value), code.scheme_designator, code.meaning)]
    item.AssertionUID = generate_uid()
    item.AsserterIdentificationSequence = [_asserter(asserter)]
    item.AssertionDateTime = _dt(now)
    item.AssertionExpirationDateTime = (
        "" if wanted.expires_on is None else wanted.expires_on.strftime("%Y%m%d") + "000000+0000"
    )
    if wanted.comment:
        item.AssertionComments = wanted.comment
    if wanted.assertion == "approved":  # C.34.15: required for "at the institution"
        item.InstitutionCodeSequence = [_institution(asserter)]
    ds.ApprovalSequence = [item]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
