"""DICOM peers for the integration tests and benchmarks."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, Association, evt
from pynetdicom.sop_class import Verification

from orthanc_dpp.model.key_table import DPP_MODEL, InformationModel
from orthanc_dpp.model.sop import DPP_STORAGE_CLASSES, STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests import dicom_client
from tests.orthanc_server import OrthancServer, free_port
from tests.waiting import eventually


def associate(
    orthanc: OrthancServer,
    contexts: list[str] | None = None,
    transfer_syntaxes: list[str] | None = None,
    ae_title: str = "TEST_SCU",
) -> Association:
    """An established association with the plugin's DPP listener."""
    return dicom_client.associate(
        "127.0.0.1",
        orthanc.dpp_port,
        orthanc.aet,
        calling_aet=ae_title,
        contexts=contexts or [Verification, *STORAGE_CLASSES],
        transfer_syntaxes=transfer_syntaxes or TRANSFER_SYNTAXES,
    )


def store_protocols(
    orthanc: OrthancServer,
    datasets: Iterable[Dataset],
    transfer_syntaxes: list[str] | None = None,
) -> None:
    """C-STORE every dataset through the DPP listener, each answered Success."""
    assoc = associate(orthanc, transfer_syntaxes=transfer_syntaxes)
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000, f"C-STORE of {ds.SOPInstanceUID}: {status}"
    finally:
        assoc.release()


def c_find(
    orthanc: OrthancServer, identifier: Dataset, model: InformationModel = DPP_MODEL
) -> list[tuple[int, Dataset | None]]:
    """C-FIND on ``model`` (the DPP model by default): (status, identifier) per response."""
    assoc = associate(orthanc, [model.find])
    try:
        return [
            (int(status.Status), ds)
            for status, ds in assoc.send_c_find(identifier, model.find)
            if status is not None
        ]
    finally:
        assoc.release()


def find_identifier(**keys: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = ""
    ds.ProtocolName = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def echo_works(
    orthanc: OrthancServer,
    *,
    source: str = "127.0.0.1",
    tls_context: ssl.SSLContext | None = None,
    timeout: float = 10,
) -> bool:
    """Whether a new association (from ``source``, over TLS if given) gets a C-ECHO answered.

    False, not an assertion, when the listener refuses: the hostile-peer and
    TLS tests check refusals as well as service.
    """
    try:
        status = dicom_client.echo(
            orthanc.dpp_port,
            orthanc.aet,
            calling_aet="TEST_SCU",
            timeout=timeout,
            source=source,
            tls=tls_context,
        )
    except dicom_client.AssociationRefused:
        return False
    return status == 0x0000


def library_digest(orthanc: OrthancServer) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of the stored file, for every protocol."""
    listing = orthanc.get_json("/dpp/protocols?limit=1000")
    uids = [p["SOPInstanceUID"] for p in listing["Protocols"]]
    return {
        uid: hashlib.sha256(orthanc.get(f"/dpp/protocols/{uid}/file")).hexdigest() for uid in uids
    }


@contextlib.contextmanager
def library_unchanged(orthanc: OrthancServer) -> Iterator[None]:
    """Around an attack: then Orthanc answers, a new association works, the files are intact."""
    before = library_digest(orthanc)
    yield
    assert orthanc.get_json("/system")["Version"]
    assert echo_works(orthanc)
    assert library_digest(orthanc) == before


# --- DCMTK storescp (docs/design.md, fact 8) ---------------------------------------------------

STORESCP_PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = LittleEndianImplicit

[[PresentationContexts]]
[DPPStorage]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.200.1\\Uncompressed
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.200.3\\Uncompressed
PresentationContext3 = 1.2.840.10008.5.1.4.1.1.200.7\\Uncompressed

[[Profiles]]
[DPP]
PresentationContexts = DPPStorage
"""


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 10) -> None:
    def listening() -> bool:
        assert process.poll() is None, "storescp exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    if not eventually(listening, seconds, step=0.05):
        raise TimeoutError(f"storescp not listening on {port}")


@contextlib.contextmanager
def storescp(
    tmp_path: Path, *, profile: bool, port: int | None = None, aet: str = "DCMTK"
) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port, writing into a fresh folder; stopped on exit."""
    out = tmp_path / "received"
    out.mkdir()
    port = port or free_port()
    command = ["storescp", "-aet", aet, "-od", str(out)]
    if profile:  # docs/design.md, fact 8: without it, storescp refuses the DPP classes
        config = tmp_path / "dpp-storescp.cfg"
        config.write_text(STORESCP_PROFILE)
        command += ["-xf", str(config), "DPP"]
    process = subprocess.Popen(
        [*command, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process)
        yield port, out
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def collecting_storescp(ae_title: str) -> Iterator[tuple[int, list[Dataset]]]:
    """A pynetdicom storage SCP of the DPP storage classes on a free loopback port.

    Yields its port and the list of the datasets it received, each answered
    Success; shut down on exit. For a C-MOVE destination that pynetdicom,
    not DCMTK, should play (``storescp`` is DCMTK's).
    """
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title=ae_title)
    for sop_class in sorted(DPP_STORAGE_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield port, received
    finally:
        server.shutdown()


#: The AE title of the C-MOVE destination that ``qr_modalities`` declares.
STORE_AET = "STORE_SCP"


def qr_modalities(store_port: int) -> dict[str, list]:
    """``DicomModalities`` for a query/retrieve test: the finder TEST_SCU, the getter GETTER
    and the C-MOVE destination STORE_AET listening on ``store_port``."""
    return {
        # Orthanc's defaults let only known modalities find and retrieve.
        "scu": ["TEST_SCU", "127.0.0.1", 104],
        "getter": ["GETTER", "127.0.0.1", 104],
        "store": [STORE_AET, "127.0.0.1", store_port],
    }


def c_get(
    orthanc: OrthancServer,
    uids: list[str],
    *,
    storage: bool = True,
    on_pending: Callable[[Association, Dataset], None] | None = None,
    ae_title: str = "GETTER",
    model: InformationModel = DPP_MODEL,
) -> tuple[Dataset, list[Dataset]]:
    """C-GET ``uids`` on ``model``, the DPP model by default (message ID 9).

    Returns the final status (with the final identifier's Failed SOP
    Instance UID List merged in) and the datasets received. ``storage``
    False offers no storage context; ``on_pending`` sees each pending status.
    """
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    assoc = dicom_client.associate(
        "127.0.0.1",
        orthanc.dpp_port,
        orthanc.aet,
        calling_aet=ae_title,
        contexts=[(model.get, DEFAULT_TRANSFER_SYNTAXES)],
        transfer_syntaxes=[ExplicitVRLittleEndian],
        scp_role_for=sorted(model.storage_classes) if storage else (),
        handlers=[(evt.EVT_C_STORE, on_store)],
    )
    identifier = Dataset()
    identifier.SOPInstanceUID = uids if len(uids) > 1 else uids[0]
    final = None
    for status, answer in assoc.send_c_get(identifier, model.get, msg_id=9):
        if status is None:
            continue
        if on_pending and int(status.Status) == 0xFF00:
            on_pending(assoc, status)
        final = status
        if answer is not None:  # Failed SOP Instance UID List travels in the identifier
            final.update(answer)
    assoc.release()
    assert final is not None
    return final, received
