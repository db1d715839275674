"""Which content of a protocol a Protocol Approval approved (README, "Protocol approvals").

An approval names its protocols by SOP Instance UID only, and a UID can be
given other content later (``OverwriteInstances``, or a delete and a new
upload). So that an approval does not carry over to content nobody
approved, the plugin records, whenever it stores an approval, the SHA-256
of each named protocol's stored file at that moment (none for a protocol not
stored then) in a metadata entry of the approval's Orthanc instance
(:data:`METADATA`): kept in Orthanc's database with the approval, deleted
with it, seen by every node sharing the database. An approval applies to a
protocol only while the protocol's stored file has the recorded digest:
identical content stored again applies again, anything else does not until
approved again. Approvals stored around the plugin (Orthanc's own routes)
have no record and approve nothing.

SHA-256 rather than the MD5 Orthanc keeps of every file: two files with
one MD5 can be made on purpose, and a sender allowed to store protocols,
but not approvals, could then swap an approved protocol for another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Final, Protocol

from orthanc_dpp.model import approvals
from orthanc_dpp.model.index import Entry, ProtocolIndex
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES
from orthanc_dpp.storage.library import OrthancError

log = logging.getLogger("orthanc_dpp.bindings")

#: Orthanc user-defined metadata index (1024-65535) holding an approval's record.
METADATA: Final = 4330


class ContentApi(Protocol):
    """The calls into Orthanc's REST API this module makes."""

    def get(self, uri: str) -> bytes: ...

    def put(self, uri: str, body: bytes) -> None: ...


class ApprovedContent:
    """The approved content of each approval's protocols, and whether it is still stored.

    Records and digests are cached per index entry: the index replaces an
    entry whenever its instance is stored again, so a cached value is never
    that of other content.
    """

    def __init__(self, api: ContentApi, index: ProtocolIndex) -> None:
        self.api = api
        self.index = index
        self._records: dict[str, tuple[Entry, dict[str, str | None]]] = {}
        self._digests: dict[str, tuple[Entry, str | None]] = {}
        self._lock = threading.Lock()

    def digest(self, protocol: Entry) -> str | None:
        """SHA-256 of the protocol's stored file; None if it cannot be read."""
        with self._lock:
            cached = self._digests.get(protocol.orthanc_id)
        if cached is not None and cached[0] is protocol:
            return cached[1]
        try:
            found: str | None = hashlib.sha256(
                self.api.get(f"/instances/{protocol.orthanc_id}/file")
            ).hexdigest()
        except OrthancError:
            found = None  # deleted meanwhile: nothing stored is approved
        with self._lock:
            self._digests[protocol.orthanc_id] = (protocol, found)
        return found

    def bind(self, approval: Entry) -> dict[str, str | None]:
        """Record what the approval's protocols hold now; returns the record."""
        record: dict[str, str | None] = {}
        for uid in approvals.subjects(approval.record):
            protocol = self.index.get(uid)
            stored = protocol is not None and protocol.sop_class_uid in DPP_STORAGE_CLASSES
            record[uid] = self.digest(protocol) if stored and protocol else None
        try:
            self.api.put(
                f"/instances/{approval.orthanc_id}/metadata/{METADATA}",
                json.dumps(record, sort_keys=True).encode(),
            )
        except OrthancError as exc:
            log.error(
                "Approval %s: the approved content is not recorded (%s); it approves nothing",
                approval.sop_instance_uid,
                exc.message,
            )
            record = {}
        with self._lock:
            self._records[approval.orthanc_id] = (approval, record)
        unstored = sorted(uid for uid, digest in record.items() if digest is None)
        if unstored:
            log.warning(
                "Approval %s names protocol(s) not stored now, which it does not approve: %s",
                approval.sop_instance_uid,
                ", ".join(unstored),
            )
        return record

    def recorded(self, approval: Entry) -> dict[str, str | None]:
        """The approval's record: protocol UID -> approved SHA-256 ({} when there is none)."""
        with self._lock:
            cached = self._records.get(approval.orthanc_id)
        if cached is not None and cached[0] is approval:
            return cached[1]
        try:
            raw = self.api.get(f"/instances/{approval.orthanc_id}/metadata/{METADATA}")
            parsed = json.loads(raw)
        except (OrthancError, ValueError):
            parsed = {}
        record = (
            {str(k): (v if isinstance(v, str) else None) for k, v in parsed.items()}
            if isinstance(parsed, dict)
            else {}
        )
        with self._lock:
            self._records[approval.orthanc_id] = (approval, record)
        return record

    def applies(self, approval: Entry, protocol: Entry) -> bool:
        """True if ``approval`` approved the content ``protocol`` holds now."""
        approved = self.recorded(approval).get(protocol.sop_instance_uid)
        return approved is not None and approved == self.digest(protocol)

    def forget(self, orthanc_id: str) -> None:
        """An instance was deleted: drop what is cached about it."""
        with self._lock:
            self._records.pop(orthanc_id, None)
            self._digests.pop(orthanc_id, None)
