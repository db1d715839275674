"""The plugin's one process-wide change to pynetdicom: its DPP requests go to the plugin's handlers.

pynetdicom answers C-FIND, C-GET and C-MOVE with loops of its own that call
the bound handler as a generator. The listener needs its own loops instead:
C-FIND sends cached encoded responses in batches (:meth:`FindHandler.serve`),
and C-GET/C-MOVE run their sub-operations as PS3.4 asks, which pynetdicom's
loop cannot (see :mod:`orthanc_dpp.dicom.scp.retrieve`). :func:`route_dpp_services`
routes the Defined Procedure Protocol and Protocol Approval query/retrieve
service classes, and only those, to :meth:`serve` when the handler bound to
the association is the plugin's; any other handler keeps pynetdicom's
behaviour, so nothing else in the process changes.

It is called by :meth:`DppListener.start`, after the start-up check that the
replaced methods still exist (:mod:`pynetdicom_private`): building handlers
patches nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_GET
from pynetdicom.presentation import PresentationContext

from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.scp.handlers import FindHandler
from orthanc_dpp.dicom.scp.retrieve import RetrieveHandler


def route_dpp_services() -> None:
    """Route DPP C-FIND, C-GET and C-MOVE requests to bound plugin handlers. Idempotent."""
    private.route_find(_serve_find)
    private.route_retrieve(_serve_retrieve)


def _serve_find(
    service: Any, req: Any, context: PresentationContext, stock: Callable[..., None]
) -> None:
    bound = service.assoc.get_handlers(evt.EVT_C_FIND)
    handler = bound[0] if isinstance(bound, tuple) else None
    if isinstance(handler, FindHandler):
        handler.serve(service, req, context)
    else:
        stock(req, context)


def _serve_retrieve(
    service: Any, req: Any, context: PresentationContext, stock: Callable[..., None]
) -> None:
    event = evt.EVT_C_GET if isinstance(req, C_GET) else evt.EVT_C_MOVE
    bound = service.assoc.get_handlers(event)
    handler = bound[0] if isinstance(bound, tuple) else None
    if isinstance(handler, RetrieveHandler):
        handler.serve(service, req, context)
    else:
        stock(req, context)
