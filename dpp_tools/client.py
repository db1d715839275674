"""DIMSE operations of a DPP requester: echo, store, find, get, move, and a storage receiver.

Speaks PS3.4 Annex HH to any DPP archive, so it holds no knowledge of the
plugin. Each operation returns what the peer answered (statuses as datasets,
received files); deciding what that means for the user is the command line's
job. Association problems (nothing listening, a rejection, an abort, a
presentation context the peer refused) raise :class:`AssociationError` with a
sentence saying which.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, Association, build_role, evt
from pynetdicom._globals import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import (
    CTDefinedProcedureProtocolStorage,
    DefinedProcedureProtocolInformationModelFind,
    DefinedProcedureProtocolInformationModelGet,
    DefinedProcedureProtocolInformationModelMove,
    ProtocolApprovalStorage,
    Verification,
    XADefinedProcedureProtocolStorage,
)

#: The storage classes a DPP archive sends in C-GET and receivers accept.
#: Approvals are not in the DPP information model but travel with protocols.
DPP_STORAGE = (
    CTDefinedProcedureProtocolStorage,
    XADefinedProcedureProtocolStorage,
    ProtocolApprovalStorage,
)
#: The uncompressed transfer syntaxes (Implicit, Explicit, Deflated, Big Endian).
TRANSFER_SYNTAXES = tuple(UID(ts) for ts in DEFAULT_TRANSFER_SYNTAXES)
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class AssociationError(Exception):
    """No usable association: nothing listening, rejected, aborted or lost."""


@dataclass(frozen=True)
class Peer:
    """Where the DPP archive is and who we say we are."""

    host: str
    port: int
    called_aet: str
    calling_aet: str
    timeout: float = 30.0

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


def is_uid(text: str) -> bool:
    """A syntactically valid UID (PS3.5 9.1): safe as a file name, too."""
    return 0 < len(text) <= 64 and _UID.match(text) is not None


def _new_ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout
    return ae


@contextlib.contextmanager
def association(
    peer: Peer,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    required: Sequence[str] = (),
    roles: Sequence[Any] = (),
    handlers: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> Iterator[Association]:
    """An established association proposing `contexts`; released on exit.

    Every abstract syntax in `required` must have been accepted, else the
    association is released and :class:`AssociationError` says which.
    """
    ae = _new_ae(peer)
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, list(transfer_syntaxes))
    seen: dict[str, Any] = {"connected": False, "accepted": None, "rejection": None}

    def on_open(event: evt.Event) -> None:
        seen["connected"] = True

    def on_acse(event: evt.Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result is not None:
            seen["accepted" if primitive.result == 0 else "rejection"] = primitive

    # Raw pynetdicom: a shipped tool, which may not import the tests' client.
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.called_aet,
        ext_neg=list(roles) or None,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACSE_RECV, on_acse), *handlers],
    )
    if not assoc.is_established:
        rejection: A_ASSOCIATE | None = seen["rejection"]
        if rejection is not None:
            raise AssociationError(
                f"{peer} rejected the association ({rejection.result_str}, "
                f"{rejection.source_str}: {rejection.reason_str})"
            )
        if not seen["connected"]:
            raise AssociationError(f"cannot connect to {peer.host}:{peer.port}")
        if seen["accepted"] is not None:  # pynetdicom aborts when no context was accepted
            names = ", ".join(dict.fromkeys(UID(a).name for a, _ in contexts))
            raise AssociationError(f"{peer} does not accept {names}")
        raise AssociationError(f"{peer} aborted or did not answer the association request")
    try:
        accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
        for abstract_syntax in required:
            if abstract_syntax not in accepted:
                raise AssociationError(
                    f"{peer} does not accept {UID(abstract_syntax).name} ({abstract_syntax})"
                )
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _answered(status: Dataset | None, peer: Peer, service: str) -> Dataset:
    """`status` if it is an answer; pynetdicom gives an empty one when the association died."""
    if status is None or "Status" not in status:
        raise AssociationError(f"{peer}: the association ended during {service} without an answer")
    return status


def echo(peer: Peer) -> Dataset:
    """C-ECHO; the response's status dataset."""
    with association(peer, [(Verification, TRANSFER_SYNTAXES)], required=[Verification]) as assoc:
        return _answered(assoc.send_c_echo(), peer, "C-ECHO")


@dataclass
class StoreResult:
    """One file's C-STORE: the status the peer answered, or why it was not sent."""

    path: Path
    sop_instance_uid: str
    status: Dataset | None = None
    error: str = ""


