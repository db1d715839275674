"""Requesting an association with another node: the one way the plugin does it.

The plugin calls other nodes as an SCU (:mod:`orthanc_dpp.dicom.scu.query` and
:mod:`orthanc_dpp.dicom.scu.retrieve`: C-FIND, C-GET and C-MOVE on another DPP
archive) and as the sender of C-MOVE sub-operations
(:mod:`orthanc_dpp.dicom.scp.retrieve`). Both go through :func:`request_association`,
which holds the rules every outbound association follows:

- Orthanc's ``LocalAet`` and ``Timeout`` of the modality win: pynetdicom
  keeps both per AE, so a modality with either is called from an AE of its
  own;
- the other node is a peer like any caller of the listener: the listener's
  socket timeouts, PDU size and dataset size apply
  (:func:`orthanc_dpp.dicom.connections.requester_guard`);
- the reactor of the association is made pausable once connected
  (:func:`orthanc_dpp.dicom.pynetdicom_private.steady_reactor_pause`);
- ``UseDicomTls`` needs the plugin's DICOM TLS client context;
- a failure is classified once, as a :class:`Refusal`, and each caller
  words it as it always has (its own table of texts, since those texts are
  in logs, Error Comments and REST answers).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pynetdicom import AE, Association, evt
from pynetdicom.presentation import PresentationContext

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.connections import ConnectionGuard, requester_guard
from orthanc_dpp.dicom.modalities import Modality
from orthanc_dpp.storage.decoding import DatasetLimits

#: An ``evt_handlers`` entry: (event, handler).
Handler = tuple[Any, Callable[..., Any]]


@dataclass(frozen=True)
class Calling:
    """How this plugin calls another node: its AE title, timeouts, PDU size, TLS and limits.

    A modality's ``LocalAet`` and ``Timeout`` win, as in Orthanc.
    """

    ae_title: str
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    maximum_pdu_size: int = 16382
    tls_context: ssl.SSLContext | None = None
    limits: DatasetLimits = field(default_factory=DatasetLimits)

    @classmethod
    def like(cls, ae: AE, tls_context: ssl.SSLContext | None, limits: DatasetLimits) -> Calling:
        """Calling as ``ae`` (the listener's) does; pynetdicom's defaults for unset timeouts."""
        return cls(
            ae.ae_title,
            ae.acse_timeout or 30.0,
            ae.dimse_timeout or 30.0,
            ae.network_timeout or 60.0,
            ae.maximum_pdu_size,
            tls_context,
            limits,
        )


@dataclass(frozen=True)
class AssociationRequest:
    """What to ask ``peer`` for.

    ``roles`` are SCP/SCU role selection items, ``handlers`` extra
    ``evt_handlers`` bound after the guard's. With ``required``, an
    association that does not accept that abstract syntax is released and
    refused (:attr:`Refusal.NOT_ACCEPTED`). With ``ae``, the association is
    requested from that AE (pynetdicom then counts it with that AE's
    associations) unless the peer's ``LocalAet`` or ``Timeout`` needs an AE
    of its own. ``guard`` defaults to :func:`guard_for`; pass one to read its
    refusal after the association is established.
    """

    peer: Modality
    contexts: Sequence[PresentationContext]
    roles: Sequence[Any] = ()
    handlers: Sequence[Handler] = ()
    required: str | None = None
    ae: AE | None = None
    guard: ConnectionGuard | None = None


class Refusal(StrEnum):
    """Why no association could be had (each caller words it its own way)."""

    #: ``UseDicomTls`` is set, but the plugin has no DICOM TLS client context; nothing was sent.
    NO_TLS_SETUP = "no TLS setup"
    #: pynetdicom raised while requesting (``detail``: its message).
    CANNOT_REQUEST = "cannot request"
    #: No TCP connection: refused, unreachable or timed out.
    NOT_CONNECTED = "not connected"
    #: The peer answered A-ASSOCIATE-RJ.
    REJECTED = "rejected"
    #: The listener's limits aborted it (``detail``: the guard's reason).
    GUARD_ABORTED = "guard aborted"
    #: The peer accepted none of the proposed presentation contexts.
    NO_CONTEXT = "no context"
    #: Aborted otherwise: a TLS or protocol problem, or the peer went away.
    ABORTED = "aborted"
    #: Established, but the ``required`` abstract syntax was not accepted (``detail``: its UID).
    NOT_ACCEPTED = "not accepted"


class AssociationFailed(Exception):
    """No association: ``refusal`` says why, ``detail`` what the words of some refusals name."""

    def __init__(self, refusal: Refusal, detail: str = "") -> None:
        super().__init__(f"{refusal}: {detail}" if detail else str(refusal))
        self.refusal = refusal
        self.detail = detail

    def worded(self, words: Mapping[Refusal, str], detail: str | None = None) -> str:
        """The caller's text for this refusal: ``words[refusal]`` with ``{detail}`` filled in
        (``detail`` if given, else :attr:`detail`)."""
        return words[self.refusal].format(detail=self.detail if detail is None else detail)


def guard_for(calling: Calling, peer: Modality) -> ConnectionGuard:
    """The limits of the listener for one association with ``peer``."""
    return requester_guard(
        peer.timeout or calling.acse_timeout,
        peer.timeout or calling.network_timeout,
        calling.maximum_pdu_size,
        calling.limits.maximum_size,
    )


def _requesting_ae(calling: Calling, request: AssociationRequest) -> AE:
    peer = request.peer
    if request.ae is not None and not (peer.local_aet or peer.timeout):
        return request.ae
    # Orthanc calls a modality as LocalAet with its own Timeout; both are
    # per-AE settings in pynetdicom, so use a dedicated AE.
    ae = AE(ae_title=peer.local_aet or calling.ae_title)
    ae.acse_timeout = peer.timeout or calling.acse_timeout
    ae.dimse_timeout = peer.timeout or calling.dimse_timeout
    ae.network_timeout = peer.timeout or calling.network_timeout
    ae.maximum_pdu_size = calling.maximum_pdu_size
    return ae


def request_association(calling: Calling, request: AssociationRequest) -> Association:
    """An established association with ``request.peer``; raises :class:`AssociationFailed`."""
    peer = request.peer
    tls_args = None
    if peer.use_dicom_tls:
        if calling.tls_context is None:
            raise AssociationFailed(Refusal.NO_TLS_SETUP)
        tls_args = (calling.tls_context, peer.host)
    ae = _requesting_ae(calling, request)
    guard = request.guard or guard_for(calling, peer)
    connected: list[bool] = []
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            contexts=list(request.contexts),
            ae_title=peer.aet,
            ext_neg=list(request.roles) or None,
            tls_args=tls_args,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, lambda event: connected.append(True)),
                (evt.EVT_CONN_OPEN, private.steady_reactor_pause),
                *guard.handlers(),
                *request.handlers,
            ],
        )
    except Exception as exc:
        raise AssociationFailed(Refusal.CANNOT_REQUEST, str(exc)) from exc
    if not assoc.is_established:
        if not connected:
            raise AssociationFailed(Refusal.NOT_CONNECTED)
        if assoc.is_rejected:
            raise AssociationFailed(Refusal.REJECTED)
        if guard.refusal:
            raise AssociationFailed(Refusal.GUARD_ABORTED, guard.refusal)
        if not assoc.accepted_contexts and assoc.rejected_contexts:
            raise AssociationFailed(Refusal.NO_CONTEXT)
        raise AssociationFailed(Refusal.ABORTED)
    required = request.required
    if required is not None and not any(
        c.abstract_syntax == required for c in assoc.accepted_contexts
    ):
        assoc.release()
        raise AssociationFailed(Refusal.NOT_ACCEPTED, required)
    return assoc
