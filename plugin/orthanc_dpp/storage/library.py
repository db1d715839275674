"""Store DPP instances in Orthanc and read the originals back.

Every upload path (DIMSE C-STORE, the ``/dpp/protocols`` REST route) goes
through :meth:`ProtocolLibrary.store`, which answers only after Orthanc has
stored the instance and otherwise raises :class:`StoreError` with the DIMSE
status and HTTP status that describe why. Reads go through
:meth:`ProtocolLibrary.original_bytes` / :meth:`original_dataset`, which undo
normalization so that what leaves equals what arrived.

Orthanc is reached through the small :class:`OrthancApi` interface, so this
module runs unchanged against the real plugin API and against test fakes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import pydicom
from pydicom import Dataset
from pydicom.uid import UID

from orthanc_dpp.model import dimse_status, normalization
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.model.sop import STORAGE_CLASSES
from orthanc_dpp.storage import encoded
from orthanc_dpp.storage.decoding import (
    DatasetLimits,
    LimitExceeded,
    check_part10,
)
from orthanc_dpp.storage.errors import OrthancError, StoreError  # users import them from here too
from orthanc_dpp.storage.part10 import encode_part10, parse_part10, spliced_part10

log = logging.getLogger("orthanc_dpp.library")


class OrthancApi(Protocol):
    """The part of Orthanc's in-process REST API the plugin uses."""

    def get(self, uri: str) -> bytes: ...

    def post(self, uri: str, body: bytes) -> bytes: ...

    def delete(self, uri: str) -> None: ...


class FreshMarks(Protocol):
    """What the library tells the change feed (``feed.FreshInstances``)."""

    def mark(self, orthanc_id: str, md5: str | None = None) -> None: ...

    def unmark(self, orthanc_id: str) -> None: ...


@dataclass(frozen=True)
class Stored:
    """An instance Orthanc has stored (``status`` is Orthanc's own word)."""

    sop_instance_uid: str
    sop_class_uid: str
    orthanc_id: str
    status: str  # "Success" or "AlreadyStored"
    added: list[str] = field(default_factory=list)
    dataset: Dataset | None = field(default=None, compare=False, repr=False)
    #: Seconds Orthanc took to store it (its ``POST /instances``), for the metrics.
    orthanc_seconds: float = field(default=0.0, compare=False, repr=False)

    def as_json(self) -> dict[str, object]:
        return {
            "SOPInstanceUID": self.sop_instance_uid,
            "SOPClassUID": self.sop_class_uid,
            "OrthancID": self.orthanc_id,
            "Status": self.status,
            "AddedByNormalization": self.added,
        }


#: Why a store is refused while the index loads (Error Comment and REST "Error").
#: Its first 64 characters are the whole message as a DIMSE Error Comment (LO).
INDEX_LOADING = (
    "protocol index is loading: retry in a few seconds (Orthanc has just started, and "
    "nothing is stored until the index knows every stored SOP Instance UID)"
)
#: Seconds a REST client is told to wait (Retry-After) while the index loads.
RETRY_AFTER_SECONDS = 5

# Orthanc's error codes (OrthancPluginErrorCode) for a store that failed on
# the server's side, not because of the file, with the diagnosis that leads
# the reason. Seen for real (tests/integration/test_storage_full.py,
# test_scale_out.py): a full storage folder is 14 "Cannot write to file"; a
# full index folder is an SQLite error (1009: SQLite's own "full" is only in
# Orthanc's log); PostgreSQL gone is 36 "The database is currently not
# available", or 6 "Bad sequence of calls" for a store its fast shutdown
# caught half-way on a loaded machine (Orthanc 1.10.1, orthanc-postgresql 4.0).
_OUT_OF_STORAGE: Final = {
    4: "Orthanc is out of memory",  # NotEnoughMemory
    14: "Orthanc's storage is full or not writable",  # CannotWriteFile
    19: "Orthanc's storage is full",  # FullStorage
}
_SQLITE_ERRORS = range(1000, 1100)  # SQLiteNotOpened ... SQLiteTransactionBegin
_DATABASE_DOWN: Final = {
    6: "Orthanc's store was interrupted",  # BadSequenceOfCalls
    11: "Orthanc's database failed",  # Database
    31: "Orthanc's database plugin failed",  # DatabasePlugin
    32: "Orthanc's storage plugin failed",  # StorageAreaPlugin
    36: "Orthanc's database is unavailable",  # DatabaseUnavailable
    42: "Orthanc's database is busy",  # DatabaseCannotSerialize
}


