"""The DefinedProcedureProtocol section: defaults, validation, messages naming keys."""

import dataclasses
import json
from pathlib import Path

import pytest

from orthanc_dpp.config import (
    KEYS,
    NORMALIZATION_KEYS,
    ConfigError,
    Normalization,
    Settings,
    parse_settings,
)
from tests.doc_examples import DOCS, strip_json_comments

REPO = Path(__file__).resolve().parents[2]


def errors_of(section: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"DefinedProcedureProtocol": section})
    return caught.value.errors


def test_missing_section_means_defaults():
    assert parse_settings({}) == Settings()
    assert Settings().port == 11112
    assert Settings().normalization == Normalization()
    assert Settings().approval_storers == frozenset()  # nobody stores approvals by DICOM


def test_all_keys_are_parsed():
    settings = parse_settings(
        {
            "DefinedProcedureProtocol": {
                "Enabled": False,
                "AETitle": " PROTOCOLS ",
                "CheckCalledAETitle": True,
                "Port": 104,
                "BindAddress": "::1",
                "MaximumAssociations": 3,
                "AcseTimeout": 5,
                "DimseTimeout": 6.5,
                "NetworkTimeout": 7,
                "MaximumPduSize": 0,
                "MaximumFindResults": 500,
                "ChangePollInterval": 0.5,
                "ReconcileInterval": 120,
                "PythonPath": "/opt/venv/site-packages",
                "ApprovalStorers": ["PROTOCOL_MGR", " QA "],
                "Normalization": {
                    "PatientID": "LIB",
                    "PatientName": "Lib",
                    "StudyDescription": "S",
                },
            }
        }
    )
    assert settings.enabled is False
    assert settings.ae_title == "PROTOCOLS"
    assert settings.check_called_ae_title is True
    assert (settings.port, settings.bind_address) == (104, "::1")
    assert settings.dimse_timeout == 6.5
    assert settings.maximum_pdu_size == 0
    assert settings.python_path == ("/opt/venv/site-packages",)
    assert settings.approval_storers == {"PROTOCOL_MGR", "QA"}
    assert settings.normalization == Normalization("LIB", "Lib", "S")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"Port": "11112"}, "DefinedProcedureProtocol.Port: must be a whole number"),
        ({"Port": 70000}, "DefinedProcedureProtocol.Port: must be between 1 and 65535"),
        ({"Port": True}, "DefinedProcedureProtocol.Port: must be a whole number"),
        ({"AETitle": "A" * 17}, "DefinedProcedureProtocol.AETitle: must be 1 to 16"),
        ({"AETitle": "BAD\\AE"}, "DefinedProcedureProtocol.AETitle: must be 1 to 16"),
        ({"AETitle": "   "}, "DefinedProcedureProtocol.AETitle: must be 1 to 16"),
        ({"BindAddress": "localhost"}, "DefinedProcedureProtocol.BindAddress: must be an IPv4"),
        ({"Enabled": "yes"}, "DefinedProcedureProtocol.Enabled: must be true or false"),
        ({"DimseTimeout": 0}, "DefinedProcedureProtocol.DimseTimeout: must be between 1"),
        ({"MaximumPduSize": 100}, "DefinedProcedureProtocol.MaximumPduSize: must be 0"),
        ({"MaximumAssociations": 0}, "DefinedProcedureProtocol.MaximumAssociations: must be"),
        ({"PythonPath": [1]}, "DefinedProcedureProtocol.PythonPath: must be a list"),
        ({"ApprovalStorers": "MGR"}, "DefinedProcedureProtocol.ApprovalStorers: must be a list"),
        (
            {"ApprovalStorers": ["MGR", "A" * 17]},
            f"DefinedProcedureProtocol.ApprovalStorers: holds '{'A' * 17}', which must be 1 to 16",
        ),
        ({"Prot": 1}, "DefinedProcedureProtocol.Prot: unknown key (known keys: AETitle"),
        (
            {"Normalization": {"PatientID": "A\\B"}},
            "DefinedProcedureProtocol.Normalization.PatientID: must be printable ASCII",
        ),
        (
            {"Normalization": {"PatientName": "x" * 65}},
            "DefinedProcedureProtocol.Normalization.PatientName: must be at most 64",
        ),
        (
            {"Normalization": {"Patient": "x"}},
            "DefinedProcedureProtocol.Normalization.Patient: unknown key",
        ),
        ({"Normalization": []}, "DefinedProcedureProtocol.Normalization: must be a JSON object"),
    ],
)
def test_bad_value_names_the_key(section, expected):
    errors = errors_of(section)
    assert len(errors) == 1
    assert errors[0].startswith(expected)


def test_every_problem_is_reported_at_once():
    errors = errors_of({"Port": -1, "AETitle": "", "Normalization": {"PatientID": ""}})
    assert [e.split(":")[0] for e in errors] == [
        "DefinedProcedureProtocol.Port",
        "DefinedProcedureProtocol.AETitle",
        "DefinedProcedureProtocol.Normalization.PatientID",
    ]


def test_section_must_be_an_object():
    assert errors_of([]) == ["DefinedProcedureProtocol: must be a JSON object"]


def test_shipped_orthanc_json_is_valid():
    configuration = json.loads(strip_json_comments((REPO / "orthanc.json").read_text()))
    settings = parse_settings(configuration)
    assert settings.bind_address == "127.0.0.1"
    # Its comment says the values shown are the defaults, BindAddress aside.
    assert dataclasses.replace(settings, bind_address=Settings().bind_address) == Settings()
    assert configuration["PythonScript"] == "plugin/dpp_plugin.py"


def test_every_key_is_documented_in_readme_and_shown_in_orthanc_json():
    """docs/configuration.md's table and the shipped orthanc.json name every key."""
    readme = (DOCS / "configuration.md").read_text()
    configuration = json.loads(strip_json_comments((REPO / "orthanc.json").read_text()))
    shown = configuration["DefinedProcedureProtocol"]
    for key in KEYS:
        assert f"| `{key}` |" in readme, f"{key} is missing from docs/configuration.md's table"
        assert key in shown, f"{key} is missing from orthanc.json"
    for key in NORMALIZATION_KEYS:
        assert f"| `Normalization.{key}` |" in readme
        assert key in shown["Normalization"]
