"""A bare pynetdicom DPP Query/Retrieve SCP: the "other archive" of the remote tests.

It holds datasets in memory, answers C-FIND with every held protocol (the
keys of the identifier filled from it, SOP Instance UID always), C-GET and
C-MOVE by SOP Instance UID, and can be told to fail C-FIND with a status
and Error Comment. Everything it received is kept for assertions.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from orthanc_dpp.remote import TRANSFER_SYNTAXES
from orthanc_dpp.sop import DPP_FIND, DPP_GET, DPP_MOVE, DPP_STORAGE_CLASSES
from tests.orthanc_server import free_port
from tests.waiting import eventually


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
        yield len(uids)
        yield from self._send(event, uids)

    def _move(self, event: evt.Event) -> Iterator[Any]:
        uids = self._requested(event)
        address = self.destinations.get(event.move_destination or "")
        if address is None:
            yield None, None
            return
        yield address
        yield len(uids)
        yield from self._send(event, uids)
