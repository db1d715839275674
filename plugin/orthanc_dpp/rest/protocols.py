"""The ``/dpp/...`` REST routes, as plain functions of the request.

The adapter turns Orthanc's request into :class:`Request` and our
:class:`Response` back into Orthanc's output calls. Each handler serves one
method: :mod:`orthanc_dpp.rest.routes` maps methods to handlers and answers 405.
Every answer is JSON except the file download and the export; every error is
a JSON body with ``Error`` saying what went wrong.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from orthanc_dpp.metrics import Metrics
from orthanc_dpp.model import approval_instance, approvals, versions
from orthanc_dpp.model.comparison import differences
from orthanc_dpp.model.index import Entry, ProtocolIndex
from orthanc_dpp.model.search import PARAMETERS, ProtocolSearch, SearchError, search
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES, PROTOCOL_APPROVAL_STORAGE
from orthanc_dpp.model.usage import ProtocolUsage
from orthanc_dpp.rest import page as library_page
from orthanc_dpp.rest import zips
from orthanc_dpp.rest.activity import ActivityLog
from orthanc_dpp.rest.dataset_tree import dataset_tree
from orthanc_dpp.rest.http import (
    BadParameter,
    Request,
    Response,
    basic_user,
    error,
    json_response,
    query_bool,
    query_int,
)
from orthanc_dpp.storage.approved_content import ApprovedContent
from orthanc_dpp.storage.decoding import DatasetLimits, LimitExceeded, check_part10
from orthanc_dpp.storage.library import (
    RETRY_AFTER_SECONDS,
    OrthancError,
    ProtocolLibrary,
    Stored,
    StoreError,
)
from orthanc_dpp.storage.part10 import read_part10

log = logging.getLogger("orthanc_dpp.rest")

DEFAULT_PAGE = 100
MAXIMUM_PAGE = 1000
#: ``Approved`` and ``ApprovalState`` of a protocol that no approval names (rules of
#: ``model.approvals``, worked out once rather than for each protocol listed).
_WITHOUT_APPROVALS: Final = (approvals.approved([]), approvals.state([]))
#: The query parameters of ``GET /dpp/protocols``: paging, then the search criteria.
LIST_PARAMETERS = ("offset", "limit", "approved", "approval", "sort", "unused", *PARAMETERS)
#: The orders ``GET /dpp/protocols?sort=`` knows (without it: the index's order).
SORTS = ("usage",)
#: Files in one ``GET /dpp/export`` zip (more matches: 413), and in one uploaded zip.
MAXIMUM_EXPORT = MAXIMUM_PAGE
MAXIMUM_ZIP_FILES = MAXIMUM_EXPORT


def split_upload(
    content_type: str, body: bytes, maximum_size: int = 64 << 20
) -> list[tuple[str, bytes]]:
    """The files of an upload: one DICOM body, the parts of a multipart body, or the
    files of a zip archive (:func:`zips.read_zip`, at most :data:`MAXIMUM_ZIP_FILES`,
    ``maximum_size`` bytes once inflated; raises :class:`zips.ZipRefused`).

    ``multipart/related`` (STOW-RS style); each part is one DICOM file.
    ``multipart/form-data`` would be read alike, but the adapter refuses it
    before (:mod:`orthanc_dpp.rest.csrf`: any web page can make a browser send it).
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/zip":
        return zips.read_zip(body, MAXIMUM_ZIP_FILES, maximum_size)
    if not media.startswith("multipart/"):
        return [("body", body)]
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("multipart body without parts (check the boundary)")
    files = []
    for number, part in enumerate(message.iter_parts(), start=1):
        name = part.get_filename() or f"part {number}"
        payload = part.get_payload(decode=True)
        files.append((name, payload if isinstance(payload, bytes) else b""))
    return files


