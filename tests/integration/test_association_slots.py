"""Strangers cannot take the association slots that declared modalities need.

Strangers (AE titles not in ``DicomModalities``) hold every association and
every connection they can get, from several loopback addresses, and keep
their associations busy with a C-ECHO now and then; a declared modality is
still served at once. Every refusal for capacity is an A-ASSOCIATE-RJ
"rejected-transient", source "service-provider (presentation)", reason
"local-limit-exceeded" (PS3.8 9.3.4), so that a modality retries; refusals
for lack of rights are permanent.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from pynetdicom import Association
from pynetdicom.sop_class import (
    DefinedProcedureProtocolInformationModelFind as DPP_FIND,
)
from pynetdicom.sop_class import Verification

from dpp_tools.samples import make_library
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES
from tests import dicom_client
from tests.hostile import admission_limited
from tests.orthanc_server import OrthancServer
from tests.peers import echo_works, find_identifier
from tests.waiting import eventually

MAXIMUM_ASSOCIATIONS = 6
PER_ADDRESS = 3
STRANGER_SHARE = 2  # UnknownCallersMaximumAssociations, default
PROTOCOLS = 5
#: Hosts the strangers call from (127.0.0.1 is the declared modality's).
STRANGER_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
#: A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local-limit-exceeded.
LOCAL_LIMIT = (0x02, 0x03, 0x02)
#: rejected-permanent, service-user, calling-AE-title-not-recognized.
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
#: rejected-permanent, service-user, called-AE-title-not-recognized.
CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with admission_limited(
        tmp_path_factory.mktemp("slots"),
        make_library(PROTOCOLS, seed=7300),
        maximum_associations=MAXIMUM_ASSOCIATIONS,
        per_address=PER_ADDRESS,
        # Long, so that only the listener's admission rules free a slot.
        acse_timeout=120,
        network_timeout=120,
    ) as server:
        yield server


def request(
    orthanc: OrthancServer,
    ae_title: str,
    source: str,
    contexts: list[str] | None = None,
    called: str | None = None,
) -> Association:
    """An association request from ``source``: established, rejected or aborted."""
    try:
        return dicom_client.associate(
            "127.0.0.1",
            orthanc.dpp_port,
            called or orthanc.aet,
            calling_aet=ae_title,
            contexts=contexts or [Verification],
            transfer_syntaxes=TRANSFER_SYNTAXES,
            timeout=20,
            source=source,
        )
    except dicom_client.AssociationRefused as refused:
        return refused.association


def rejection(assoc: Association) -> tuple[int | None, int | None, int | None]:
    """Result, source and reason of the A-ASSOCIATE-RJ the requestor received."""
    assert assoc.is_rejected, "the association was not rejected with an A-ASSOCIATE-RJ"
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


@contextlib.contextmanager
def kept_alive(associations: list[Association]) -> Iterator[None]:
    """A C-ECHO on every association every half second while the block runs (at most 2 min)."""
    stop = threading.Event()

    def echo() -> None:
        deadline = time.monotonic() + 120
        while not stop.wait(0.5) and time.monotonic() < deadline:
            for assoc in associations:
                if assoc.is_established:
                    assoc.send_c_echo()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        for assoc in associations:
            if assoc.is_established:
                assoc.release()


def declared_modality_is_served(orthanc: OrthancServer) -> None:
    """TEST_SCU (declared) gets its C-ECHO and a C-FIND of the whole library answered."""
    assoc = request(orthanc, "TEST_SCU", "127.0.0.1", [Verification, DPP_FIND])
    assert assoc.is_established, "the declared modality was refused"
    try:
        assert assoc.send_c_echo().Status == 0x0000
        responses = [
            int(status.Status)
            for status, _ in assoc.send_c_find(find_identifier(), DPP_FIND)
            if status is not None
        ]
        assert responses == [0xFF00] * PROTOCOLS + [0x0000]
    finally:
        assoc.release()


def test_strangers_holding_every_association_do_not_lock_out_a_declared_modality(
    orthanc: OrthancServer,
) -> None:
    attempts = [
        request(orthanc, f"STRANGER{n}", host)
        for host in STRANGER_HOSTS
        for n in range(PER_ADDRESS)
    ]
    held = [a for a in attempts if a.is_established]
    with kept_alive(held):
        declared_modality_is_served(orthanc)
        # The strangers got their share and not more; the others were told
        # to try again later.
        assert len(held) == STRANGER_SHARE
        refused = [a for a in attempts if not a.is_established]
        assert refused and all(rejection(a) == LOCAL_LIMIT for a in refused)
        assert orthanc.wait_for_log("(UnknownCallersMaximumAssociations 2)")
        # Still served while they keep echoing.
        declared_modality_is_served(orthanc)


def test_silent_connections_from_strangers_do_not_lock_out_a_declared_modality(
    orthanc: OrthancServer,
) -> None:
    # Every connection the listener accepts, from four hosts, and silence:
    # no A-ASSOCIATE-RQ within the (long) AcseTimeout.
    silent = [
        socket.create_connection(("127.0.0.1", orthanc.dpp_port), 5, (host, 0))
        for host in STRANGER_HOSTS
        for _ in range(PER_ADDRESS)
    ]
    try:
        # Waiting connections make room for a newcomer once they have
        # waited a moment; the declared modality gets in well before
        # AcseTimeout (120 s) would have freed a slot.
        assert eventually(lambda: echo_works(orthanc, timeout=20), 30)
        declared_modality_is_served(orthanc)
        assert orthanc.wait_for_log("to make room for a new connection")
    finally:
        for sock in silent:
            sock.close()


def test_capacity_refusals_are_transient_local_limit_exceeded(orthanc: OrthancServer) -> None:
    held: list[Association] = []
    before = orthanc.plugin_metrics()
    try:
        # The address limit, checked before the association is read.
        for _ in range(PER_ADDRESS):
            held.append(request(orthanc, "TEST_SCU", "127.0.0.1"))
        assert all(a.is_established for a in held)
        assert rejection(request(orthanc, "TEST_SCU", "127.0.0.1")) == LOCAL_LIMIT
        # DCMTK reads the same rejection (it cannot choose its source address).
        echoscu = subprocess.run(
            ["echoscu", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dpp_port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = echoscu.stdout + echoscu.stderr
        assert echoscu.returncode != 0
        assert "Result: Rejected Transient, Source: Service Provider (Presentation" in said
        assert "Reason: Local Limit Exceeded" in said
        # MaximumAssociations, for declared modalities too.
        for _ in range(MAXIMUM_ASSOCIATIONS - PER_ADDRESS):
            held.append(request(orthanc, "TEST_SCU", "127.0.0.7"))
        assert all(a.is_established for a in held)
        assert rejection(request(orthanc, "TEST_SCU", "127.0.0.8")) == LOCAL_LIMIT
        # Counted: two connections over the address limit, one request over the total.
        assert eventually(
            lambda: (
                moved(orthanc, before, "connections_refused_total") >= 2
                and moved(orthanc, before, "association_requests_busy_total") >= 1
            ),
            10,
        )
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
    assert eventually(lambda: echo_works(orthanc, source="127.0.0.8", timeout=20), 20)


def moved(orthanc: OrthancServer, before: dict[str, float], name: str) -> float:
    """How much the plugin's metric ``orthanc_dpp_<name>`` grew since ``before``."""
    key = "orthanc_dpp_" + name
    return orthanc.plugin_metrics()[key] - before[key]


def test_callers_without_any_right_are_rejected_permanently(make_server) -> None:
    orthanc = make_server(dpp={"UnknownCallers": [], "CheckCalledAETitle": True})
    orthanc.start()
    stranger = request(orthanc, "STRANGER", "127.0.0.1")
    assert rejection(stranger) == CALLING_AE_NOT_RECOGNIZED
    assert orthanc.wait_for_log("Rejected 1 association request(s) from 127.0.0.1: STRANGER: ")
    started = dict.fromkeys(orthanc.plugin_metrics(), 0.0)  # a fresh server: all from 0
    assert eventually(lambda: moved(orthanc, started, "association_requests_rejected_total"), 10)
    assert moved(orthanc, started, "association_requests_rejected_total") == 1
    assert moved(orthanc, started, "association_requests_busy_total") == 0
    wrong_called = request(orthanc, "TEST_SCU", "127.0.0.1", called="NOT_ORTHANC")
    assert rejection(wrong_called) == CALLED_AE_NOT_RECOGNIZED
    assoc = request(orthanc, "TEST_SCU", "127.0.0.1")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
