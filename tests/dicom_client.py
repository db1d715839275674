"""How the tests and benchmarks request an association: :func:`associate`.

Raw pynetdicom on purpose: a test client must not share the code under test
(the plugin's own requester), or a fault there would hide in both sides.
It borrows only the two event handlers every pynetdicom requester here
needs: TCP_NODELAY (docs/design.md, fact 7) and the steady reactor pause.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, Association, build_role, evt
from pynetdicom.sop_class import Verification

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES

Handler = tuple[Any, Callable[..., Any]]
#: A requested context: an abstract syntax with ``associate``'s transfer syntaxes, or with its own.
Context = str | tuple[str, Sequence[str]]


class AssociationRefused(Exception):
    """The association was not established; ``association`` tells how (rejected, aborted)."""

    def __init__(self, association: Association, how: str, called: str) -> None:
        super().__init__(f"association with {called} {how}")
        self.association = association
        self.how = how


def associate(
    host: str,
    port: int,
    called_aet: str,
    *,
    calling_aet: str,
    contexts: Sequence[Context],
    transfer_syntaxes: Sequence[str] = TRANSFER_SYNTAXES,
    scp_role_for: Sequence[str] = (),
    handlers: Sequence[Handler] = (),
    timeout: float | None = None,
    source: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    nodelay: bool = True,
    steady_pause: bool = True,
    maximum_pdu_size: int | None = None,
) -> Association:
    """An established association with ``called_aet`` at ``host:port``, else AssociationRefused.

    ``contexts`` are requested in order, one presentation context each.
    ``scp_role_for`` lists storage SOP classes also offered with the SCP role
    (a C-GET requester receives the instances on its own association), each
    requested with ``transfer_syntaxes`` unless ``contexts`` already has it.
    ``timeout`` bounds every wait (TCP connect, ACSE, DIMSE, network); None
    keeps pynetdicom's defaults. ``steady_pause`` replaces pynetdicom's own
    reactor pause, which can lose a response under load (see
    tests/unit/dicom/test_pynetdicom_private.py): the requester's race, not the
    listener's.
    """
    ae = AE(ae_title=calling_aet)
    if timeout is not None:
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
    if maximum_pdu_size is not None:
        ae.maximum_pdu_size = maximum_pdu_size
    requested = set()
    for context in contexts:
        sop_class, syntaxes = (
            context if isinstance(context, tuple) else (context, transfer_syntaxes)
        )
        ae.add_requested_context(sop_class, list(syntaxes))
        requested.add(sop_class)
    roles = []
    for sop_class in scp_role_for:
        if sop_class not in requested:
            ae.add_requested_context(sop_class, list(transfer_syntaxes))
        roles.append(build_role(sop_class, scp_role=True))
    on_open: list[Handler] = []
    if nodelay:
        on_open.append((evt.EVT_CONN_OPEN, set_tcp_nodelay))
    if steady_pause:
        on_open.append((evt.EVT_CONN_OPEN, private.steady_reactor_pause))
    assoc = ae.associate(
        host,
        port,
        ae_title=called_aet,
        ext_neg=roles or None,
        bind_address=(source, 0),
        tls_args=(tls, host) if tls is not None else None,
        evt_handlers=[*on_open, *handlers],
    )
    if not assoc.is_established:
        how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise AssociationRefused(assoc, how, f"{called_aet} on {host}:{port}")
    return assoc


def echo(
    port: int,
    called_aet: str,
    *,
    calling_aet: str,
    host: str = "127.0.0.1",
    timeout: float | None = None,
    source: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
) -> int:
    """The status of one C-ECHO on a new association, released after; refusals raise."""
    assoc = associate(
        host,
        port,
        called_aet,
        calling_aet=calling_aet,
        contexts=[Verification],
        transfer_syntaxes=DEFAULT_TRANSFER_SYNTAXES,
        timeout=timeout,
        source=source,
        tls=tls,
    )
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
