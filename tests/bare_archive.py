"""A bare pynetdicom DPP Query/Retrieve SCP: the "other archive" of the remote tests.

It holds datasets in memory, answers C-FIND with every held protocol (the
keys of the identifier filled from it, SOP Instance UID always), C-GET and
C-MOVE by SOP Instance UID, and can be told to fail C-FIND with a status
and Error Comment. Everything it received is kept for assertions.

It can also play a hostile archive: :attr:`BareArchive.get_sends` replaces
what a C-GET sends by raw C-STORE requests (any Affected SOP Instance UID,
any dataset bytes: unrequested instances, a dataset whose UID differs, a
deflate bomb), and :attr:`BareArchive.endless_find` answers a C-FIND with
pending responses that ignore the C-CANCEL (bounded, so a test always ends).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification

from orthanc_dpp.model.sop import (
    DPP_FIND,
    DPP_GET,
    DPP_MOVE,
    DPP_STORAGE_CLASSES,
    TRANSFER_SYNTAXES,
)
from tests.orthanc_server import free_port
from tests.waiting import eventually

#: Pending answers an endless C-FIND makes at most (the requester must stop long before).
ENDLESS_FIND_BOUND = 50_000


@dataclass(frozen=True)
class RawStore:
    """One C-STORE sub-operation as a hostile archive sends it: the command's
    Affected SOP Instance UID and the dataset bytes are independent."""

    affected_uid: str
    sop_class: str
    data: bytes
    transfer_syntax: str = ExplicitVRLittleEndian

    @classmethod
    def of(cls, ds: Dataset, affected_uid: str | None = None) -> RawStore:
        """``ds`` encoded as Explicit VR Little Endian, announced as ``affected_uid``."""
        data = encode(ds, False, True)
        assert data is not None
        return cls(affected_uid or str(ds.SOPInstanceUID), str(ds.SOPClassUID), data)


class BareArchive:
    """Started on a free loopback port; use as a context manager."""

    def __init__(
        self,
        datasets: Iterable[Dataset] = (),
        *,
        ae_title: str = "BARE_DPP",
        destinations: dict[str, tuple[str, int]] | None = None,
        pending_gate: threading.Event | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.held = {str(ds.SOPInstanceUID): ds for ds in datasets}
        self.destinations = dict(destinations or {})
        self.find_failure: tuple[int, str] | None = None
        # After this many C-FIND answers, wait (at most 10 s) for the requester's C-CANCEL.
        self.await_cancel_after: int | None = None
        self.identifiers: list[Dataset] = []
        self.find_answers = 0  # answers made (pynetdicom stops asking after a C-CANCEL)
        self.callers: list[str] = []
        self.store_statuses: list[int] = []
        self.store_comments: list[str] = []
        # Hostile: what a C-GET sends instead of the requested protocols.
        self.get_sends: list[RawStore] | None = None
        # Hostile: C-FIND answers pending responses, ignoring C-CANCEL.
        self.endless_find = False
        self.cancelled = threading.Event()
        # When set, retrieves wait for it before each sub-operation after the first.
        self.pending_gate = pending_gate
        self.port = free_port()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)
        for sop_class in (DPP_FIND, DPP_GET, DPP_MOVE):
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        for sop_class in sorted(DPP_STORAGE_CLASSES):
            self.ae.add_supported_context(
                sop_class, TRANSFER_SYNTAXES, scu_role=False, scp_role=True
            )
            self.ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)  # C-MOVE destinations
        self.server: Any = None
        self.ssl_context = ssl_context  # DICOM TLS, when given

    def __enter__(self) -> BareArchive:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[
                (evt.EVT_C_FIND, self._find),
                (evt.EVT_C_GET, self._get),
                (evt.EVT_C_MOVE, self._move),
            ],
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()

    def modality(self, name: str = "bare", **options: Any) -> dict[str, Any]:
        """Its entry for Orthanc's DicomModalities (or ``/modalities?expand``)."""
        return {"AET": self.ae_title, "Host": "127.0.0.1", "Port": self.port, **options}

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        self.identifiers.append(identifier)
        self.callers.append(event.assoc.requestor.ae_title)
        if self.endless_find:
            answer = Dataset()
            answer.SOPInstanceUID = "1.2.3.4"
            for _ in range(ENDLESS_FIND_BOUND):
                self.find_answers += 1
                yield 0xFF00, answer
            yield 0x0000, None
            return
        if self.find_failure is not None:
            code, comment = self.find_failure
            failure = Dataset()
            failure.Status = code
            failure.ErrorComment = comment
            yield failure, None
            return
        for number, ds in enumerate(self.held.values()):
            # is_cancelled is true once per C-CANCEL: pynetdicom takes the request out.
            waited = number == self.await_cancel_after and eventually(
                lambda: event.is_cancelled, 10
            )
            if waited or event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            answer = Dataset()
            for element in identifier:
                if element.keyword in ds:
                    answer[element.tag] = ds[element.tag]
            answer.SOPInstanceUID = ds.SOPInstanceUID
            self.find_answers += 1
            yield 0xFF00, answer

    def _requested(self, event: evt.Event) -> list[str]:
        identifier = event.identifier
        self.identifiers.append(identifier)
        self.callers.append(event.assoc.requestor.ae_title)
        value = identifier.SOPInstanceUID
        uids = [value] if isinstance(value, str) else list(value)
        return [str(uid) for uid in uids if str(uid) in self.held]  # others: not counted

    def _send(self, event: evt.Event, uids: list[str]) -> Iterator[tuple[int, Dataset | None]]:
        for number, uid in enumerate(uids):
            if number and self.pending_gate is not None:
                self.pending_gate.wait(10)
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            yield 0xFF00, self.held[uid]

    def _get(self, event: evt.Event) -> Iterator[Any]:
        uids = self._requested(event)
        if self.get_sends is not None:
            yield len(self.get_sends)
            for item in self.get_sends:
                self._send_raw(event.assoc, item)
            yield 0x0000, None  # final: pynetdicom fills in its own (zero) counters
            return
        yield len(uids)
        yield from self._send(event, uids)

    def _send_raw(self, assoc: Any, item: RawStore) -> None:
        """One C-STORE request as ``item`` says, its response status recorded (-1: none)."""
        context = next(
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == item.sop_class
            and cx.transfer_syntax[0] == item.transfer_syntax
        )
        request = C_STORE()
        request.MessageID = len(self.store_statuses) + 100
        request.AffectedSOPClassUID = item.sop_class
        request.AffectedSOPInstanceUID = item.affected_uid
        request.Priority = 2
        request.DataSet = BytesIO(item.data)
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
        self.store_statuses.append(-1 if response is None else int(response.Status))
        comment = getattr(response, "ErrorComment", None) if response is not None else None
        self.store_comments.append(str(comment or ""))

    def _move(self, event: evt.Event) -> Iterator[Any]:
        uids = self._requested(event)
        address = self.destinations.get(event.move_destination or "")
        if address is None:
            yield None, None
            return
        yield address
        yield len(uids)
        yield from self._send(event, uids)


class StallingPeer:
    """A TCP server (an archive, a C-MOVE destination) that reads the A-ASSOCIATE-RQ
    and answers only a PDU header.

    The header announces ``length`` bytes that never come: pynetdicom's
    requester, whose socket has no timeout once connected, would wait for
    them forever.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.done = threading.Event()

    def _serve(self) -> None:
        client, _ = self.server.accept()
        with client:
            client.settimeout(30)
            client.recv(65536)
            client.sendall(struct.pack(">BBL", 0x02, 0, self.length))
            self.done.wait(60)  # silent, connection open

    def __enter__(self) -> StallingPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.server.close()
        self.thread.join(5)
