"""Measure again the facts of docs/design.md that no test of the plugin exercises.

Run it from the checkout with the project's virtual environment (it needs
pydicom and pynetdicom, and DCMTK's ``storescp``/``storescu``)::

    .venv/bin/python tools/measure_orthanc_facts.py
    sudo tools/stacks.py run sid -- .venv/bin/python tools/measure_orthanc_facts.py

It starts ``/usr/sbin/Orthanc`` on free loopback ports with this same file as
the ``PythonScript`` (a tiny probe, not the plugin), once per scenario, and
prints one line per fact with what it saw; the exit code is 1 when something
differs from what docs/design.md says. Facts measured here: 1, 3, 5, 7, 8,
9, 10, 11, 12, 13 and 14, each in the part one Orthanc can show (what other
nodes on a shared database see is left to tests/integration/test_scale_out.py).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Environment variable telling the script inside Orthanc what to do.
SCENARIO = "DPP_FACT_SCENARIO"
#: File whose bytes the probe's received-instance hook stores instead of a marked upload.
REPLACEMENT = "DPP_FACT_REPLACEMENT"
#: Patient ID marking the upload the hook replaces.
MARK = b"FACTS-HOOK"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
ORTHANC = "/usr/sbin/Orthanc"

#: Callables handed to Orthanc stay referenced (see orthanc_dpp.orthanc.adapter._REGISTERED).
_REGISTERED: list[object] = []


# -- inside Orthanc ---------------------------------------------------------------------


def _inside_orthanc(orthanc: Any) -> None:
    scenario = os.environ.get(SCENARIO, "probe")
    if scenario == "raise":
        raise RuntimeError("an exception while Orthanc loads the script")
    changes: list[str] = []
    names = {int(getattr(orthanc.ChangeType, n)): n for n in dir(orthanc.ChangeType) if n.isupper()}

    def on_change(change_type: int, level: int, resource: str) -> None:
        changes.append(names.get(int(change_type), str(change_type)))

    _REGISTERED.append(on_change)
    orthanc.RegisterOnChangeCallback(on_change)
    if scenario == "two-callbacks":
        try:
            orthanc.RegisterOnChangeCallback(on_change)
        except Exception as exc:
            orthanc.LogWarning(f"FACT-12: second registration raised {type(exc).__name__}: {exc}")
            raise
        orthanc.LogWarning("FACT-12: second registration accepted")
        return
    orthanc.SetMetricsValue("dpp_fact_at_load", 1.0, orthanc.MetricsType.DEFAULT)
    replacement = os.environ.get(REPLACEMENT, "")

    def on_received(data: bytes, origin: Any) -> tuple[Any, bytes | None]:
        # Replace the one marked upload by the driver's modified copy of it.
        if replacement and MARK in data:
            with open(replacement, "rb") as handle:
                return orthanc.ReceivedInstanceAction.MODIFY, handle.read()
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None

    _REGISTERED.append(on_received)
    orthanc.RegisterReceivedInstanceCallback(on_received)

    def echo(output: Any, uri: str, **request: Any) -> None:
        body = {"method": request.get("method"), "groups": list(request.get("groups", ()))}
        output.AnswerBuffer(json.dumps(body).encode(), "application/json")

    def state(output: Any, uri: str, **request: Any) -> None:
        orthanc.SetMetricsValue("dpp_fact_later", 2.0, orthanc.MetricsType.DEFAULT)
        output.AnswerBuffer(json.dumps({"changes": changes}).encode(), "application/json")

    _REGISTERED.extend([echo, state])
    orthanc.RegisterRestCallback("/fact/echo/([^/]+)", echo)
    orthanc.RegisterRestCallback("/fact/state", state)


# -- the driver -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc with the probe script, on free ports, in ``folder``."""

    def __init__(self, folder: Path, scenario: str, extra: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.http = free_port()
        self.dicom = free_port()
        self.scenario = scenario
        self.config = {
            "Name": f"facts-{self.http}",
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "Plugins": [PYTHON_PLUGIN],
            "PythonScript": os.path.abspath(__file__),
            **(extra or {}),
        }
        self.replacement = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / f"orthanc-{scenario}-{self.http}.log"

    def start(self) -> None:
        path = self.folder / f"orthanc-{self.http}.json"
        path.write_text(json.dumps(self.config))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [ORTHANC, "--verbose", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, SCENARIO: self.scenario, REPLACEMENT: self.replacement},
            )

    def up(self, seconds: float = 60.0) -> bool:
        """True once HTTP answers; False if Orthanc exited first or ``seconds`` passed."""
        deadline = time.monotonic() + seconds
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                self.request("GET", "/system")
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def exited(self, seconds: float) -> int | None:
        """The exit code if Orthanc ends within ``seconds``, else None."""
        assert self.process is not None
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> float:
        """SIGTERM, then the seconds until the process is gone (killed after 60 s)."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.process.terminate()
        if self.exited(60) is None:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - began

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}{path}", data=body, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, method: str, path: str, body: bytes | None = None) -> Any:
        status, data = self.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status} {data[:200]!r}")
        return json.loads(data)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


Results = list[tuple[int, bool, str]]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def image_instance() -> bytes:
    """A small Secondary Capture instance with patient, study and series, as a file."""
    from pydicom import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "FACTS"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def measure_probe(folder: Path, results: Results) -> None:
    """Facts 1, 5, 10, 11, 13 and 14 on one Orthanc running the probe script."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from dpp_tools.samples import make_protocol, to_bytes
    from orthanc_dpp.model.sop import DPP_FIND, DPP_GET, DPP_MOVE, STORAGE_CLASSES

    # A DPP file without patient, study and series, and the copy the hook
    # stores instead: the same with them added, as the plugin's normalization does.
    original = make_protocol(4, "CT")
    original.ProtocolName = MARK.decode()
    marked = to_bytes(original)
    modified = dcmread(io.BytesIO(marked))
    modified.PatientID = "FACTS"
    modified.StudyInstanceUID = generate_uid()
    modified.SeriesInstanceUID = generate_uid()
    modified.ImageComments = "modified by the received-instance hook"
    buffer = io.BytesIO()
    modified.save_as(buffer, enforce_file_format=True)
    (folder / "replacement.dcm").write_bytes(buffer.getvalue())
    orthanc = Orthanc(folder, "probe", {"UnknownSopClassAccepted": True})
    orthanc.replacement = str(folder / "replacement.dcm")
    orthanc.start()
    if not orthanc.up():
        raise RuntimeError(f"Orthanc did not start:\n{orthanc.log_text()[-3000:]}")
    try:
        version = orthanc.json("GET", "/system")["Version"]
        print(
            f"Orthanc {version}, Python plugin {orthanc.json('GET', '/plugins/python')['Version']}"
        )

        # Fact 1: the DPP classes on Orthanc's own DICOM port.
        ae = AE(ae_title="FACTS")
        for uid in (Verification, DPP_FIND, DPP_MOVE, DPP_GET, *sorted(STORAGE_CLASSES)):
            ae.add_requested_context(uid)
        # Raw pynetdicom: it measures Orthanc and pynetdicom as they are, without test helpers.
        assoc = ae.associate("127.0.0.1", orthanc.dicom, ae_title="ORTHANC")
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        if assoc.is_established:
            assoc.release()
        query = sorted({DPP_FIND, DPP_MOVE, DPP_GET} & accepted)
        storage = sorted(set(STORAGE_CLASSES) & accepted)
        storage_ok = not storage or version_tuple(version) >= (1, 12, 6)
        results.append(
            (
                1,
                str(Verification) in accepted and not query and storage_ok,
                f"own DICOM port with UnknownSopClassAccepted: Q/R classes accepted {query}, "
                f"DPP storage classes accepted {storage}",
            )
        )

        # Fact 3: no identity, no storage; a modified upload's answer.
        dpp = make_protocol(3, "CT")
        refused = orthanc.request("POST", "/instances", to_bytes(dpp))[0]
        kept = orthanc.json("POST", "/tools/lookup", str(dpp.SOPInstanceUID).encode())
        answer = orthanc.request("POST", "/instances", marked)[0]
        uid = str(modified.SOPInstanceUID).encode()
        found = orthanc.json("POST", "/tools/lookup", uid)
        stored = b""
        if found:
            stored = orthanc.request("GET", f"/instances/{found[0]['ID']}/file")[1]
        is_modified = b"modified by the received-instance hook" in stored
        quirk = answer == 404 if version_tuple(version)[:2] == (1, 10) else True
        results.append(
            (
                3,
                refused != 200 and not kept and is_modified and quirk,
                f"DPP file without patient/study/series: HTTP {refused}, stored {bool(kept)}; "
                f"the same with the hook adding them: HTTP {answer}, stored {is_modified}",
            )
        )

        # Fact 10: a deleted instance leaves no trace in /changes.
        stored = orthanc.json("POST", "/instances", image_instance())
        orthanc.request("DELETE", f"/instances/{stored['ID']}")
        changes = orthanc.json("GET", "/changes?since=0&limit=1000")["Changes"]
        about = [c["ChangeType"] for c in changes if c["ID"] == stored["ID"]]
        deadline = time.monotonic() + 10
        seen: list[str] = []
        while time.monotonic() < deadline and "DELETED" not in seen:
            seen = orthanc.json("GET", "/fact/state")["changes"]
            time.sleep(0.1)
        results.append(
            (
                10,
                not about and "DELETED" in seen,
                f"/changes entries of the deleted instance: {about}; "
                f"DELETED callback on this node: {'DELETED' in seen}",
            )
        )

        # Fact 11: metrics set while loading are not kept, later ones are.
        orthanc.json("GET", "/fact/state")
        status, metrics = orthanc.request("GET", "/tools/metrics-prometheus")
        text = metrics.decode(errors="replace")
        at_load, later = "dpp_fact_at_load" in text, "dpp_fact_later" in text
        results.append(
            (
                11,
                status == 200 and later and not at_load,
                f"metric set while loading shown: {at_load}; set from a callback shown: {later}",
            )
        )

        # Fact 13: exact URI match, groups for sub-paths, every method reaches the callback.
        methods = {}
        for method in ("GET", "POST", "PUT", "DELETE"):
            code, data = orthanc.request(method, "/fact/echo/abc", b"" if method != "GET" else None)
            methods[method] = json.loads(data)["method"] if code == 200 else code
        deeper = orthanc.request("GET", "/fact/echo/abc/def")[0]
        group = orthanc.json("GET", "/fact/echo/abc")["groups"]
        results.append(
            (
                13,
                all(methods[m] == m for m in methods) and deeper == 404 and group == ["abc"],
                f"methods reaching the callback {methods}; groups {group}; "
                f"a longer URI answers {deeper}",
            )
        )

        # Fact 14: /modalities?expand lists the flags, left-out ones true.
        orthanc.request(
            "PUT",
            "/modalities/facts",
            json.dumps({"AET": "FACTS", "Host": "127.0.0.1", "Port": 104}).encode(),
        )
        entry = orthanc.json("GET", "/modalities?expand").get("facts", {})
        flags = {k: v for k, v in entry.items() if k.startswith("Allow")}
        results.append(
            (
                14,
                bool(flags) and all(v is True for v in flags.values()),
                f"PUT without flags, then ?expand: {flags}",
            )
        )

        # Fact 5: a second Orthanc on the same folder while the first runs.
        second = Orthanc(folder, "probe", {"UnknownSopClassAccepted": True})
        second.start()
        second_up = second.up(20)
        code = second.exited(20) if not second_up else None
        second.stop()
        locked = "locked" in second.log_text().lower()
    finally:
        took = orthanc.stop()
    third = Orthanc(folder, "probe")
    third.start()
    third_up = third.up()
    kept_modality = third_up and "facts" in third.json("GET", "/modalities")
    third.stop()
    results.append(
        (
            14,
            third_up and not kept_modality,
            f"the modality added with PUT is still there after a restart: {kept_modality}",
        )
    )
    results.append(
        (
            5,
            not second_up and code is not None and locked and third_up,
            f"second Orthanc on the folder: started {second_up}, exit code {code}, "
            f"'locked' in its log {locked}; after the first exited it starts: {third_up}; "
            f"stop took {took:.1f} s",
        )
    )


