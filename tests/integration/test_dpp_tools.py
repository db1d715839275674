"""``python -m dpp_tools`` against the real Orthanc with the plugin and against bare SCPs.

Samples are written and loaded with the commands themselves, then found,
retrieved, moved and stored with the client; what arrives is compared with
the sample files. README's quick-start commands are run as written, with the
test server's ports added, so README cannot drift from the command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelFind as DPP_FIND
from pynetdicom.sop_class import Verification

from dpp_tools import cli
from dpp_tools.samples import make_non_dpp, to_bytes, write_library
from orthanc_dpp.model.sop import PROTOCOL_APPROVAL_STORAGE
from tests.orthanc_server import OrthancServer, free_port
from tests.peers import wait_for_port

REPO = Path(__file__).resolve().parents[2]
RECEIVE_SECONDS = "60"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def dataset_bytes(data: bytes) -> bytes:
    """The dataset of a Part 10 file, after preamble and file meta: what travelled."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return data[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def table_uids(out: str) -> set[str]:
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """Orthanc with the plugin; the client's AE title declared as in ./orthanc.json."""
    folder = tmp_path_factory.mktemp("dpp-tools")
    receive_port = free_port()
    config = {"DicomModalities": {"dpp-client": ["DPPSCU", "127.0.0.1", receive_port]}}
    with OrthancServer(folder / "orthanc", config=config) as orthanc:
        orthanc.receive_port = receive_port  # type: ignore[attr-defined]
        yield orthanc


