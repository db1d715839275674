"""DPP storage on Orthanc's own DICOM port, where Orthanc accepts it (1.12.6 and later).

With ``AcceptedSopClasses`` naming the three DPP storage SOP classes,
Orthanc 1.12.6+ accepts them on its own port; the plugin's received-instance
hook normalizes what arrives and the index picks it up, so C-FIND on the DPP
listener finds it. Older Orthanc ignores the key and refuses the classes:
that is asserted too, so the test says on every stack what a modality gets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model.sop import STORAGE_CLASSES
from tests.orthanc_server import OrthancServer
from tests.peers import c_find, find_identifier
from tests.waiting import eventually


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = OrthancServer(
        tmp_path_factory.mktemp("own-port"),
        config={
            "AcceptedSopClasses": [*sorted(STORAGE_CLASSES), "1.2.840.*"],
            "DicomModalities": {"scu": ["TEST_SCU", "127.0.0.1", 104]},
        },
    )
    with server:
        yield server


def _storescu(orthanc: OrthancServer, path: Path) -> subprocess.CompletedProcess[str]:
    port = str(orthanc.dicom_port)
    return subprocess.run(
        ["storescu", "--required", "-aec", "ORTHANC", "127.0.0.1", port, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dpp_storage_on_orthanc_own_port(orthanc: OrthancServer, tmp_path: Path) -> None:
    ds = make_protocol(9300, "CT")
    path = tmp_path / "protocol.dcm"
    path.write_bytes(to_bytes(ds))
    uid = str(ds.SOPInstanceUID)
    platform = orthanc.get_json("/dpp/status")["Platform"]
    sent = _storescu(orthanc, path)
    if _version(orthanc.get_json("/system")["Version"]) < (1, 12, 6):
        # AcceptedSopClasses is unknown before 1.12.6: the context is refused.
        assert sent.returncode != 0 or "Rejected" in sent.stderr + sent.stdout
        assert orthanc.post("/tools/lookup", uid.encode(), "text/plain") == []
        return
    assert platform["ReceivedInstanceHook"], "this stack runs with AllowThreads"
    assert sent.returncode == 0, sent.stderr
    assert eventually(lambda: orthanc.get_json("/dpp/status")["Protocols"]["Total"] == 1)
    answers = c_find(orthanc, find_identifier(SOPInstanceUID=uid))
    assert [code for code, _ in answers] == [0xFF00, 0x0000], answers
    assert str(answers[0][1].ProtocolName) == str(ds.ProtocolName)
    # Normalized like every other path: the original comes back unchanged.
    stored = orthanc.get_json(f"/dpp/protocols/{uid}")
    assert stored["SOPClassUID"] == str(ds.SOPClassUID)