class DppRestApi:
    """Handlers for every ``/dpp/`` route."""

    def __init__(
        self,
        library: ProtocolLibrary,
        index: ProtocolIndex,
        status: Callable[[], dict[str, Any]],
        on_stored: Callable[[Stored], None],
        on_deleted: Callable[[str], None],
        *,
        limits: DatasetLimits | None = None,
        maximum_upload: int = 64 << 20,
        metrics: Metrics | None = None,
        activity: ActivityLog | None = None,
        content: ApprovedContent | None = None,
        ae_title: str = "ORTHANC_DPP",
        software_version: str = "",
        usage: ProtocolUsage | None = None,
    ) -> None:
        #: Who asserts an approval made over REST without an authenticated user.
        self.ae_title = ae_title
        self.software_version = software_version
        #: How often each protocol was performed (``Usage``; ``sort``, ``unused``).
        self.usage = usage if usage is not None else ProtocolUsage()
        #: What each approval approved (None: approvals apply whatever the content).
        self.content = content
        self.activity = activity or ActivityLog()
        self.limits = limits or DatasetLimits()
        self.metrics = metrics or Metrics(enabled=False)
        self.maximum_upload = maximum_upload
        self.library = library
        self.index = index
        self._status = status
        self._on_stored = on_stored
        self._on_deleted = on_deleted

    # GET /dpp/status
    def status(self, request: Request) -> Response:
        return json_response(200, self._status())

    # GET /dpp/protocols
    def protocols(self, request: Request) -> Response:
        # Orthanc 1.10 hands plugins the query string's values still
        # percent-encoded (measured: "a%20b" arrives as such); decoding a
        # value that is already decoded changes it only if it holds "%xx".
        query = {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in request.get.items()}
        request = Request(request.method, query, request.headers, request.body)
        unknown = sorted(set(query) - set(LIST_PARAMETERS))
        if unknown:
            return error(
                400,
                f"unknown query parameter '{unknown[0]}' (known: {', '.join(LIST_PARAMETERS)})",
                Parameter=unknown[0],
            )
        try:
            offset = query_int(request, "offset", 0, 0, 2**31)
            limit = query_int(request, "limit", DEFAULT_PAGE, 1, MAXIMUM_PAGE)
            wanted = query_bool(request, "approved")
            wanted_state = query_state(request)
            unused = query_bool(request, "unused")
        except BadParameter as exc:
            return error(400, str(exc), Parameter=exc.parameter)
        sort = query.get("sort")
        if sort is not None and sort not in SORTS:
            return error(
                400,
                f"query parameter 'sort' must be one of {SORTS}, got {sort!r}",
                Parameter="sort",
            )
        try:
            criteria = ProtocolSearch.from_query(request.get)
        except SearchError as exc:
            return error(400, str(exc), Parameter=exc.parameter)
        now = datetime.now(UTC)
        if wanted is None and wanted_state is None and unused is None and sort is None:
            total, entries = search(self.index, criteria, offset, limit)
            summaries = [self._summary(entry, now) for entry in entries]
        else:
            # Only protocols have an approval state and a usage: approvals themselves are
            # left out by those filters. Filters and order are worked out for every match,
            # a summary only for the page.
            _, chosen = search(self.index, criteria, 0, max(len(self.index), 1))
            if wanted is not None or wanted_state is not None:
                chosen = self._by_approval(chosen, now, wanted, wanted_state)
            if unused is not None:
                chosen = [entry for entry in chosen if self._unused(entry) == unused]
            if sort == "usage":  # most used first; equal counts keep the index's order
                chosen.sort(key=lambda entry: -self.usage.count(entry.sop_instance_uid))
            total = len(chosen)
            summaries = [self._summary(entry, now) for entry in chosen[offset : offset + limit]]
        return json_response(
            200, {"Total": total, "Offset": offset, "Limit": limit, "Protocols": summaries}
        )

    def _by_approval(
        self, entries: list[Entry], now: datetime, wanted: bool | None, state: str | None
    ) -> list[Entry]:
        """The protocols of ``entries`` that pass ``approved`` and ``approval``, in order.

        Only the protocols some approval names (``ProtocolIndex.approval_subjects``)
        have decisions to weigh, a small part of a library; the others all share
        one answer, worked out once (``_WITHOUT_APPROVALS``). Each approval's
        assertions are parsed once, not per request (``approvals.decisions_of``).
        """

        def passes(is_approved: bool, its_state: str) -> bool:
            return (wanted is None or is_approved == wanted) and (
                state is None or its_state == state
            )

        named = self.index.approval_subjects()
        without = passes(*_WITHOUT_APPROVALS)
        chosen = []
        for entry in entries:
            if entry.sop_class_uid not in DPP_STORAGE_CLASSES:
                continue  # approvals themselves have no approval state
            if not named(entry.sop_instance_uid):
                if without:
                    chosen.append(entry)
                continue
            decided = [
                decision
                for approval in self.index.approvals_of(entry.sop_instance_uid)
                for decision in approvals.decisions_of(
                    approval, now, self._applies(approval, entry)
                )
            ]
            if passes(approvals.is_approved(decided), approvals.state_of(decided)):
                chosen.append(entry)
        return chosen

    def _unused(self, entry: Entry) -> bool | None:
        """Whether a protocol was never performed; None for an approval (it is not used)."""
        if entry.sop_class_uid not in DPP_STORAGE_CLASSES:
            return None
        return self.usage.count(entry.sop_instance_uid) == 0

    def _approvals(self, entry: Entry, now: datetime) -> list[dict[str, Any]]:
        """Summaries of the Protocol Approvals that name the protocol ``entry``.

        Each says whether it approved the content the protocol holds now
        (``AppliesToStoredContent``); only those that did decide ``Approved``.
        """
        found = []
        for approval in self.index.approvals_of(entry.sop_instance_uid):
            summary = approvals.summary(
                approval.orthanc_id, approval.sop_instance_uid, approval.record, now
            )
            summary["AppliesToStoredContent"] = self._applies(approval, entry)
            found.append(summary)
        return found

    def _applies(self, approval: Entry, protocol: Entry) -> bool:
        """Whether ``approval`` approved the content ``protocol`` holds now."""
        return self.content is None or self.content.applies(approval, protocol)

    def _summary(self, entry: Entry, now: datetime) -> dict[str, Any]:
        """An entry's summary; for a protocol, with the approvals that name it."""
        summary = entry.summary()
        if entry.sop_class_uid in DPP_STORAGE_CLASSES:
            found = self._approvals(entry, now)
            summary["Approvals"] = found
            summary["Approved"] = approvals.approved(found)
            summary["ApprovalState"] = approvals.state(found)
            summary["Usage"] = self.usage.of(entry.sop_instance_uid)
        elif entry.sop_class_uid == PROTOCOL_APPROVAL_STORAGE:
            subjects = approvals.subjects(entry.record)
            summary["ApprovalSubjects"] = subjects
            summary["Approves"] = [self._subject(uid) for uid in subjects]
            summary.update(
                approvals.summary(entry.orthanc_id, entry.sop_instance_uid, entry.record, now)
            )
        return summary

    def _subject(self, uid: str) -> dict[str, Any]:
        """A protocol an approval names, with its name when it is stored here."""
        protocol = self.index.get(uid)
        stored = protocol is not None and protocol.sop_class_uid in DPP_STORAGE_CLASSES
        return {
            "SOPInstanceUID": uid,
            "Stored": stored,
            "ProtocolName": protocol.summary()["ProtocolName"] if stored and protocol else None,
        }

    # POST /dpp/protocols
    def upload(self, request: Request) -> Response:
        if len(request.body) > self.maximum_upload:
            return self._refused_whole(
                413, f"upload larger than MaximumUploadSize ({self.maximum_upload} bytes)"
            )
        content_type = request.headers.get("content-type", "application/dicom")
        try:
            files = split_upload(content_type, request.body, self.maximum_upload)
        except zips.ZipRefused as exc:
            return self._refused_whole(exc.http_status, f"cannot read the upload: {exc}")
        except ValueError as exc:
            return self._refused_whole(400, f"cannot read the upload: {exc}")
        if not files or all(not data for _, data in files):
            return self._refused_whole(400, "the upload holds no file")
        results: list[dict[str, Any]] = []
        failures: list[int] = []
        for name, data in files:
            result: dict[str, Any] = {"File": name}
            try:
                stored = self._store_one(data)
            except StoreError as exc:
                self.metrics.rest_file(stored=False)
                failures.append(exc.http_status)
                result.update(Stored=False, Error=exc.reason, HttpStatus=exc.http_status)
                log.error("Upload of %s refused: %s", name, exc.reason)
            else:
                self.metrics.rest_file(stored=True)
                result.update(Stored=True, **stored.as_json())
                log.info(
                    "Upload of %s stored: %s (%s)", name, stored.sop_instance_uid, stored.status
                )
            results.append(result)
        if not failures:
            code = 200
        elif len(set(failures)) == 1 and len(failures) == len(files):
            code = failures[0]
        else:
            code = 400
        payload = {"Stored": len(files) - len(failures), "Failed": len(failures), "Files": results}
        response = json_response(code, payload)
        if code == 503:  # the index is loading: come back soon
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    def _refused_whole(self, status: int, message: str) -> Response:
        self.metrics.rest_file(stored=False)  # counted as one refused file
        return error(status, message)

    def _store_one(self, data: bytes) -> Stored:
        try:
            check_part10(data, self.limits)
        except LimitExceeded as exc:
            raise StoreError(exc.status, exc.http_status, exc.comment) from exc
        ds, elements = read_part10(data, self.limits.maximum_depth)
        # Indexed before the UID's claim is released (see ProtocolLibrary.store).
        return self.library.store(ds, data, elements=elements, on_stored=self._on_stored)

    # GET /dpp/export
    def export(self, request: Request) -> Response:
        """A zip of the originals of what ``GET /dpp/protocols`` lists for the same criteria.

        The selection is that route's own answer, so every criterion it
        takes (and every one it will take) selects the same protocols here.
        Without ``limit``, every match goes in, and more than
        :data:`MAXIMUM_EXPORT` is refused (413) rather than cut short.
        """
        paged = "limit" in request.get
        query = request.get if paged else {**request.get, "limit": str(MAXIMUM_EXPORT)}
        listing = self.protocols(Request(request.method, query, request.headers))
        if listing.status != 200:
            return listing
        page = json.loads(listing.body)
        if not paged and page["Total"] > page["Offset"] + len(page["Protocols"]):
            return error(
                413,
                f"{page['Total']} protocols match, at most {MAXIMUM_EXPORT} per export: "
                "narrow the search, or page with offset and limit",
                Total=page["Total"],
            )
        files = []
        for summary in page["Protocols"]:
            uid = summary["SOPInstanceUID"]
            try:
                files.append((f"{uid}.dcm", self.library.original_bytes(summary["OrthancID"])))
            except OrthancError as exc:  # deleted meanwhile: the rest still goes out
                log.warning("Export: the file of %s cannot be read: %s", uid, exc.message)
        log.info("Export of %d protocols (%d matching)", len(files), page["Total"])
        return Response(
            200,
            zips.write_zip(files),
            content_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="protocols.zip"'},
        )

    def _lookup(self, identifier: str) -> Entry | None:
        return self.index.get(identifier) or self.index.get_by_orthanc_id(identifier)

    def _missing(self, identifier: str) -> Response:
        return error(404, f"no protocol with SOP Instance UID or Orthanc ID {identifier!r}")

    # GET /dpp/protocols/{uid}
    def protocol(self, request: Request, identifier: str) -> Response:
        entry = self._lookup(identifier)
        if entry is None:
            return self._missing(identifier)
        return json_response(200, self._summary(entry, datetime.now(UTC)))

    # POST /dpp/protocols/{uid}/approvals
    def approve(self, request: Request, identifier: str) -> Response:
        """Approve or reject a protocol: a new Protocol Approval, stored as a C-STORE'd one is.

        Stored through :meth:`ProtocolLibrary.store` with ``on_stored``, so it is
        indexed (Protocol Approval Q/R finds it) and bound to the content the
        protocol holds now (:mod:`orthanc_dpp.storage.approved_content`).
        """
        entry = self._lookup(identifier)
        if entry is None or entry.sop_class_uid not in DPP_STORAGE_CLASSES:
            if entry is not None:
                return error(404, f"{identifier!r} is a Protocol Approval, not a protocol")
            return self._missing(identifier)
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"the body is not JSON: {exc}")
        try:
            wanted = approval_instance.parse_request(payload)
        except approval_instance.BadApproval as exc:
            named = {} if exc.field is None else {"Field": exc.field}
            return error(400, str(exc), **named)
        asserter = approval_instance.Asserter(
            basic_user(request.headers), self.ae_title, self.software_version
        )
        ds = approval_instance.build(
            entry.sop_class_uid, entry.sop_instance_uid, wanted, asserter, datetime.now(UTC)
        )
        try:
            stored = self.library.store(ds, on_stored=self._on_stored)
        except StoreError as exc:
            log.error("Approval of %s not stored: %s", entry.sop_instance_uid, exc.reason)
            return error(exc.http_status, f"the approval is not stored: {exc.reason}")
        log.info(
            "Protocol %s %s by %s: Protocol Approval %s",
            entry.sop_instance_uid,
            wanted.assertion,
            asserter.user or f"the plugin ({self.ae_title})",
            stored.sop_instance_uid,
        )
        return json_response(
            201, {"SOPInstanceUID": stored.sop_instance_uid, "OrthancID": stored.orthanc_id}
        )

    # DELETE /dpp/protocols/{uid}
    def delete_protocol(self, request: Request, identifier: str) -> Response:
        entry = self._lookup(identifier)
        if entry is None:
            return self._missing(identifier)
        try:
            self.library.delete(entry.orthanc_id)
        except OrthancError as exc:
            return error(500, f"Orthanc did not delete {entry.orthanc_id}: {exc.message}")
        self._on_deleted(entry.orthanc_id)
        log.warning("Protocol %s (%s) deleted via REST", entry.sop_instance_uid, entry.orthanc_id)
        return json_response(
            200, {"Deleted": entry.sop_instance_uid, "OrthancID": entry.orthanc_id}
        )

    # GET /dpp/protocols/{uid}/file
    def protocol_file(self, request: Request, identifier: str) -> Response:
        entry = self._lookup(identifier)
        if entry is None:
            return self._missing(identifier)
        try:
            data = self.library.original_bytes(entry.orthanc_id)
        except OrthancError as exc:
            return error(404, f"the file of {entry.orthanc_id} cannot be read: {exc.message}")
        filename = f"{entry.sop_instance_uid}.dcm"
        return Response(
            200,
            data,
            content_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    # GET /dpp/protocols/{uid}/tree
    def protocol_tree(self, request: Request, identifier: str) -> Response:
        """The protocol as received, every attribute named, for the library page."""
        entry = self._lookup(identifier)
        if entry is None:
            return self._missing(identifier)
        try:
            ds = self.library.original_dataset(entry.orthanc_id)
        except OrthancError as exc:
            return error(404, f"the file of {entry.orthanc_id} cannot be read: {exc.message}")
        return json_response(
            200,
            {
                "OrthancID": entry.orthanc_id,
                "SOPInstanceUID": entry.sop_instance_uid,
                "Attributes": dataset_tree(ds),
            },
        )

    # GET /dpp/protocols/{a}/diff/{b}
    def protocol_diff(self, request: Request, first: str, second: str) -> Response:
        """What differs between two protocols as received, identity aside (``model.comparison``)."""
        entries = [(identifier, self._lookup(identifier)) for identifier in (first, second)]
        unknown = list(dict.fromkeys(i for i, entry in entries if entry is None))
        if unknown:
            names = " and ".join(repr(i) for i in unknown)
            return error(
                404, f"no protocol with SOP Instance UID or Orthanc ID {names}", Unknown=unknown
            )
        datasets = []
        for _, entry in entries:
            assert entry is not None
            try:
                datasets.append(self.library.original_dataset(entry.orthanc_id))
            except OrthancError as exc:
                return error(404, f"the file of {entry.orthanc_id} cannot be read: {exc.message}")
        found = differences(*datasets)
        return json_response(200, {"Differences": [d.as_json() for d in found]})

    # GET /dpp/protocols/{uid}/versions
    def protocol_versions(self, request: Request, identifier: str) -> Response:
        """The protocols before and after this one, from the index (``model.versions``)."""
        entry = self._lookup(identifier)
        if entry is None:
            return self._missing(identifier)
        return json_response(200, versions.versions(self.index, entry))

    # GET /dpp/activity
    def recent_activity(self, request: Request) -> Response:
        return activity_answer(self.activity)

    # GET /dpp/ui/{file}
    def library_page(self, request: Request, name: str) -> Response:
        return library_page_file(request, name)


def query_state(request: Request) -> str | None:
    """The ``approval`` query parameter: one of ``approvals.STATES``, None when absent."""
    value = request.get.get("approval")
    if value is None or value == "":
        return None
    if value not in approvals.STATES:
        raise BadParameter(
            "approval", f"must be one of {', '.join(approvals.STATES)}, got {value[:32]!r}"
        )
    return value


# The two routes below also answer when the configuration is invalid, so that
# the library page can show the errors: they need nothing but their arguments.


def activity_answer(activity: ActivityLog) -> Response:
    """``GET /dpp/activity``: the plugin's recent log lines."""
    return json_response(200, activity.as_json())


def library_page_file(request: Request, name: str) -> Response:
    """``GET /dpp/ui/{name}``: the protocol library page's own files (``library_page.ASSETS``)."""
    found = library_page.asset(name)
    if found is None:
        known = ", ".join(sorted(n for n in library_page.ASSETS if n))
        return error(404, f"no such file of the protocol library page: {name!r} ({known})")
    data, content_type = found
    return Response(200, data, content_type=content_type, headers=dict(library_page.HEADERS))
