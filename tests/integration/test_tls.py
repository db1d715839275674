"""DICOM TLS on the DPP listener and for C-MOVE, with Orthanc's own DicomTls* keys.

The tests make their own CA and certificates with the openssl command, and
use pynetdicom and DCMTK as peers: a trusted client is served, a client
without a certificate, with one from another CA, or without TLS at all is
refused, and C-MOVE reaches a DCMTK storescp that speaks TLS.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelMove as DPP_MOVE

from dpp_tools.samples import make_library
from tests import dicom_client
from tests.certificates import make_ca, make_leaf
from tests.orthanc_server import OrthancServer, free_port
from tests.peers import STORESCP_PROFILE, echo_works, wait_for_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    for name in ("server", "client", "destination"):
        make_leaf(folder, name, "ca")
    make_leaf(folder, "intruder", "other-ca")
    return folder


STORE_AET = "TLS_STORE"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[OrthancServer]:
    store_port = free_port()
    server = OrthancServer(
        tmp_path_factory.mktemp("tls"),
        config={
            # Orthanc's own keys: they secure its DICOM port and the DPP listener.
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki / "server.pem"),
            "DicomTlsPrivateKey": str(pki / "server.key"),
            "DicomTlsTrustedCertificates": str(pki / "ca.pem"),
            "DicomTlsRemoteCertificateRequired": True,
            "DicomModalities": {
                "tls-store": {
                    "AET": STORE_AET,
                    "Host": "127.0.0.1",
                    "Port": store_port,
                    "UseDicomTls": True,
                },
            },
        },
    )
    server.store_port = store_port  # type: ignore[attr-defined]
    with server:
        yield server


def client_context(pki: Path, name: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki / "ca.pem")
    if name:
        context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    return context


def echo(orthanc: OrthancServer, context: ssl.SSLContext | None) -> bool:
    return echo_works(orthanc, tls_context=context)


def test_trusted_client_is_served(orthanc, pki) -> None:
    assert echo(orthanc, client_context(pki, "client"))
    assert "with DICOM TLS" in orthanc.log()


@pytest.mark.parametrize("client", [None, "intruder"], ids=["no certificate", "other CA"])
def test_client_without_a_trusted_certificate_is_refused(orthanc, pki, client) -> None:
    assert not echo(orthanc, client_context(pki, client))
    assert echo(orthanc, client_context(pki, "client"))  # the next one is served


def test_plain_tcp_is_refused(orthanc, pki) -> None:
    assert not echo(orthanc, None)
    assert echo(orthanc, client_context(pki, "client"))


def test_dcmtk_echoscu_over_tls(orthanc, pki) -> None:
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
    command = ["echoscu", *tls, "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dpp_port)]
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    plain = ["echoscu", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dpp_port)]
    assert subprocess.run(plain, capture_output=True, timeout=60).returncode != 0


def test_c_move_to_a_tls_storescp(orthanc, pki, tmp_path: Path) -> None:
    library = list(make_library(3, seed=7400))
    assoc = dicom_client.associate(
        "127.0.0.1",
        orthanc.dpp_port,
        orthanc.aet,
        calling_aet="TEST_SCU",
        contexts=[*(ds.SOPClassUID for ds in library), DPP_MOVE],
        transfer_syntaxes=DEFAULT_TRANSFER_SYNTAXES,
        tls=client_context(pki, "client"),
    )
    for ds in library:
        assert assoc.send_c_store(ds).Status == 0x0000
    out = tmp_path / "received"
    out.mkdir()
    (tmp_path / "profile.cfg").write_text(STORESCP_PROFILE)
    port = orthanc.store_port  # type: ignore[attr-defined]
    tls = ["+tls", str(pki / "destination.key"), str(pki / "destination.pem")]
    tls += ["+cf", str(pki / "ca.pem")]
    profile = ["-xf", str(tmp_path / "profile.cfg"), "DPP"]
    storescp = subprocess.Popen(
        ["storescp", *tls, "-aet", STORE_AET, *profile, "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, storescp)
        identifier = Dataset()
        identifier.SOPInstanceUID = [str(ds.SOPInstanceUID) for ds in library]
        responses = [s for s, _ in assoc.send_c_move(identifier, STORE_AET, DPP_MOVE) if s]
        assoc.release()
    finally:
        storescp.terminate()
        storescp.wait(10)
    final = responses[-1]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == 3
    assert len(list(out.iterdir())) == 3
