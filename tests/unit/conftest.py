"""Fixtures shared by unit test modules (plain helpers live in tests/*.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pynetdicom import AE, evt

from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper
from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.dicom.modalities import ModalityRegistry
from orthanc_dpp.dicom.scp.get import GetHandler
from orthanc_dpp.dicom.scp.move import MoveHandler
from orthanc_dpp.dicom.scp.routing import route_dpp_services
from orthanc_dpp.model import sop
from orthanc_dpp.model.record_cache import RecordCache
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES
from tests.fake_orthanc_module import VERSIONS
from tests.orthanc_server import free_port
from tests.scp_harness import DPP_CLASSES, SCP_AET, Harness, MemorySource


@pytest.fixture
def restore_loggers():
    """install() sends our loggers to Orthanc only; give them back to pytest after.

    Not autouse: the modules that install the plugin take it with
    ``pytestmark = pytest.mark.usefixtures("restore_loggers")``.
    """
    import logging

    saved = {}
    for name in ("orthanc_dpp", "pynetdicom"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level


def configuration(**section: object) -> dict:
    return {
        "DefinedProcedureProtocol": {
            "AETitle": "DPP_UNIT",
            "Port": free_port(),
            "BindAddress": "127.0.0.1",
            "ChangePollInterval": 0.1,
            **section,
        }
    }


@pytest.fixture
def make_configuration() -> Callable[..., dict]:
    """An Orthanc configuration whose DefinedProcedureProtocol section listens on a free
    loopback port; keyword arguments add or replace keys of that section."""
    return configuration


@pytest.fixture(params=VERSIONS)
def version(request) -> str:
    """Every test that takes it runs against each recorded plugin version."""
    return request.param


@pytest.fixture
def routed() -> None:
    """pynetdicom's DPP C-FIND, C-GET and C-MOVE routed to the plugin's handlers, as
    ``DppListener.start`` does, for tests that serve handlers from a plain AE."""
    route_dpp_services()


@pytest.fixture
def harness(routed: None) -> Iterator[Harness]:
    """The C-GET/C-MOVE SCP under test on a free loopback port, serving an empty
    MemorySource; shut down after the test."""
    source = MemorySource({})
    registry = ModalityRegistry()
    gate = Gatekeeper(registry, AccessPolicy())
    handlers = {
        evt.EVT_C_GET: GetHandler(source, gate),
        evt.EVT_C_MOVE: MoveHandler(source, gate),
    }
    ae = AE(ae_title=SCP_AET)
    ae.add_supported_context(sop.DPP_GET, TRANSFER_SYNTAXES)
    ae.add_supported_context(sop.DPP_MOVE, TRANSFER_SYNTAXES)
    for sop_class in DPP_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay), *handlers.items()],
    )
    h = Harness(source, registry, port, server, handlers)
    h.set_modalities({})
    try:
        yield h
    finally:
        server.shutdown()


@pytest.fixture
def records() -> RecordCache:
    """A record cache of the test's own: records compared with each other must share one."""
    return RecordCache()