@pytest.fixture(scope="module")
def library(archive: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`samples` then `load`: the files by SOP Instance UID, and load's answer."""
    folder = tmp_path_factory.mktemp("samples") / "protocols"
    code, _, err = run("samples", str(folder), "--count", "18", "--seed", "31")
    assert code == cli.EXIT_OK, err
    loaded = run("load", str(folder), "--url", archive.url)
    files = {str(pydicom.dcmread(path).SOPInstanceUID): path for path in folder.iterdir()}
    return {"folder": folder, "files": files, "load": loaded}


def protocols(library: dict) -> dict[str, Dataset]:
    """The CT and XA protocols (what the DPP information model answers) by UID."""
    out = {}
    for uid, path in library["files"].items():
        ds = pydicom.dcmread(path)
        if "ProtocolName" in ds:
            out[uid] = ds
    return out


def net(archive: OrthancServer) -> list[str]:
    return ["--port", str(archive.dpp_port)]


# -- samples, load ---------------------------------------------------------------


def test_load_stores_every_sample_file_and_reports_each(archive, library) -> None:
    code, out, _ = library["load"]
    assert code == cli.EXIT_OK
    lines = out.splitlines()
    assert len(lines) == 19
    for uid, path in library["files"].items():
        assert f"{path}: Success {uid}" in lines
    assert lines[-1] == f"18 of 18 files stored, 0 failed, at {archive.url}"
    assert archive.get_json("/dpp/protocols")["Total"] == 18
    # Loading again changes nothing and says so.
    again, out, _ = run("load", str(library["folder"]), "--url", archive.url)
    assert again == cli.EXIT_OK
    assert out.count(": AlreadyStored ") == 18


def test_load_names_the_refused_file_and_exits_partly_done(archive, library, tmp_path) -> None:
    image = tmp_path / "ct-image.dcm"
    image.write_bytes(to_bytes(make_non_dpp(1)))
    sample = next(iter(library["files"].values()))
    code, out, _ = run("load", str(sample), str(image), "--url", archive.url)
    assert code == cli.EXIT_PARTIAL
    assert f"{image}: FAILED, HTTP 415: " in out
    code, out, _ = run("load", str(image), "--url", archive.url)
    assert code == cli.EXIT_FAILED
    assert out.splitlines()[-1] == f"0 of 1 files stored, 1 failed, at {archive.url}"


# -- echo, find ------------------------------------------------------------------


def test_echo(archive) -> None:
    code, out, _ = run("echo", *net(archive))
    assert code == cli.EXIT_OK
    assert out.strip() == f"C-ECHO ORTHANC_DPP@127.0.0.1:{archive.dpp_port}: 0x0000 Success"


def test_find_by_name_prints_a_table_of_the_matches(archive, library) -> None:
    stored = protocols(library)
    word = str(next(iter(stored.values())).ProtocolName)[3:8]
    expected = {uid for uid, ds in stored.items() if word in str(ds.ProtocolName)}
    code, out, err = run("find", *net(archive), "--name", f"*{word}*")
    assert code == cli.EXIT_OK
    assert table_uids(out) == expected
    for line in out.splitlines()[1:]:
        ds = stored[line.split()[0]]
        assert str(ds.ProtocolName) in line and str(ds.EquipmentModality) in line
    assert f"{len(expected)} matches from ORTHANC_DPP" in err and "0x0000 Success" in err


def test_find_by_modality_and_manufacturer_as_json(archive, library) -> None:
    stored = protocols(library)
    expected = {
        uid
        for uid, ds in stored.items()
        if ds.EquipmentModality == "CT"
        and any(m.Manufacturer == "SIEMENS" for m in ds.ModelSpecificationSequence)
    }
    assert expected  # the seed gives some
    code, out, _ = run(
        "find", *net(archive), "--modality", "CT", "--manufacturer", "SIEMENS", "--json"
    )
    assert code == cli.EXIT_OK
    answers = json.loads(out)
    assert {a["SOPInstanceUID"] for a in answers} == expected
    for answer in answers:
        assert answer["ProtocolName"] == str(stored[answer["SOPInstanceUID"]].ProtocolName)
        assert answer["EquipmentModality"] == "CT"


def test_find_by_code_as_dicom_json(archive, library) -> None:
    stored = protocols(library)
    some = next(iter(stored.values())).PotentialScheduledProtocolCodeSequence[0]
    expected = {
        uid
        for uid, ds in stored.items()
        if any(
            c.get("CodeValue") == some.CodeValue for c in ds.PotentialScheduledProtocolCodeSequence
        )
    }
    code, out, _ = run(
        "find", *net(archive), "--code", some.CodeValue, "--scheme", "RADLEX", "--dicom-json"
    )
    assert code == cli.EXIT_OK
    answers = [Dataset.from_json(item) for item in json.loads(out)]
    assert {str(a.SOPInstanceUID) for a in answers} == expected
    for answer in answers:
        codes = {c.CodeValue for c in answer.PotentialScheduledProtocolCodeSequence}
        assert some.CodeValue in codes


def test_find_by_any_keyword(archive, library) -> None:
    stored = protocols(library)
    uid, ds = next(iter(stored.items()))
    creator = str(ds.ContentCreatorName)
    code, out, _ = run("find", *net(archive), f"ContentCreatorName={creator}", "--uids")
    assert code == cli.EXIT_OK
    assert uid in out.split()
    assert set(out.split()) == {
        u for u, d in stored.items() if str(d.ContentCreatorName) == creator
    }


def test_find_refused_by_the_archive_names_the_status(archive) -> None:
    code, _, err = run("find", *net(archive), "--aet", "STRANGER")
    assert code == cli.EXIT_FAILED
    assert "C-FIND 0xC000 Failure: Unable to Process (Not authorised)" in err


def test_find_with_a_key_of_another_model_names_the_offending_element(archive) -> None:
    code, _, err = run("find", *net(archive), "PatientID=123")
    assert code == cli.EXIT_FAILED
    assert "0xA900 Failure: Identifier Does Not Match SOP Class" in err
    assert "offending element (0010,0020)" in err


# -- get, move -------------------------------------------------------------------


def test_get_writes_what_was_stored(archive, library, tmp_path) -> None:
    uids = sorted(library["files"])[:3]
    out_dir = tmp_path / "retrieved"
    code, out, err = run("get", *net(archive), *uids, "--out", str(out_dir))
    assert code == cli.EXIT_OK, err
    assert sorted(out.split()) == sorted(str(out_dir / f"{uid}.dcm") for uid in uids)
    for uid in uids:
        received = (out_dir / f"{uid}.dcm").read_bytes()
        assert dataset_bytes(received) == dataset_bytes(library["files"][uid].read_bytes())
        assert pydicom.dcmread(out_dir / f"{uid}.dcm").SOPInstanceUID == uid
    assert "3 of 3 received" in err and "C-GET 0x0000 Success" in err


def test_get_of_a_missing_uid_is_partly_done_or_failed(archive, library, tmp_path) -> None:
    known = sorted(library["files"])[0]
    code, _, err = run("get", *net(archive), known, "1.2.3.4", "--out", str(tmp_path))
    assert code == cli.EXIT_PARTIAL
    assert "not retrieved: 1.2.3.4" in err and "C-GET 0xB000 Warning" in err
    assert (tmp_path / f"{known}.dcm").exists()
    code, _, err = run("get", *net(archive), "1.2.3.4", "--out", str(tmp_path))
    assert code == cli.EXIT_FAILED
    assert (
        "C-GET 0xA702 Failure: Refused: Out of resources, unable to perform sub-operations" in err
    )


@contextlib.contextmanager
def receiver(folder: Path, port: int, count: int) -> Iterator[subprocess.Popen]:
    """``python -m dpp_tools receive`` in its own process, until `count` instances arrived."""
    command = [sys.executable, "-m", "dpp_tools", "receive", str(folder), "--port", str(port)]
    command += ["--count", str(count), "--timeout", RECEIVE_SECONDS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)


def test_move_to_the_receive_command(archive, library, tmp_path) -> None:
    uids = sorted(protocols(library))[:2]
    with receiver(tmp_path / "moved", archive.receive_port, len(uids)) as process:
        code, out, err = run("move", *net(archive), *uids, "--to", "DPPSCU")
        assert code == cli.EXIT_OK, err
        assert process.wait(timeout=30) == 0
    assert "sent 2 to DPPSCU (0 failed, 0 with warnings)" in out
    assert "C-MOVE 0x0000 Success" in err
    printed = process.stdout.read().decode()
    for uid in uids:
        moved = tmp_path / "moved" / f"{uid}.dcm"
        assert f"{moved} from ORTHANC_DPP" in printed
        assert dataset_bytes(moved.read_bytes()) == dataset_bytes(
            library["files"][uid].read_bytes()
        )


def test_move_to_an_unknown_destination_names_the_status(archive, library) -> None:
    uid = sorted(library["files"])[0]
    code, _, err = run("move", *net(archive), uid, "--to", "NOWHERE")
    assert code == cli.EXIT_FAILED
    assert "C-MOVE 0xA801 Failure: Move destination unknown" in err


# -- store -----------------------------------------------------------------------


def test_store_reports_each_file(archive, tmp_path) -> None:
    new = write_library(tmp_path / "new", 4, seed=9001)
    image = tmp_path / "new" / "ct-image.dcm"
    image.write_bytes(to_bytes(make_non_dpp(2)))
    code, out, _ = run("store", *net(archive), str(tmp_path / "new"))
    assert code == cli.EXIT_PARTIAL
    assert f"{image}: FAILED, not sent: ORTHANC_DPP@" in out
    assert "does not accept CT Image Storage" in out
    approvals = 0
    for path in new:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        if ds.SOPClassUID == PROTOCOL_APPROVAL_STORAGE:
            # The client's AE title is declared, but not in ApprovalStorers (none by default).
            approvals += 1
            assert f"{path}: FAILED {uid}: 0x0124" in out
            assert archive.status_of("GET", f"/dpp/protocols/{uid}") == 404
            continue
        assert f"{path}: stored {uid}: 0x0000 Success" in out
        stored = archive.get(f"/dpp/protocols/{uid}/file")
        assert dataset_bytes(stored) == dataset_bytes(path.read_bytes())
    assert approvals == 1
    assert out.splitlines()[-1].startswith("3 of 5 files stored on ORTHANC_DPP@")


# -- a bare pynetdicom DPP SCP: another archive ----------------------------------


@contextlib.contextmanager
def bare_scp(
    handlers: list, *, find: bool = True, calling: list[str] | None = None
) -> Iterator[int]:
    ae = AE(ae_title="OTHER_ARCHIVE")
    ae.add_supported_context(Verification)
    if find:
        ae.add_supported_context(DPP_FIND)
    if calling is not None:
        ae.require_calling_aet = calling
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        yield port
    finally:
        server.shutdown()


def test_failure_status_of_another_archive_is_named_and_exit_1() -> None:
    def on_find(event: evt.Event):
        answer = Dataset()
        answer.SOPInstanceUID = "1.2.3.4"
        answer.ProtocolName = "Other Vendor Head"
        yield 0xFF00, answer
        failure = Dataset()
        failure.Status = 0xA700
        failure.ErrorComment = "index still loading"
        yield failure, None

    with bare_scp([(evt.EVT_C_FIND, on_find)]) as port:
        args = ["--port", str(port), "--called-aet", "OTHER_ARCHIVE"]
        code, out, err = run("find", *args, "--name", "*Head*")
    assert code == cli.EXIT_FAILED
    assert "1.2.3.4" in out and "Other Vendor Head" in out  # what came before the failure
    assert "C-FIND 0xA700 Failure: Refused: Out of Resources (index still loading)" in err


def test_rejected_association_is_exit_3_with_the_reason() -> None:
    with bare_scp([], calling=["SOMEONE"]) as port:
        code, _, err = run("echo", "--port", str(port))
    assert code == cli.EXIT_NO_ASSOCIATION
    assert "rejected the association (Rejected Permanent, Service User: " in err
    assert "Calling AE title not recognised" in err


def test_an_archive_without_the_dpp_model_is_exit_3() -> None:
    with bare_scp([], find=False) as port:
        code, _, err = run("find", "--port", str(port))
    assert code == cli.EXIT_NO_ASSOCIATION
    assert "does not accept Defined Procedure Protocol Information Model - FIND" in err


# -- README ----------------------------------------------------------------------

README_COMMAND = re.compile(r"^\.venv/bin/python -m dpp_tools ")


def readme_commands() -> list[str]:
    """The lines of README's shell blocks that run the client."""
    lines, in_block = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block and line.strip() == "```sh"
        elif in_block and README_COMMAND.match(line):
            lines.append(line)
    return lines


def test_readme_commands_run_as_written(tmp_path) -> None:
    """Each command of README against a fresh Orthanc, only the ports pointed at it."""
    commands = readme_commands()
    used = {line.split()[3] for line in commands}
    assert {"samples", "load", "echo", "find", "get", "move", "receive", "store"} <= used
    receive_port = free_port()
    config = {"DicomModalities": {"dpp-client": ["DPPSCU", "127.0.0.1", receive_port]}}
    python = shlex.quote(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with OrthancServer(tmp_path / "orthanc", config=config) as orthanc:
        options = {
            "samples": "",
            "load": f"--url {orthanc.url}",
            "receive": f"--port {receive_port} --timeout {RECEIVE_SECONDS}",
        }

        def pointed(match: re.Match[str]) -> str:
            command = match.group(1)
            return f"{python} -m dpp_tools {command} " + options.get(
                command, f"--port {orthanc.dpp_port}"
            )

        background: list[subprocess.Popen] = []
        try:
            for line in commands:
                shell = re.sub(r"\.venv/bin/python -m dpp_tools (\w+)", pointed, line)
                shell = shell.split(" #")[0].strip()
                if shell.endswith("&"):
                    process = subprocess.Popen(
                        ["bash", "-c", shell.rstrip("&")], cwd=tmp_path, env=env
                    )
                    background.append(process)
                    wait_for_port(receive_port, process)
                    continue
                done = subprocess.run(
                    ["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, timeout=120
                )
                assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
        finally:
            for process in background:
                process.terminate()
                process.wait(timeout=30)
        assert orthanc.get_json("/dpp/protocols")["Total"] == 30
    assert list((tmp_path / "retrieved").glob("*.dcm"))
    assert list((tmp_path / "moved").glob("*.dcm"))