def store_refusal(exc: OrthancError) -> StoreError:
    """How a failed ``POST /instances`` is reported: DIMSE status, HTTP status, reason.

    Failures of Orthanc's storage or database are Out of Resources (0xA700)
    for the modality, which may try again later: HTTP 507 when the storage
    or the index database cannot be written (a full disk, typically), 503
    when the database is unreachable for now. Anything else blames the file
    (0xC000, 500). The reason leads with the diagnosis and Orthanc's code,
    so that both fit in the 64 characters of an Error Comment.
    """
    code = exc.code
    detail = f"(error {code}: {exc.description})"
    if code in _OUT_OF_STORAGE:
        return StoreError(
            dimse_status.STORE_OUT_OF_RESOURCES, 507, f"{_OUT_OF_STORAGE[code]} {detail}"
        )
    if code is not None and code in _SQLITE_ERRORS:
        lead = "Orthanc's index is full or not writable"
        return StoreError(dimse_status.STORE_OUT_OF_RESOURCES, 507, f"{lead} {detail}")
    if code in _DATABASE_DOWN:
        lead = f"{_DATABASE_DOWN[code]}, try again"
        return StoreError(dimse_status.STORE_OUT_OF_RESOURCES, 503, f"{lead} {detail}")
    return StoreError(
        dimse_status.STORE_CANNOT_UNDERSTAND,
        500,
        f"Orthanc did not store the instance: {exc.message}",
    )


