"""The benchmark's DICOM clients: one C-FIND, C-GET or C-MOVE, timed from the SCU's side.

The same functions talk to the plugin's listener, to Orthanc's own DICOM port
and to the baseline SCP, so whatever the client costs (pynetdicom decoding
each response, say) is paid equally by every side of a comparison. Every
association sets TCP_NODELAY (docs/design.md, fact 7): without it a pynetdicom
peer waits on delayed ACKs and the benchmark would measure the kernel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pynetdicom import Association, evt

from tests import dicom_client

SCU_AET = "BENCH_SCU"
#: Longest silence tolerated inside one operation: a hung peer fails the run, not the machine.
DIMSE_TIMEOUT = 300.0

PENDING = (0xFF00, 0xFF01)


class DimseError(RuntimeError):
    """An association or an operation failed: the benchmark reports it instead of a figure."""


def connect(
    port: int,
    called_aet: str,
    contexts: Iterable[str],
    *,
    scp_role_for: Iterable[str] = (),
    handlers: Sequence[dicom_client.Handler] = (),
) -> Association:
    """An established association on 127.0.0.1:`port`, or :class:`DimseError`.

    `scp_role_for` lists storage SOP classes offered with the SCP role
    (SCP/SCU Role Selection), which a C-GET requester needs to receive the
    instances on its own association.
    """
    try:
        return dicom_client.associate(
            "127.0.0.1",
            port,
            called_aet,
            calling_aet=SCU_AET,
            contexts=list(contexts),
            scp_role_for=list(scp_role_for),
            handlers=handlers,
            timeout=DIMSE_TIMEOUT,
            steady_pause=False,
            maximum_pdu_size=0,  # receive whatever the peer sends
        )
    except dicom_client.AssociationRefused:
        raise DimseError(f"association with {called_aet} on port {port} was not accepted") from None


def accepted(port: int, called_aet: str, sop_classes: Iterable[str]) -> set[str]:
    """Which of `sop_classes` the peer accepts (an association just to ask)."""
    try:
        assoc = connect(port, called_aet, list(sop_classes))
    except DimseError:
        return set()
    try:
        return {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()


@dataclass
class FindResult:
    seconds: float
    matches: int
    status: int


def find(assoc: Association, model: str, identifier: Dataset) -> FindResult:
    """One C-FIND to its end: every pending response counted, the final status kept."""
    started = time.perf_counter()
    matches = 0
    final = -1
    for status, _identifier in assoc.send_c_find(identifier, model):
        if not status:
            raise DimseError("C-FIND: connection lost or timed out")
        code = int(status.Status)
        if code in PENDING:
            matches += 1
        else:
            final = code
    return FindResult(time.perf_counter() - started, matches, final)


@dataclass
class RetrieveResult:
    seconds: float
    completed: int
    failed: int
    warning: int
    status: int
    received: int = 0  # instances seen by the receiving side
    received_bytes: int = 0


def _counts(status: Dataset) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        int(getattr(status, f"NumberOf{kind}Suboperations", 0) or 0)
        for kind in ("Completed", "Failed", "Warning")
    )


def _until_final(
    name: str, assoc: Association, send: Callable[[], Iterable[tuple[Dataset, Any]]]
) -> tuple[float, Dataset]:
    """Seconds from sending a C-GET/C-MOVE to its final response, and that response.

    Releases ``assoc`` afterwards; raises :class:`DimseError` when the
    connection drops or no final response comes.
    """
    try:
        started = time.perf_counter()
        final: Dataset | None = None
        for status, _identifier in send():
            if not status:
                raise DimseError(f"{name}: connection lost or timed out")
            if int(status.Status) not in PENDING:
                final = status
        seconds = time.perf_counter() - started
    finally:
        assoc.release()
    if final is None:
        raise DimseError(f"{name}: no final response")
    return seconds, final


class Receiver:
    """C-STORE handler for a C-GET requester: counts instances and bytes, keeps nothing."""

    def __init__(self) -> None:
        self.instances = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def __call__(self, event: evt.Event) -> int:
        size = len(event.request.DataSet.getvalue())  # the encoded dataset, never decoded
        with self._lock:
            self.instances += 1
            self.bytes += size
        return 0x0000


def get(
    port: int, called_aet: str, model: str, identifier: Dataset, storage_classes: Iterable[str]
) -> RetrieveResult:
    """One C-GET on a fresh association (what a modality does), timed to the final response."""
    receiver = Receiver()
    assoc = connect(
        port,
        called_aet,
        [model],
        scp_role_for=storage_classes,
        handlers=[(evt.EVT_C_STORE, receiver)],
    )
    seconds, final = _until_final("C-GET", assoc, lambda: assoc.send_c_get(identifier, model))
    completed, failed, warning = _counts(final)
    return RetrieveResult(
        seconds,
        completed,
        failed,
        warning,
        int(final.Status),
        receiver.instances,
        receiver.bytes,
    )


def move(
    port: int, called_aet: str, model: str, identifier: Dataset, destination: str
) -> RetrieveResult:
    """One C-MOVE on a fresh association, timed to the final response (all sub-operations done)."""
    assoc = connect(port, called_aet, [model])
    seconds, final = _until_final(
        "C-MOVE", assoc, lambda: assoc.send_c_move(identifier, destination, model)
    )
    completed, failed, warning = _counts(final)
    return RetrieveResult(seconds, completed, failed, warning, int(final.Status))
