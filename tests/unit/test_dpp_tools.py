"""The DPP client's command line: options, C-FIND keys, statuses, output, sample files.

Network behaviour against real archives is in tests/integration/test_dpp_tools.py;
here only what needs no peer, plus the failures of a peer that is not there.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTDefinedProcedureProtocolStorage,
    ProtocolApprovalStorage,
    XADefinedProcedureProtocolStorage,
)

from dpp_tools import cli, query, status
from dpp_tools.samples import SAMPLE_KINDS, make_library, to_bytes, write_library
from orthanc_dpp.model.key_table import TOP_LEVEL
from tests.doc_examples import README, doc_section, strip_json_comments
from tests.orthanc_server import free_port

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def identifier(*argv: str) -> Dataset:
    args = cli.build_parser().parse_args(["find", *argv])
    return query.build_identifier(cli.find_keys(args))


# -- defaults: README's commands work against `make run` ----------------------


def test_defaults_are_those_of_the_shipped_orthanc_json():
    config = json.loads(strip_json_comments((REPO / "orthanc.json").read_text()))
    section = config["DefinedProcedureProtocol"]
    assert (section["Port"], section["AETitle"]) == (cli.PORT, cli.CALLED_AET)
    assert f"http://127.0.0.1:{config['HttpPort']}" == cli.URL
    (client,) = [m for m in config["DicomModalities"].values() if m["AET"] == cli.CALLING_AET]
    # Declared on loopback, with every right (no Allow* false), at receive's port.
    assert client == {"AET": cli.CALLING_AET, "Host": "127.0.0.1", "Port": cli.RECEIVE_PORT}
    args = cli.build_parser().parse_args(["echo"])
    assert (args.host, args.port, args.called_aet, args.aet) == (
        "127.0.0.1",
        section["Port"],
        section["AETitle"],
        "DPPSCU",
    )


def test_help_documents_every_exit_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["find", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for code in (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_NO_ASSOCIATION):
        assert f"\n  {code}  " in text
    assert f"\n  {cli.EXIT_PARTIAL}  " in text


def test_readme_documents_every_command_and_exit_code():
    section = doc_section(README, "DPP client")
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name in commands.choices:
        assert f"| `{name}" in section, f"README's DPP client section lacks {name}"
    for code in range(5):
        assert f"\n| {code} | " in section


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "--aet", "A" * 17], "is not an AE title"),
        (["echo", "--called-aet", "BAD\\AE"], "is not an AE title"),
        (["echo", "--port", "70000"], "is not a TCP port"),
        (["get", "1.2.abc"], "is not a UID"),
        (["move", "1.2.3"], "the following arguments are required: --to"),
        (["find", "--json", "--uids"], "not allowed with argument"),
        (["samples", "out", "--count", "0"], "at least 1"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


# -- C-FIND keys ---------------------------------------------------------------


def test_without_keys_the_table_columns_are_return_keys():
    ds = identifier()
    assert ds.ProtocolName == "" and ds.EquipmentModality == "" and ds.SOPInstanceUID == ""
    (model,) = ds.ModelSpecificationSequence
    assert model.Manufacturer == "" and model.ManufacturerModelName == ""
    (code,) = ds.PotentialScheduledProtocolCodeSequence
    assert code.CodeValue == "" and code.CodeMeaning == ""
    assert "PotentialRequestedProcedureCodeSequence" not in ds
    # Every top-level key sent is a row of Table HH.6-1.
    assert {elem.tag for elem in ds} <= set(TOP_LEVEL)


def test_options_become_the_dpp_keys_of_table_hh_6_1():
    ds = identifier(
        "--name",
        "*Head*",
        "--modality",
        "CT",
        "--manufacturer",
        "SIEMENS",
        "--model",
        "SOMATOM*",
        "--code",
        "RPID16",
        "--scheme",
        "RADLEX",
        "--procedure-code",
        "CT1234",
    )
    assert ds[Tag(0x0018, 0x1030)].value == "*Head*"  # Protocol Name
    assert ds[Tag(0x0008, 0x0221)].value == "CT"  # Equipment Modality
    model = ds[Tag(0x0018, 0x9912)].value[0]  # Model Specification Sequence
    assert (model.Manufacturer, model.ManufacturerModelName) == ("SIEMENS", "SOMATOM*")
    code = ds[Tag(0x0018, 0x9906)].value[0]  # Potential Scheduled Protocol Code Sequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("RPID16", "RADLEX")
    requested = ds[Tag(0x0018, 0x9907)].value[0]  # Potential Requested Procedure Code Sequence
    assert requested.CodeValue == "CT1234"


def test_non_ascii_keys_are_sent_in_utf_8():
    """Else pydicom sends "?" for each such character, a wild card matching anything."""
    assert "SpecificCharacterSet" not in identifier("--name", "*Head*")
    ds = identifier("--name", "*成人*", "CustodialOrganizationSequence.InstitutionName=Hôpital*")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    sent = encode(ds, is_implicit_vr=False, is_little_endian=True)  # as pynetdicom sends it
    assert "*成人*".encode() in sent and "Hôpital*".encode() in sent


def test_uid_options_make_a_uid_list():
    ds = identifier("--uid", "1.2.3", "--uid", "1.2.4")
    assert list(ds.SOPInstanceUID) == ["1.2.3", "1.2.4"]


def test_any_keyword_value_pair_is_a_key_typed_by_its_vr():
    ds = identifier(
        "ContentCreatorName=Doe*",
        "CustodialOrganizationSequence.InstitutionName=*General*",
        "ModelSpecificationSequence.SoftwareVersions=VA40",
        "Rows=512",
        "InstanceCreationTime",
    )
    assert ds.ContentCreatorName == "Doe*"
    assert ds.CustodialOrganizationSequence[0].InstitutionName == "*General*"
    assert ds.ModelSpecificationSequence[0].SoftwareVersions == "VA40"
    assert ds.ModelSpecificationSequence[0].Manufacturer == ""  # the column stays
    assert ds.Rows == 512 and isinstance(ds.Rows, int)
    assert ds["InstanceCreationTime"].is_empty


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("ProtocolNmae=x", "'ProtocolNmae' is not a DICOM keyword"),
        ("ModelSpecificationSequence=x", "is a sequence: give ModelSpecificationSequence."),
        ("ProtocolName.Manufacturer=x", "'ProtocolName' is not a DICOM sequence keyword"),
        ("Rows=many", "Rows (VR US) needs an integer, not 'many'"),
        ("PixelData=1", "binary values cannot be query keys"),
        ("A.B.C=1", "write Keyword=value or Sequence.Keyword=value"),
    ],
)
def test_bad_keys_are_usage_errors_before_any_association(key, message):
    # Nothing listens on the port: had the key been sent, the exit code would be 3.
    code, _, err = run("find", "--port", str(free_port()), key)
    assert code == cli.EXIT_USAGE
    assert message in err


# -- statuses by name ----------------------------------------------------------


def test_statuses_are_named_per_service():
    assert status.name(0x0000, "C-ECHO") == "0x0000 Success"
    assert status.name(0xA801, "C-MOVE") == "0xA801 Failure: Move destination unknown"
    assert status.name(0xB000, "C-STORE") == "0xB000 Warning: Coercion of Data Elements"
    assert status.name(0xB000, "C-GET").startswith("0xB000 Warning: Sub-operations complete")
    assert status.name(0xC123, "C-FIND") == "0xC123 Failure: Unable to Process"
    assert status.name(0xFE00, "C-MOVE") == "0xFE00 Cancel"
    assert status.category(0xA702, "C-GET") is status.Category.FAILURE


def test_a_status_is_described_with_its_comment_and_offending_element():
    answer = Dataset()
    answer.Status = 0xA900
    answer.ErrorComment = "Key of another model"
    answer.OffendingElement = [0x00100020]
    assert status.describe(answer, "C-FIND") == (
        "0xA900 Failure: Identifier Does Not Match SOP Class (Key of another model), "
        "offending element (0010,0020)"
    )


# -- output ----------------------------------------------------------------------


def _answers() -> list[Dataset]:
    library = list(make_library(4, seed=7, kinds=("CT", "XA")))
    answers = []
    for ds in library:
        answer = Dataset()
        for keyword in (
            "SOPClassUID",
            "SOPInstanceUID",
            "ProtocolName",
            "EquipmentModality",
            "ModelSpecificationSequence",
            "PotentialScheduledProtocolCodeSequence",
        ):
            setattr(answer, keyword, ds[keyword].value)
        answers.append(answer)
    return answers


def test_table_has_a_line_per_answer_with_the_useful_columns():
    answers = _answers()
    lines = query.table(answers).splitlines()
    assert lines[0].split()[:4] == ["SOP", "Instance", "UID", "Kind"]
    assert len(lines) == 1 + len(answers)
    for line, answer in zip(lines[1:], answers, strict=True):
        assert line.startswith(str(answer.SOPInstanceUID) + " ")
        assert str(answer.ProtocolName) in line
        kind = "CT" if answer.SOPClassUID == CTDefinedProcedureProtocolStorage else "XA"
        assert f"  {kind}  " in line
        model = answer.ModelSpecificationSequence[0]
        assert str(model.Manufacturer) in line
        first = answer.PotentialScheduledProtocolCodeSequence[0]
        assert (
            f"{first.CodingSchemeDesignator}:{first.get('CodeValue') or first.LongCodeValue}"
            in line
        )


def test_json_outputs_round_trip():
    answers = _answers()
    plain = json.loads(query.to_json(answers, dicom=False))
    assert [item["SOPInstanceUID"] for item in plain] == [a.SOPInstanceUID for a in answers]
    assert plain[0]["ProtocolName"] == str(answers[0].ProtocolName)
    assert plain[0]["ModelSpecificationSequence"][0]["Manufacturer"] == str(
        answers[0].ModelSpecificationSequence[0].Manufacturer
    )
    dicom = json.loads(query.to_json(answers, dicom=True))
    assert [Dataset.from_json(item) for item in dicom] == answers


# -- sample files ------------------------------------------------------------------


def test_samples_writes_ct_xa_and_approvals_deterministically(tmp_path):
    code, out, _ = run("samples", str(tmp_path / "a"), "--count", "12", "--seed", "5")
    assert code == cli.EXIT_OK
    assert out.strip() == f"wrote 12 files into {tmp_path / 'a'}: 6 CT, 2 XA, 4 approvals"
    files = sorted((tmp_path / "a").iterdir())
    assert [f.name[:5] for f in files] == [f"{i:04d}-" for i in range(1, 13)]
    expected = list(make_library(12, 5, SAMPLE_KINDS))
    for path, ds in zip(files, expected, strict=True):
        assert path.read_bytes() == to_bytes(ds)
        assert path.stem.split("-")[1] in {"ct", "xa", "approval"}
    classes = [pydicom.dcmread(f).SOPClassUID for f in files]
    assert set(classes) == {
        CTDefinedProcedureProtocolStorage,
        XADefinedProcedureProtocolStorage,
        ProtocolApprovalStorage,
    }
    again = write_library(tmp_path / "b", 12, 5)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in files]


def test_samples_into_a_file_says_why(tmp_path):
    (tmp_path / "taken").write_text("")
    code, _, err = run("samples", str(tmp_path / "taken"))
    assert code == cli.EXIT_FAILED
    assert err.startswith("error: ") and "taken" in err


# -- peers that are not there ---------------------------------------------------


def test_nothing_listening_is_exit_3_and_says_so():
    port = free_port()
    code, _, err = run("echo", "--port", str(port))
    assert code == cli.EXIT_NO_ASSOCIATION
    assert f"cannot connect to 127.0.0.1:{port}" in err


def test_load_with_no_server_is_exit_3(tmp_path):
    write_library(tmp_path, 1)
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run("load", str(tmp_path), "--url", url)
    assert code == cli.EXIT_NO_ASSOCIATION
    assert f"no answer from {url}" in err


def test_store_of_a_file_that_is_not_dicom_sends_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    code, _, err = run("store", "--port", str(free_port()), str(tmp_path))
    assert code == cli.EXIT_USAGE
    assert "notes.txt: not a readable DICOM file" in err


def test_store_of_a_missing_path_is_a_usage_error(tmp_path):
    code, _, err = run("store", str(tmp_path / "missing.dcm"))
    assert code == cli.EXIT_USAGE
    assert "missing.dcm: no such file or folder" in err