def orthanc_resource_id(*identifiers: str) -> str:
    """Orthanc's ID of a patient/study/series/instance from its DICOM identifiers.

    Orthanc hashes "PatientID|StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID"
    (as far as the level goes) with SHA-1, written as five groups of 8 hex digits.
    """
    digest = hashlib.sha1("|".join(identifiers).encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def check_storable(ds: Dataset, context_sop_class: str | None = None) -> tuple[str, str]:
    """Return (SOP Class UID, SOP Instance UID) if ``ds`` is a DPP storage instance.

    ``context_sop_class`` is the abstract syntax of the DIMSE presentation
    context the dataset came in on; a dataset of another class does not
    match its SOP class (PS3.4 B.2.3, 0xA900).
    """
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    sop_instance = str(ds.get("SOPInstanceUID", "")).strip()
    if not sop_class:
        raise StoreError(
            dimse_status.STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            400,
            "SOP Class UID (0008,0016) missing",
        )
    if context_sop_class is not None and sop_class != context_sop_class:
        raise StoreError(
            dimse_status.STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            400,
            f"SOP Class UID {sop_class} does not match the presentation context "
            f"({context_sop_class})",
        )
    if sop_class not in STORAGE_CLASSES:
        name = UID(sop_class).name if UID(sop_class).is_valid else sop_class
        raise StoreError(
            dimse_status.STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            415,
            f"SOP class {name} is not a Defined Procedure Protocol or Protocol Approval "
            "storage class",
        )
    if not sop_instance or not UID(sop_instance).is_valid:
        raise StoreError(
            dimse_status.STORE_CANNOT_UNDERSTAND,
            400,
            f"SOP Instance UID (0008,0018) missing or invalid: {sop_instance!r}",
        )
    return sop_class, sop_instance


class ProtocolLibrary:
    """DPP instances in Orthanc's database, reached through :class:`OrthancApi`.

    One SOP Instance UID is one protocol. ``stored_as`` tells which Orthanc
    instance already holds a UID (the index); a store that would make a
    second Orthanc instance with that UID (other patient, study or series
    in the file) is refused, unless ``overwrite`` (Orthanc's
    ``OverwriteInstances``) says the newcomer replaces it, in which case
    the old instance is deleted once the new one is stored. A resend of a
    stored UID with other content is refused too when Orthanc keeps the
    stored copy: answering Success would drop the sender's content
    silently. Two stores of one UID at the same time are not raced: the
    second is refused while the first runs, and "runs" lasts until the
    caller's ``on_stored`` (which puts the instance in the index) has
    returned, so the next store of the UID finds it there. Until ``ready``
    says the index has loaded, ``stored_as`` cannot know what is stored,
    so every store is refused then (0xA700 / HTTP 503, retry later).
    """

    def __init__(
        self,
        api: OrthancApi,
        labels: Normalization,
        *,
        stored_as: Callable[[str], str | None] | None = None,
        overwrite: bool = False,
        fresh: FreshMarks | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.ready = ready or (lambda: True)
        self.fresh = fresh  # stores the change feed need not read again
        self.api = api
        self.labels = labels
        self.stored_as = stored_as or (lambda uid: None)
        self.overwrite = overwrite
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()

    @contextlib.contextmanager
    def _claim(self, sop_instance: str) -> Iterator[None]:
        with self._in_flight_lock:
            if sop_instance in self._in_flight:
                raise StoreError(
                    dimse_status.DUPLICATE_SOP_INSTANCE,
                    409,
                    f"SOP Instance UID being stored by another request, retry: {sop_instance}",
                )
            self._in_flight.add(sop_instance)
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(sop_instance)

    def store(
        self,
        ds: Dataset,
        part10: bytes | None = None,
        *,
        context_sop_class: str | None = None,
        elements: encoded.Elements | None = None,
        on_stored: Callable[[Stored], None] | None = None,
    ) -> Stored:
        """Normalize ``ds`` if needed and store it; return what Orthanc said.

        ``on_stored`` (the caller's indexing) runs with the result while the
        UID is still claimed: released earlier, another store of the UID
        could slip in before the index knows this one and make a second
        Orthanc instance of it.

        ``part10`` is ``ds`` as a Part 10 file when the caller has it; it is
        sent as is when no normalization is needed. ``elements`` are the
        encoded elements ``ds`` was read from (:func:`encoded.scan`): the
        stored file is then spliced from them instead of encoded again.
        ``ds`` is modified in place by normalization; the returned
        ``dataset`` is the original.
        """
        sop_class, sop_instance = check_storable(ds, context_sop_class)
        if not self.ready():
            raise StoreError(dimse_status.STORE_OUT_OF_RESOURCES, 503, INDEX_LOADING)
        try:
            result = normalization.normalize(ds, self.labels)
        except normalization.NormalizationError as exc:
            raise StoreError(dimse_status.STORE_CANNOT_UNDERSTAND, 400, str(exc)) from exc
        try:
            target = orthanc_resource_id(
                str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop_instance
            )
            body = part10 if part10 is not None and not result.changed else None
            if body is None and elements is not None:
                body = spliced_part10(ds, elements, result)
            if body is None:
                body = encode_part10(ds)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(
                dimse_status.STORE_CANNOT_UNDERSTAND, 400, f"cannot encode the dataset: {exc}"
            ) from exc
        finally:
            normalization.reverse(ds)
        with self._claim(sop_instance):
            existing = self.stored_as(sop_instance)
            if existing and existing != target and not self.overwrite:
                raise StoreError(
                    dimse_status.DUPLICATE_SOP_INSTANCE,
                    409,
                    "SOP Instance UID stored under other patient/study/series: "
                    f"{sop_instance} is Orthanc instance {existing}; delete it first "
                    "(or set OverwriteInstances)",
                )
            if self.fresh is not None:
                self.fresh.mark(target, hashlib.md5(body).hexdigest())
            try:
                stored = self._post(ds, body, sop_class, sop_instance, result)
            except StoreError:
                if self.fresh is not None:
                    self.fresh.unmark(target)
                raise
            if self.fresh is not None and (
                stored.status == "AlreadyStored" or stored.orthanc_id != target
            ):
                self.fresh.unmark(target)  # nothing new in the change log
            if existing and existing != stored.orthanc_id:
                log.warning(
                    "SOP Instance UID %s: instance %s replaced by %s (OverwriteInstances)",
                    sop_instance,
                    existing,
                    stored.orthanc_id,
                )
                with contextlib.suppress(OrthancError):  # already gone is fine
                    self.delete(existing)
            if on_stored is not None:
                on_stored(stored)
            return stored

    def _post(
        self,
        ds: Dataset,
        body: bytes,
        sop_class: str,
        sop_instance: str,
        result: normalization.Normalized,
    ) -> Stored:
        """POST the encoded instance; an AlreadyStored answer reports the stored copy."""
        started = time.perf_counter()
        try:
            answer = json.loads(self.api.post("/instances", body))
        except OrthancError as exc:
            raise store_refusal(exc) from exc
        stored = Stored(
            sop_instance_uid=sop_instance,
            sop_class_uid=sop_class,
            orthanc_id=str(answer.get("ID", "")),
            status=str(answer.get("Status", "Success")),
            added=normalization.describe(result.added + result.filled),
            dataset=ds,
            orthanc_seconds=time.perf_counter() - started,
        )
        if stored.status != "AlreadyStored":
            return stored
        kept = self.original_dataset(stored.orthanc_id)
        if kept != ds:
            raise StoreError(
                dimse_status.DUPLICATE_SOP_INSTANCE,
                409,
                "SOP Instance UID already stored with other content (kept): "
                f"{sop_instance}; Orthanc keeps the stored protocol (OverwriteInstances is "
                "false): give a changed protocol a new SOP Instance UID",
            )
        log.info("SOP Instance UID %s sent again, identical to the stored copy", sop_instance)
        return dataclasses.replace(stored, dataset=kept)

    def stored_bytes(self, orthanc_id: str) -> bytes:
        """The file as Orthanc holds it (normalized)."""
        return self.api.get(f"/instances/{orthanc_id}/file")

    def original_dataset(self, orthanc_id: str) -> Dataset:
        """The instance as it was received, normalization undone."""
        ds = pydicom.dcmread(io.BytesIO(self.stored_bytes(orthanc_id)))
        return normalization.reverse(ds)

    def original_bytes(self, orthanc_id: str) -> bytes:
        """The instance as a Part 10 file, normalization undone.

        Files that were stored untouched are returned byte for byte.
        """
        data = self.stored_bytes(orthanc_id)
        ds = pydicom.dcmread(io.BytesIO(data))
        if not normalization.has_record(ds):
            return data
        return encode_part10(normalization.reverse(ds))

    def delete(self, orthanc_id: str) -> None:
        self.api.delete(f"/instances/{orthanc_id}")


def normalize_received(
    data: bytes, labels: Normalization, limits: DatasetLimits | None = None
) -> bytes | None:
    """For Orthanc's received-instance hook: normalized bytes, or None to keep as is.

    This catches DPP files arriving by any path other than ours (a plain
    ``POST /instances``, DICOMweb, WebDAV). Only the SOP Class UID and the
    identity attributes are read first, so other instances cost little;
    but a Deflated file is inflated whole by pydicom even for those, so
    :func:`check_part10` comes first (``limits``: the plugin's), and a file
    it refuses is left to Orthanc as it is.
    Raises :class:`StoreError` when a DPP instance cannot be normalized.
    """
    try:
        check_part10(data, limits or DatasetLimits())
    except LimitExceeded as exc:
        log.warning("Received instance left as it is, not read: %s", exc.comment)
        return None
    try:
        head = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", *normalization.REQUIRED],
        )
    except Exception:
        return None  # not ours to judge: Orthanc reports its own error
    if str(head.get("SOPClassUID", "")).strip() not in STORAGE_CLASSES:
        return None
    if all(
        str(head.get(keyword, "")).strip(normalization.PADDING)
        for keyword in normalization.REQUIRED
    ):
        return None
    ds = parse_part10(data)
    check_storable(ds)
    try:
        normalization.normalize(ds, labels)
    except normalization.NormalizationError as exc:
        raise StoreError(dimse_status.STORE_CANNOT_UNDERSTAND, 400, str(exc)) from exc
    return encode_part10(ds)


class IndexedSource:
    """What C-GET/C-MOVE retrieve (``retrieve.ProtocolSource``): indexed instances.

    Each information model retrieves its own instances only: Defined
    Procedure Protocols through the DPP model, Protocol Approvals through
    theirs (PS3.4 HH, II).
    """

    def __init__(self, index: ProtocolIndex, library: ProtocolLibrary) -> None:
        self.index = index
        self.library = library

    def resolve(
        self, uids: Sequence[str], storage_classes: frozenset[str]
    ) -> list[tuple[str, str | None]]:
        resolved: list[tuple[str, str | None]] = []
        for uid in uids:
            entry = self.index.get(uid)
            if entry is not None and entry.sop_class_uid in storage_classes:
                resolved.append((uid, entry.orthanc_id))
            else:
                resolved.append((uid, None))
        return resolved

    def load(self, orthanc_id: str) -> Dataset:
        return self.library.original_dataset(orthanc_id)
