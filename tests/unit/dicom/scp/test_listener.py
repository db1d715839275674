"""The DPP listener on its own: contexts, start, refusal to start, stop."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from orthanc_dpp.app import listener_settings
from orthanc_dpp.config import Settings, parse_settings
from orthanc_dpp.dicom.scp.listener import DppListener, ListenerSettings
from orthanc_dpp.model.sop import DPP_FIND, STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests import dicom_client
from tests.orthanc_server import free_port


def listener(port: int) -> DppListener:
    section = {"Port": port, "BindAddress": "127.0.0.1", "AETitle": "DPP_UNDER_TEST"}
    return DppListener(listener_settings(parse_settings({"DefinedProcedureProtocol": section})), {})


def test_the_listener_settings_are_the_plugins_own_values() -> None:
    """Each field of ListenerSettings is the Settings field of that name, none swapped."""
    names = [field.name for field in dataclasses.fields(ListenerSettings)]
    distinct = {name: number for number, name in enumerate(names, start=1) if name != "tls"}
    settings = dataclasses.replace(Settings(), **distinct)
    built = listener_settings(settings)
    assert {name: getattr(built, name) for name in names} == {
        name: getattr(settings, name) for name in names
    }


#: Run in a fresh interpreter: routing is process-wide, and other tests route it.
ROUTING_CHECK = textwrap.dedent(
    """
    from pynetdicom import evt
    from pynetdicom.service_class import (
        DefinedProcedureProtocolQueryRetrieveServiceClass as DPP,
        ProtocolApprovalQueryRetrieveServiceClass as APPROVAL,
    )

    from orthanc_dpp.dicom.scp import handlers as scp
    from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper
    from orthanc_dpp.app import listener_settings
    from orthanc_dpp.config import parse_settings
    from orthanc_dpp.dicom.scp.get import GetHandler
    from orthanc_dpp.model.index import ProtocolIndex
    from orthanc_dpp.dicom.scp.listener import DppListener
    from orthanc_dpp.dicom.modalities import ModalityRegistry
    from orthanc_dpp.dicom.scp.move import MoveHandler

    def routed():
        names = ("_c_find_scp", "_get_scp", "_move_scp")
        methods = [getattr(c, name) for c in (DPP, APPROVAL) for name in names]
        return [m.__module__ == "orthanc_dpp.dicom.pynetdicom_private" for m in methods]

    gate = Gatekeeper(ModalityRegistry(), AccessPolicy())
    options = scp.FindOptions(max_results=0)
    handlers = {
        evt.EVT_C_ECHO: scp.EchoHandler(gate),
        evt.EVT_C_FIND: scp.FindHandler(ProtocolIndex(), gate, options, is_ready=bool),
        evt.EVT_C_GET: GetHandler(None, gate),
        evt.EVT_C_MOVE: MoveHandler(None, gate),
    }
    print(routed())
    section = {"Port": PORT, "BindAddress": "127.0.0.1", "AETitle": "DPP_UNDER_TEST"}
    settings = listener_settings(parse_settings({"DefinedProcedureProtocol": section}))
    dpp = DppListener(settings, handlers)
    assert dpp.start()
    dpp.stop()
    print(routed())
    """
)


def test_building_handlers_patches_nothing_and_starting_the_listener_routes() -> None:
    """pynetdicom's DPP query/retrieve classes change when a listener starts, not before."""
    script = ROUTING_CHECK.replace("PORT", str(free_port()))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str([False] * 6), str([True] * 6)]


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_started_listener_answers_echo_and_offers_storage() -> None:
    port = free_port()
    dpp = listener(port)
    assert dpp.start() and dpp.status.state == "running"
    try:
        assoc = dicom_client.associate(
            "127.0.0.1",
            port,
            "DPP_UNDER_TEST",
            calling_aet="SCU",
            contexts=[
                Verification,
                *((sop_class, TRANSFER_SYNTAXES[:1]) for sop_class in STORAGE_CLASSES),
                DPP_FIND,  # no handler: not offered
            ],
            transfer_syntaxes=DEFAULT_TRANSFER_SYNTAXES,
        )
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
    finally:
        dpp.stop()
    assert accepted == {Verification, *STORAGE_CLASSES}
    assert dpp.status.state == "stopped" and dpp.status.associations_served == 1
    assert refuses_connections(port)


def test_changed_pynetdicom_internals_keep_the_listener_down(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def other_signature(self: Any, syntax: str) -> None:
        return None

    monkeypatch.setattr(Association, "_get_valid_context", other_signature)
    port = free_port()
    dpp = listener(port)
    with caplog.at_level(logging.ERROR, logger="orthanc_dpp.listener"):
        assert dpp.start() is False
    assert dpp.status.state == "failed"
    assert "Association._get_valid_context" in (dpp.status.error or "")
    assert "DPP listener not started" in caplog.text and "_get_valid_context" in caplog.text
    assert refuses_connections(port)  # not half-working: not listening at all


def test_a_busy_port_is_reported() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dpp = listener(port)
        assert dpp.start() is False
    assert dpp.status.state == "failed" and f"127.0.0.1:{port}" in (dpp.status.error or "")
