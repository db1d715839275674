"""One way to request an association (orthanc_dpp.dicom.outbound),
against pynetdicom peers on loopback.

Two things are pinned here: how a failure is classified (a :class:`Refusal`,
with real peers that fail each way), and the exact text each caller makes of
each refusal: the SCU side (``scu_answers``: REST "Error", job errors) and the
C-MOVE sub-association (``retrieve``: Error Comment and log line). Those
texts were written separately before the two callers shared this module, and
logs and statuses must not change.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import Verification

from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper
from orthanc_dpp.dicom.modalities import Modality, ModalityRegistry
from orthanc_dpp.dicom.outbound import (
    AssociationFailed,
    AssociationRequest,
    Calling,
    Refusal,
    guard_for,
    request_association,
)
from orthanc_dpp.dicom.scp.move import MOVE_WORDS, MoveHandler
from orthanc_dpp.dicom.scu import answers
from orthanc_dpp.dicom.scu import association as scu_association
from orthanc_dpp.dicom.scu.answers import SCU_WORDS, RemoteError
from orthanc_dpp.model.sop import DPP_FIND, DPP_GET, DPP_STORAGE_CLASSES
from orthanc_dpp.storage.decoding import DatasetLimits
from tests.bare_archive import StallingPeer
from tests.orthanc_server import free_port

CALLING = Calling("DPP_OUT_UNIT", acse_timeout=5, dimse_timeout=5, network_timeout=5)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: Every refusal with a detail as request_association gives it, and the texts of both callers.
TEXTS: list[tuple[Refusal, str, str, str]] = [
    (
        Refusal.NO_TLS_SETUP,
        "",
        "UseDicomTls is set but the plugin has no DICOM TLS client setup "
        "(DicomTlsEnabled and its certificate files)",
        "UseDicomTls is set but the plugin has no DICOM TLS client setup",
    ),
    (
        Refusal.CANNOT_REQUEST,
        "At least one requested presentation context is required",
        "cannot request an association: At least one requested presentation context is required",
        "cannot request an association: At least one requested presentation context is required",
    ),
    (
        Refusal.NOT_CONNECTED,
        "",
        "cannot connect (refused or timed out)",
        "cannot connect (refused or timed out)",
    ),
    (
        Refusal.REJECTED,
        "",
        "association rejected (is this plugin's AE title declared there?)",
        "association rejected",
    ),
    (
        Refusal.GUARD_ABORTED,
        "a {PDU} of 9 bytes",  # braces in a detail are text, not a format field
        "association aborted: a {PDU} of 9 bytes",
        "association aborted: a {PDU} of 9 bytes",
    ),
    (
        Refusal.NO_CONTEXT,
        "",
        "association aborted (TLS or protocol problem?)",
        "none of the storage contexts accepted",
    ),
    (
        Refusal.ABORTED,
        "",
        "association aborted (TLS or protocol problem?)",
        "association aborted",
    ),
    (
        Refusal.NOT_ACCEPTED,
        DPP_GET,
        "does not accept DPP Get",
        "none of the storage contexts accepted",  # moves require no context
    ),
]


def test_every_refusal_has_a_text_for_each_caller() -> None:
    assert {row[0] for row in TEXTS} == set(Refusal)
    assert set(SCU_WORDS) == set(MOVE_WORDS) == set(Refusal)


@pytest.mark.parametrize(("refusal", "detail", "scu", "move"), TEXTS)
def test_each_caller_words_each_refusal_as_before(
    refusal: Refusal, detail: str, scu: str, move: str
) -> None:
    failed = AssociationFailed(refusal, detail)
    modality = Modality("far", "FAR", "10.0.0.9", 104)
    assert answers.refusal_reason(modality, failed) == f"far (FAR@10.0.0.9:104): {scu}"
    assert failed.worded(MOVE_WORDS) == move


# -- peers that fail each way ------------------------------------------------------------


@contextmanager
def pynetdicom_peer(
    *sop_classes: str, require_calling_aet: list[str] | None = None, scp_role: bool = False
) -> Iterator[Modality]:
    """A pynetdicom AE on loopback accepting ``sop_classes`` (the storage ones in the SCP role
    with ``scp_role``, as a C-GET's requester would ask)."""
    ae = AE(ae_title="PEER")
    for sop_class in sop_classes:
        if scp_role:
            ae.add_supported_context(sop_class, scu_role=False, scp_role=True)
        else:
            ae.add_supported_context(sop_class)
    if require_calling_aet:
        ae.require_calling_aet = require_calling_aet
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield Modality("peer", "PEER", "127.0.0.1", port)
    finally:
        server.shutdown()


@contextmanager
def closing_peer() -> Iterator[Modality]:
    """Reads the A-ASSOCIATE-RQ and closes the connection without a word."""
    listening = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        client, _ = listening.accept()
        with client:
            client.settimeout(10)
            client.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Modality("closing", "CLOSING", "127.0.0.1", listening.getsockname()[1])
    finally:
        listening.close()
        thread.join(10)


@contextmanager
def stalling_peer() -> Iterator[Modality]:
    """Announces a PDU larger than the listener's MaximumPduSize: the guard aborts."""
    with StallingPeer(1 << 30) as stalling:
        yield Modality("huge", "HUGE", "127.0.0.1", stalling.port)


@contextmanager
def nobody() -> Iterator[Modality]:
    yield Modality("gone", "GONE", "127.0.0.1", free_port())


@contextmanager
def tls_modality() -> Iterator[Modality]:
    yield Modality("tls", "TLS", "127.0.0.1", free_port(), use_dicom_tls=True)


def failure(request: AssociationRequest) -> AssociationFailed:
    with pytest.raises(AssociationFailed) as caught:
        request_association(CALLING, request)
    return caught.value


def find_request(peer: Modality, **options: Any) -> AssociationRequest:
    return AssociationRequest(peer, [build_context(DPP_FIND)], required=DPP_FIND, **options)


def test_tls_without_a_client_setup_is_refused_before_connecting() -> None:
    with tls_modality() as peer:
        assert failure(find_request(peer)).refusal is Refusal.NO_TLS_SETUP


def test_nothing_to_request_is_cannot_request_with_pynetdicoms_reason() -> None:
    with nobody() as peer:
        failed = failure(AssociationRequest(peer, []))
    assert failed.refusal is Refusal.CANNOT_REQUEST
    assert "presentation context" in failed.detail


def test_no_listener_is_not_connected() -> None:
    with nobody() as peer:
        assert failure(find_request(peer)).refusal is Refusal.NOT_CONNECTED


def test_an_a_associate_rj_is_rejected() -> None:
    with pynetdicom_peer(DPP_FIND, require_calling_aet=["SOMEONE_ELSE"]) as peer:
        assert failure(find_request(peer)).refusal is Refusal.REJECTED


def test_the_listeners_limits_abort_with_the_guards_reason() -> None:
    with stalling_peer() as peer:
        guard = guard_for(CALLING, peer)
        failed = failure(find_request(peer, guard=guard))
    assert failed.refusal is Refusal.GUARD_ABORTED
    assert failed.detail == guard.refusal
    assert "PDU of type 0x02" in failed.detail and "MaximumPduSize" in failed.detail


def test_no_accepted_context_is_no_context() -> None:
    with pynetdicom_peer(Verification) as peer:
        assert failure(find_request(peer)).refusal is Refusal.NO_CONTEXT


def test_a_peer_that_hangs_up_is_aborted() -> None:
    with closing_peer() as peer:
        failed = failure(find_request(peer))
    assert (failed.refusal, failed.detail) == (Refusal.ABORTED, "")


def test_a_required_context_not_accepted_is_released_and_refused() -> None:
    released: list[bool] = []
    with pynetdicom_peer(Verification) as peer:
        request = AssociationRequest(
            peer,
            [build_context(Verification), build_context(CT_IMAGE_STORAGE)],
            handlers=[(evt.EVT_RELEASED, lambda event: released.append(True))],
            required=CT_IMAGE_STORAGE,
        )
        failed = failure(request)
    assert (failed.refusal, failed.detail) == (Refusal.NOT_ACCEPTED, CT_IMAGE_STORAGE)
    assert released == [True]


# -- what an association is requested as -------------------------------------------------


def test_a_fresh_ae_with_the_calling_settings() -> None:
    with pynetdicom_peer(DPP_FIND) as peer:
        assoc = request_association(CALLING, find_request(peer))
        try:
            assert assoc.is_established
            assert assoc.requestor.ae_title == "DPP_OUT_UNIT"
            assert (assoc.acse_timeout, assoc.dimse_timeout, assoc.network_timeout) == (5, 5, 5)
        finally:
            assoc.release()


def test_the_given_ae_is_used_unless_local_aet_or_timeout_need_one_of_their_own() -> None:
    listener = AE(ae_title="LISTENER")
    listener.acse_timeout, listener.dimse_timeout, listener.network_timeout = 7, 8, 9
    calling = Calling.like(listener, None, DatasetLimits())
    assert (calling.ae_title, calling.acse_timeout, calling.network_timeout) == ("LISTENER", 7, 9)
    with pynetdicom_peer(DPP_FIND) as peer:
        plain = request_association(calling, find_request(peer, ae=listener))
        plain.release()
        assert plain.ae is listener and plain.requestor.ae_title == "LISTENER"
        local = Modality(peer.name, peer.aet, peer.host, peer.port, local_aet="SITE_A")
        named = request_association(calling, find_request(local, ae=listener))
        named.release()
        assert named.ae is not listener and named.requestor.ae_title == "SITE_A"
        assert (named.ae.acse_timeout, named.ae.dimse_timeout) == (7, 8)
        slow = Modality(peer.name, peer.aet, peer.host, peer.port, timeout=3)
        timed = request_association(calling, find_request(slow, ae=listener))
        timed.release()
        assert timed.ae is not listener and timed.requestor.ae_title == "LISTENER"
        assert (timed.ae.acse_timeout, timed.ae.dimse_timeout, timed.ae.network_timeout) == (
            3,
            3,
            3,
        )


# -- the callers' texts, from real failures ----------------------------------------------


def scu_reason(peer: Modality, sop_class: str = DPP_FIND) -> str:
    with pytest.raises(RemoteError) as caught:
        scu_association.open_association(CALLING, peer, sop_class, storage=sop_class == DPP_GET)
    return caught.value.reason


def move_reason(peer: Modality) -> str:
    gate = Gatekeeper(ModalityRegistry(), AccessPolicy())
    handler = MoveHandler(None, gate)  # type: ignore[arg-type]
    service = SimpleNamespace(ae=AE(ae_title="DPP_LISTENER"))
    store, why = handler._associate(service, peer, frozenset(DPP_STORAGE_CLASSES))  # type: ignore[arg-type]
    assert store is None
    return why


def test_both_callers_word_real_failures_as_before() -> None:
    with tls_modality() as peer:
        assert scu_reason(peer) == f"{peer.describe()}: " + TEXTS[0][2]
        assert move_reason(peer) == TEXTS[0][3]
    with nobody() as peer:
        assert scu_reason(peer) == f"{peer.describe()}: cannot connect (refused or timed out)"
        assert move_reason(peer) == "cannot connect (refused or timed out)"
    with pynetdicom_peer(DPP_FIND, *DPP_STORAGE_CLASSES, require_calling_aet=["X"]) as peer:
        assert scu_reason(peer) == (
            f"{peer.describe()}: association rejected (is this plugin's AE title declared there?)"
        )
        assert move_reason(peer) == "association rejected"
    with stalling_peer() as peer:
        assert scu_reason(peer).startswith(f"{peer.describe()}: association aborted: PDU of type")
    with stalling_peer() as peer:
        assert move_reason(peer).startswith("association aborted: PDU of type 0x02")
    with pynetdicom_peer(Verification) as peer:
        assert scu_reason(peer) == (
            f"{peer.describe()}: association aborted (TLS or protocol problem?)"
        )
        assert move_reason(peer) == "none of the storage contexts accepted"
    with closing_peer() as peer:
        assert scu_reason(peer) == (
            f"{peer.describe()}: association aborted (TLS or protocol problem?)"
        )
    with closing_peer() as peer:
        assert move_reason(peer) == "association aborted"
    with pynetdicom_peer(*DPP_STORAGE_CLASSES, scp_role=True) as peer:
        assert scu_reason(peer, DPP_GET) == f"{peer.describe()}: does not accept DPP Get"
