"""An in-memory stand-in for the parts of Orthanc's REST API the plugin uses.

It follows what Orthanc 1.10.1 does (checked against the real server in the
integration tests): instance IDs derive from patient/study/series/instance
UIDs, a second upload of the same instance answers ``AlreadyStored``,
``/changes`` lists ``NewInstance`` entries and forgets them on deletion, and
the ``SopClassUid`` metadata of a deleted instance is a 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from typing import Any

import pydicom

from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.normalization import Normalization
from orthanc_dpp.rest.protocols import DppRestApi
from orthanc_dpp.storage.library import OrthancError, ProtocolLibrary, orthanc_resource_id

orthanc_id = orthanc_resource_id


class FakeOrthancApi:
    """Implements ``orthanc_dpp.storage.library.OrthancApi``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.sop_classes: dict[str, str] = {}
        self.series: dict[str, str] = {}  # instance -> its series' Orthanc ID
        self.changes: list[dict[str, object]] = []
        self.metadata: dict[tuple[str, str], bytes] = {}  # (instance, name) -> value
        #: (code, description) of an error the next POST raises, as the real
        #: Orthanc gives them (``(14, "Cannot write to file")`` for a full disk).
        self.fail_next_post: tuple[int, str] | None = None
        self.calls: list[tuple[str, str]] = []
        self.seq = 0
        self._lock = threading.Lock()

    def get(self, uri: str) -> bytes:
        self.calls.append(("GET", uri))
        path, _, query = uri.partition("?")
        parts = path.strip("/").split("/")
        if parts[0] == "changes" and query == "last":
            with self._lock:
                newest = self.changes[-1:]
                return json.dumps({"Changes": newest, "Done": True, "Last": self.seq}).encode()
        if parts[0] == "changes":
            params = dict(p.split("=") for p in query.split("&") if p)
            since, limit = int(params.get("since", 0)), int(params.get("limit", 100))
            with self._lock:
                newer = [c for c in self.changes if int(c["Seq"]) > since]
                page = newer[:limit]
                last = int(page[-1]["Seq"]) if page else self.seq
            return json.dumps({"Changes": page, "Done": len(newer) <= limit, "Last": last}).encode()
        if parts[0] == "series" and len(parts) == 2:
            members = [i for i, series in self.series.items() if series == parts[1]]
            if not members:
                raise OrthancError("GET", uri, "Unknown resource")
            return json.dumps({"ID": parts[1], "Instances": members}).encode()
        if parts[0] == "instances" and len(parts) >= 3:
            instance = parts[1]
            if instance not in self.files:
                raise OrthancError("GET", uri, "Unknown resource")
            if parts[2] == "file":
                return self.files[instance]
            if parts[2:] == ["metadata", "SopClassUid"]:
                return self.sop_classes[instance].encode()
            if parts[2:] == ["attachments", "dicom", "md5"]:
                return hashlib.md5(self.files[instance]).hexdigest().encode()
            if parts[2:] == ["attachments", "dicom", "size"]:
                return str(len(self.files[instance])).encode()
            if parts[2] == "metadata" and len(parts) == 4:
                if (instance, parts[3]) not in self.metadata:
                    raise OrthancError("GET", uri, "Inexistent item")
                return self.metadata[instance, parts[3]]
        raise OrthancError("GET", uri, "Unknown URI")

    def put(self, uri: str, body: bytes) -> None:
        """Only ``PUT /instances/{id}/metadata/{name}``, as Orthanc keeps user metadata."""
        self.calls.append(("PUT", uri))
        parts = uri.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "instances" or parts[2] != "metadata":
            raise OrthancError("PUT", uri, "Unknown URI")
        if parts[1] not in self.files:
            raise OrthancError("PUT", uri, "Unknown resource")
        self.metadata[parts[1], parts[3]] = body

    def post(self, uri: str, body: bytes) -> bytes:
        self.calls.append(("POST", uri))
        if uri != "/instances":
            raise OrthancError("POST", uri, "Unknown URI")
        if self.fail_next_post:
            (code, description), self.fail_next_post = self.fail_next_post, None
            raise OrthancError("POST", uri, str((code, description)), code, description)
        ds = pydicom.dcmread(io.BytesIO(body))
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(keyword, "")).strip() and keyword != "PatientID":
                raise OrthancError("POST", uri, f"Inexistent tag {keyword}")
        instance = orthanc_id(
            str(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        with self._lock:
            if instance in self.files:
                status = "AlreadyStored"
            else:
                status = "Success"
                self.files[instance] = body
                self.sop_classes[instance] = str(ds.SOPClassUID)
                self.series[instance] = orthanc_id(
                    str(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID
                )
                self.seq += 1
                change = {"ChangeType": "NewInstance", "ID": instance, "Seq": self.seq}
                self.changes.append(change)
        return json.dumps({"ID": instance, "Status": status}).encode()

    def delete(self, uri: str) -> None:
        self.calls.append(("DELETE", uri))
        instance = uri.rstrip("/").split("/")[-1]
        with self._lock:
            if instance not in self.files:
                raise OrthancError("DELETE", uri, "Unknown resource")
            del self.files[instance]
            del self.sop_classes[instance]
            del self.series[instance]
            self.metadata = {k: v for k, v in self.metadata.items() if k[0] != instance}
            self.changes = [c for c in self.changes if c["ID"] != instance]


class MemorySnapshots:
    """Implements ``orthanc_dpp.model.snapshot.SnapshotStore`` in memory; counts the writes."""

    def __init__(self) -> None:
        self.text = ""
        self.writes = 0

    def read(self) -> str:
        return self.text

    def write(self, text: str) -> None:
        self.text = text
        self.writes += 1


def rest_api(**options: Any) -> tuple[DppRestApi, FakeOrthancApi, ProtocolIndex]:
    """The ``/dpp/protocols`` handlers over a fresh FakeOrthancApi, wired as the adapter wires
    them: what they store or delete reaches a fresh index; ``/dpp/status`` answers ``{}``.
    ``options`` are DppRestApi's own (``limits``, ``maximum_upload``)."""
    api, index = FakeOrthancApi(), ProtocolIndex()
    rest = DppRestApi(
        ProtocolLibrary(api, Normalization()),
        index,
        status=dict,
        on_stored=lambda stored: index.put(stored.orthanc_id, stored.dataset),
        on_deleted=index.remove,
        **options,
    )
    return rest, api, index
