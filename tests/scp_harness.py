"""SCP-side test harness shared by the unit tests of the DIMSE handlers.

A pynetdicom C-GET/C-MOVE SCP over an in-memory ``ProtocolSource``
(``Harness``, started by the ``harness`` fixture of tests/unit/conftest.py)
and the requester that talks to it (``c_get``, ``c_move``); fake C-FIND
events and the C-FIND handler built on them; a C-FIND SCP on a loopback port;
the two gatekeepers (everyone may do everything, nobody may do anything).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from types import SimpleNamespace
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode
from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES as DEFAULT
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelFind

from dpp_tools.samples import to_bytes
from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper, parse_unknown_callers
from orthanc_dpp.dicom.modalities import ModalityRegistry, parse_modalities
from orthanc_dpp.dicom.scp import handlers as scp
from orthanc_dpp.model import dimse_status, sop
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES
from tests import dicom_client
from tests.datasets import make_index

DPP_CLASSES = sorted(sop.DPP_STORAGE_CLASSES)


SCP_AET = "DPP_SCP"


SCU_AET = "RETRIEVER"


class MemorySource:
    """A ProtocolSource over Part 10 bytes; counts datasets alive at once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.alive = 0
        self.max_alive = 0
        self.loads = 0
        self.broken: set[str] = set()

    def _gone(self) -> None:
        self.alive -= 1

    def resolve(
        self, uids: list[str], storage_classes: frozenset[str]
    ) -> list[tuple[str, str | None]]:
        def stored(uid: str) -> bool:
            if uid not in self.files:
                return False
            ds = dcmread(BytesIO(self.files[uid]), specific_tags=["SOPClassUID"])
            return str(ds.SOPClassUID) in storage_classes

        return [(u, f"id-{u}" if stored(u) else None) for u in uids]

    def load(self, orthanc_id: str) -> Dataset:
        uid = orthanc_id.removeprefix("id-")
        if uid in self.broken:
            raise OSError("storage area unreadable")
        self.loads += 1
        ds = dcmread(BytesIO(self.files[uid]))
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        weakref.finalize(ds, self._gone)
        return ds


@dataclass
class Harness:
    source: MemorySource
    registry: ModalityRegistry
    port: int
    server: Any
    handlers: dict[Any, Any]

    def set_modalities(self, entries: dict[str, Any], **options: bool) -> None:
        base = {"retriever": [SCU_AET, "127.0.0.1", 1]}
        self.registry.replace(parse_modalities({**base, **entries}, **options))


def add_protocols(h: Harness, datasets: list[Dataset], ts: str = ExplicitVRLittleEndian) -> list:
    """Store datasets in the source; return their UIDs."""
    for ds in datasets:
        h.source.files[str(ds.SOPInstanceUID)] = to_bytes(ds, ts)
    return [str(ds.SOPInstanceUID) for ds in datasets]


@dataclass
class Response:
    status: int
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None
    comment: str | None
    offending: Any
    failed_uids: list[str] | None


@dataclass
class Result:
    responses: list[Response]
    received: list[tuple[Dataset, str, str | None]] = field(default_factory=list)

    @property
    def final(self) -> Response:
        return self.responses[-1]

    @property
    def pending(self) -> list[Response]:
        return [r for r in self.responses if r.status == dimse_status.PENDING]


def _response(st: Dataset, identifier: Dataset | None) -> Response:
    failed = None
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        value = identifier.FailedSOPInstanceUIDList
        failed = [value] if isinstance(value, str) else list(value)
        failed = [u for u in failed if u]
    return Response(
        st.Status,
        st.get("NumberOfRemainingSuboperations"),
        st.get("NumberOfCompletedSuboperations"),
        st.get("NumberOfFailedSuboperations"),
        st.get("NumberOfWarningSuboperations"),
        st.get("ErrorComment"),
        st.get("OffendingElement"),
        failed,
    )


def _query(
    h: Harness,
    model: str,
    identifier: Dataset,
    *,
    aet: str = SCU_AET,
    storage_ts: list[str] | None = TRANSFER_SYNTAXES,
    move_to: str | None = None,
    cancel_after: int | None = None,
    query_ts: list[str] = TRANSFER_SYNTAXES,
) -> Result:
    received: list[tuple[Dataset, str, str | None]] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((ds, str(event.context.transfer_syntax), None))
        return dimse_status.SUCCESS

    storage = storage_ts if storage_ts and model == sop.DPP_GET else []
    assoc = dicom_client.associate(
        "127.0.0.1",
        h.port,
        SCP_AET,
        calling_aet=aet,
        # one storage context per syntax: the SCP may send as stored
        contexts=[(model, query_ts), *((c, [ts]) for c in DPP_CLASSES for ts in storage)],
        scp_role_for=DPP_CLASSES if storage else (),
        handlers=[(evt.EVT_C_STORE, on_store)],
        timeout=10,  # a missing response fails the test, not hangs it
    )
    try:
        if model == sop.DPP_GET:
            answers = assoc.send_c_get(identifier, model, msg_id=7)
        else:
            answers = assoc.send_c_move(identifier, move_to, model, msg_id=7)
        cx_id = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == model)
        responses = []
        for st, ident in answers:
            assert "Status" in st, "no response (timeout or abort)"
            responses.append(_response(st, ident))
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(7, cx_id)
    finally:
        assoc.release()
    return Result(responses, received)


def c_get(h: Harness, identifier: Dataset, **kwargs: Any) -> Result:
    return _query(h, sop.DPP_GET, identifier, **kwargs)


def c_move(h: Harness, identifier: Dataset, destination: str, **kwargs: Any) -> Result:
    return _query(h, sop.DPP_MOVE, identifier, move_to=destination, **kwargs)


def gate() -> Gatekeeper:
    everyone = parse_unknown_callers(["Echo", "Store", "Find", "Get", "Move"])
    return Gatekeeper(ModalityRegistry(), AccessPolicy.from_orthanc({}, everyone))


def find_event(identifier: Dataset, assoc: Any = None) -> SimpleNamespace:
    assoc = assoc or SimpleNamespace(is_established=True)
    assoc.requestor = SimpleNamespace(ae_title="SCU", address="127.0.0.1", port=1234)
    return SimpleNamespace(
        assoc=assoc,
        request=SimpleNamespace(
            Identifier=BytesIO(encode(identifier, False, True)), AffectedSOPClassUID=sop.DPP_FIND
        ),
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        is_cancelled=False,
    )


def universal() -> Dataset:
    identifier = Dataset()
    identifier.SOPInstanceUID = ""
    identifier.ProtocolName = ""
    return identifier


def handler(*, time_limit: float = 600.0, **keywords: Any) -> scp.FindHandler:
    """A FindHandler over :func:`make_index`, open to everyone, with no result limit."""
    options = scp.FindOptions(max_results=0, time_limit=time_limit)
    return scp.FindHandler(make_index(), gate(), options, is_ready=lambda: True, **keywords)


def nobody() -> Gatekeeper:
    return Gatekeeper(ModalityRegistry(), AccessPolicy.from_orthanc({}, parse_unknown_callers([])))


@contextlib.contextmanager
def find_scp(handler: Any, syntaxes: list[str] | None = None) -> Iterator[int]:
    """A pynetdicom DPP C-FIND SCP "DPPTEST" on a loopback port with ``handler`` bound."""
    ae = AE(ae_title="DPPTEST")
    ae.add_supported_context(DefinedProcedureProtocolInformationModelFind, syntaxes or DEFAULT)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, handler)]
    )
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