def measure_start_failures(folder: Path, results: Results) -> None:
    """Facts 9 and 12: what an exception or a second change callback does at load."""
    raising = Orthanc(folder / "raise", "raise")
    raising.folder.mkdir()
    raising.start()
    up = raising.up(30)
    code = raising.exited(30)
    raising.stop()
    results.append(
        (9, not up and code not in (None, 0), f"script raising at load: exit code {code}")
    )
    twice = Orthanc(folder / "twice", "two-callbacks")
    twice.folder.mkdir()
    twice.start()
    up = twice.up(30)
    code = twice.exited(30) if not up else None
    twice.stop()
    said = [line for line in twice.log_text().splitlines() if "FACT-12" in line]
    results.append(
        (
            12,
            not up and code not in (None, 0) and bool(said) and "raised" in said[0],
            f"second RegisterOnChangeCallback: {said[0].split('FACT-12: ')[-1] if said else '?'}; "
            f"Orthanc exit code {code}",
        )
    )


def measure_nagle(results: Results) -> None:
    """Fact 7: C-STORE rate between two pynetdicom AEs with and without TCP_NODELAY."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt

    from dpp_tools.samples import make_protocol

    ds = make_protocol(1, "CT")
    sop_class = str(ds.SOPClassUID)

    def nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def rate(set_nodelay: bool, count: int = 40) -> float:
        extra = [(evt.EVT_CONN_OPEN, nodelay)] if set_nodelay else []
        scp = AE(ae_title="SCP")
        scp.add_supported_context(sop_class, ExplicitVRLittleEndian)
        port = free_port()
        server = scp.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), *extra],
        )
        try:
            scu = AE(ae_title="SCU")
            scu.add_requested_context(sop_class, ExplicitVRLittleEndian)
            # Raw pynetdicom: the fact measured is pynetdicom's own timing, handlers as given.
            assoc = scu.associate("127.0.0.1", port, evt_handlers=extra)
            began = time.monotonic()
            for _ in range(count):
                assoc.send_c_store(ds)
            took = time.monotonic() - began
            assoc.release()
        finally:
            server.shutdown()
        return count / took

    without, with_ = rate(False), rate(True)
    results.append(
        (
            7,
            with_ > 2 * without,
            f"C-STORE/s on loopback without TCP_NODELAY {without:.0f}, with {with_:.0f}",
        )
    )


def measure_storescp(folder: Path, results: Results) -> None:
    """Fact 8: DCMTK's storescp accepts the DPP classes only with a profile."""
    from dpp_tools.samples import make_protocol, to_bytes
    from tests.peers import STORESCP_PROFILE

    if not shutil.which("storescp"):
        results.append((8, False, "DCMTK's storescp is not installed"))
        return
    path = folder / "protocol.dcm"
    path.write_bytes(to_bytes(make_protocol(2, "CT")))
    profile = folder / "dpp-storescp.cfg"
    profile.write_text(STORESCP_PROFILE)
    outcomes = {}
    for name, options in (
        ("--promiscuous", ["--promiscuous"]),
        ("-xf profile", ["-xf", str(profile), "DPP"]),
    ):
        port = free_port()
        out = folder / f"received-{port}"
        out.mkdir()
        scp = subprocess.Popen(
            ["storescp", *options, "-od", str(out), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            sent = subprocess.run(
                ["storescu", "--required", "127.0.0.1", str(port), str(path)],
                capture_output=True,
                timeout=60,
            )
            outcomes[name] = sent.returncode == 0 and any(out.iterdir())
        finally:
            scp.terminate()
            scp.wait(10)
    results.append(
        (
            8,
            not outcomes["--promiscuous"] and outcomes["-xf profile"],
            f"storescu --required of a CT DPP file stored by storescp with: {outcomes}",
        )
    )


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(repo), str(repo / "plugin")]
    results: Results = []
    steps: list[tuple[str, Callable[[Path], None]]] = [
        ("probe", lambda folder: measure_probe(folder, results)),
        ("start", lambda folder: measure_start_failures(folder, results)),
        ("nagle", lambda folder: measure_nagle(results)),
        ("storescp", lambda folder: measure_storescp(folder, results)),
    ]
    for name, step in steps:
        with tempfile.TemporaryDirectory(prefix=f"orthanc-facts-{name}-") as folder:
            step(Path(folder))
    differs = 0
    for number, agrees, seen in sorted(results):
        differs += not agrees
        verdict = "as docs/design.md says" if agrees else "DIFFERS from docs/design.md"
        print(f"fact {number:2d}: {verdict}: {seen}")
    return 1 if differs else 0


try:
    import orthanc as _orthanc  # only inside Orthanc
except ImportError:
    _orthanc = None

if _orthanc is not None:
    _inside_orthanc(_orthanc)
elif __name__ == "__main__":
    sys.exit(main())