@dataclass(frozen=True)
class DicomFile:
    """What a store needs to know of a file before sending it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def read_header(path: Path) -> DicomFile:
    """SOP class, instance and transfer syntax of a Part 10 file; ValueError if it is none."""
    try:
        ds = pydicom.dcmread(path, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ValueError(f"{path}: not a readable DICOM file ({exc})") from exc
    meta = getattr(ds, "file_meta", Dataset())
    missing = [key for key in ("SOPClassUID", "SOPInstanceUID") if not ds.get(key)]
    missing += [] if meta.get("TransferSyntaxUID") else ["TransferSyntaxUID"]
    if missing:
        raise ValueError(f"{path}: not a DICOM Part 10 instance (no {', '.join(missing)})")
    return DicomFile(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(meta.TransferSyntaxUID))


def store(peer: Peer, files: Sequence[DicomFile]) -> list[StoreResult]:
    """C-STORE each file on one association, proposing each file's class in its own syntax.

    One presentation context per (SOP class, transfer syntax) lets the peer
    accept exactly the syntax a file is in, so nothing is converted.
    """
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
    if len(pairs) > 128:
        raise ValueError(
            f"{len(pairs)} SOP class/transfer syntax pairs: at most 128 per association"
        )
    results = []
    with association(peer, [(sop, [ts]) for sop, ts in pairs]) as assoc:
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for number, file in enumerate(files, start=1):
            result = StoreResult(file.path, file.sop_instance_uid)
            results.append(result)
            if (file.sop_class_uid, file.transfer_syntax) not in accepted:
                result.error = (
                    f"{peer} does not accept {UID(file.sop_class_uid).name} "
                    f"in {UID(file.transfer_syntax).name}"
                )
                continue
            try:
                status = assoc.send_c_store(file.path, msg_id=number % 65536)
            except (ValueError, AttributeError) as exc:  # pynetdicom could not read or encode it
                result.error = f"cannot be sent: {exc}"
                continue
            result.status = _answered(status, peer, "C-STORE")
    return results


def find(peer: Peer, identifier: Dataset) -> tuple[list[tuple[Dataset, Dataset]], Dataset]:
    """C-FIND on the DPP model: the pending (status, answer) pairs and the final status."""
    model = DefinedProcedureProtocolInformationModelFind
    pending: list[tuple[Dataset, Dataset]] = []
    with association(peer, [(model, TRANSFER_SYNTAXES)], required=[model]) as assoc:
        final = None
        for status, answer in assoc.send_c_find(identifier, model):
            status = _answered(status, peer, "C-FIND")
            if int(status.Status) in (0xFF00, 0xFF01):
                pending.append((status, answer))
            else:
                final = status
        return pending, _answered(final, peer, "C-FIND")


@dataclass
class RetrieveResult:
    """A C-GET or C-MOVE: its final status, failed UIDs, and (C-GET) the files written."""

    final: Dataset
    failed_uids: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def _retrieve_identifier(uids: Sequence[str]) -> Dataset:
    identifier = Dataset()
    identifier.SOPInstanceUID = list(uids) if len(uids) > 1 else uids[0]
    return identifier


def _final(
    responses: Iterator[tuple[Dataset, Dataset | None]], peer: Peer, service: str
) -> RetrieveResult:
    final = None
    failed: list[str] = []
    for status, identifier in responses:
        status = _answered(status, peer, service)
        if int(status.Status) == 0xFF00:
            continue
        final = status
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            failed = [value] if isinstance(value, str) else [str(v) for v in value]
    return RetrieveResult(_answered(final, peer, service), [uid for uid in failed if uid])


def get(peer: Peer, uids: Sequence[str], folder: Path) -> RetrieveResult:
    """C-GET `uids` into `folder` as ``<SOP Instance UID>.dcm``, bytes as the peer sent them.

    The storage classes are proposed once per transfer syntax with the SCP
    role (PS3.4 C.4.3, SCP/SCU role selection), so the archive can send each
    instance in the syntax it holds it in.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with lock:
            name = uid if is_uid(uid) else f"received-{len(written) + 1:04d}"
            path = folder / f"{name}.dcm"
            path.write_bytes(event.encoded_dataset())
            written.append(path)
        return 0x0000

    model = DefinedProcedureProtocolInformationModelGet
    contexts: list[tuple[str, Sequence[str]]] = [(model, TRANSFER_SYNTAXES)]
    contexts += [(sop, [ts]) for sop in DPP_STORAGE for ts in TRANSFER_SYNTAXES]
    roles = [build_role(sop, scp_role=True) for sop in DPP_STORAGE]
    with association(
        peer, contexts, required=[model], roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]
    ) as assoc:
        result = _final(assoc.send_c_get(_retrieve_identifier(uids), model), peer, "C-GET")
    result.written = written
    return result


def move(peer: Peer, uids: Sequence[str], destination: str) -> RetrieveResult:
    """C-MOVE `uids` to the archive's modality `destination` (an AE title it knows)."""
    model = DefinedProcedureProtocolInformationModelMove
    with association(peer, [(model, TRANSFER_SYNTAXES)], required=[model]) as assoc:
        responses = assoc.send_c_move(_retrieve_identifier(uids), destination, model)
        return _final(responses, peer, "C-MOVE")


class Receiver:
    """A C-MOVE destination: a storage SCP writing DPP instances as ``<UID>.dcm`` files."""

    def __init__(
        self,
        folder: Path,
        *,
        aet: str,
        bind: str,
        port: int,
        on_file: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.folder = folder
        self.received = 0
        self.arrived = threading.Condition()
        self._on_file = on_file
        self._ae = AE(ae_title=aet)
        for sop in DPP_STORAGE:
            self._ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
        self._ae.add_supported_context(Verification, list(TRANSFER_SYNTAXES))
        folder.mkdir(parents=True, exist_ok=True)
        self._server = self._ae.start_server(
            (bind, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.arrived:
            name = uid if is_uid(uid) else f"received-{self.received + 1:04d}"
            path = self.folder / f"{name}.dcm"
            path.write_bytes(event.encoded_dataset())
            self.received += 1
            if self._on_file is not None:
                self._on_file(path, event.assoc.requestor.ae_title)
            self.arrived.notify_all()
        return 0x0000

    def wait(self, count: int | None, timeout: float | None, stop: threading.Event) -> None:
        """Return once `count` instances arrived, `timeout` seconds passed, or `stop` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.arrived:
            while not stop.is_set() and (count is None or self.received < count):
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return
                self.arrived.wait(left)

    def close(self) -> None:
        self._server.shutdown()
