"""The stand-in base images' own logic (tools/standins/), without Docker.

make test-docker runs the image on them; these check, quickly and here,
that the Orthanc stand-in's configuration follows the documented contract
our Dockerfile and compose file rely on, and that their scripts are sound.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tools" / "standins"


@pytest.fixture
def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "standin_configure", STANDINS / "orthanc" / "configure.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "etc").mkdir()
    (tmp_path / "secrets").mkdir()
    monkeypatch.setattr(module, "CONFIGURATION_FOLDER", str(tmp_path / "etc"))
    monkeypatch.setattr(module, "SECRETS", tmp_path / "secrets")
    return module


def configuration(module: ModuleType, env: dict[str, str]) -> dict:
    return module.configuration({"ORTHANC_PASSWORD": "pw", **env}, module.CONFIGURATION_FOLDER)


def test_environment_names_become_keys_and_values_json(configure: ModuleType) -> None:
    merged = configuration(
        configure,
        {
            "ORTHANC__DEFINED_PROCEDURE_PROTOCOL__A_E_TITLE": "MY_DPP",
            "ORTHANC__DEFINED_PROCEDURE_PROTOCOL__NORMALIZATION__PATIENT_I_D": "P",
            "ORTHANC__DEFINED_PROCEDURE_PROTOCOL__RECONCILE_INTERVAL": "30",
            "ORTHANC__POSTGRESQL__ENABLE_INDEX": "true",
            "ORTHANC__HTTP_BIND_ADDRESSES": '["127.0.0.1"]',
            "OTHER": "ignored",
        },
    )
    section = merged["DefinedProcedureProtocol"]
    assert section["AETitle"] == "MY_DPP"
    assert section["Normalization"] == {"PatientID": "P"}
    assert section["ReconcileInterval"] == 30
    assert merged["PostgreSQL"] == {"EnableIndex": True}
    assert merged["HttpBindAddresses"] == ["127.0.0.1"]
    assert "Other" not in merged and "OTHER" not in merged


def test_files_merge_in_name_order_then_the_environment(configure: ModuleType) -> None:
    folder = Path(configure.CONFIGURATION_FOLDER)
    (folder / "a.json").write_text(json.dumps({"Name": "a", "S": {"X": 1, "Y": 1}}))
    (folder / "b.json").write_text(json.dumps({"Name": "b", "S": {"Y": 2}}))
    (folder / "notes.txt").write_text("not configuration")
    merged = configuration(configure, {"ORTHANC__S__Z": "3"})
    assert merged["Name"] == "b"
    assert merged["S"] == {"X": 1, "Y": 2, "Z": 3}
    assert merged["StorageDirectory"] == "/var/lib/orthanc/db"


def test_secrets_and_the_password(configure: ModuleType) -> None:
    (configure.SECRETS / "db").write_text("s3cret\n")
    merged = configuration(configure, {"ORTHANC__POSTGRESQL__PASSWORD_SECRET": "db"})
    assert merged["PostgreSQL"]["Password"] == "s3cret"
    assert merged["RegisteredUsers"] == {"orthanc": "pw"}
    with pytest.raises(configure.Refused, match="ORTHANC__X_SECRET=missing: cannot read"):
        configuration(configure, {"ORTHANC__X_SECRET": "missing"})


def test_no_user_with_authentication_and_remote_access_is_refused(
    configure: ModuleType,
) -> None:
    with pytest.raises(configure.Refused, match="no user is registered"):
        configure.configuration({}, configure.CONFIGURATION_FOLDER)
    merged = configure.configuration(
        {"ORTHANC__AUTHENTICATION_ENABLED": "false"}, configure.CONFIGURATION_FOLDER
    )
    assert merged["AuthenticationEnabled"] is False


def test_plugins_load_only_when_their_section_is_configured(configure: ModuleType) -> None:
    plugins = configure.PLUGINS
    assert configuration(configure, {})["Plugins"] == []
    python = configuration(configure, {"ORTHANC__PYTHON_SCRIPT": "/x.py"})["Plugins"]
    assert python == [str(plugins / "libOrthancPython.so")]
    postgres = configuration(configure, {"ORTHANC__POSTGRESQL__HOST": "db"})["Plugins"]
    assert postgres == [
        str(plugins / "libOrthancPostgreSQLIndex.so"),
        str(plugins / "libOrthancPostgreSQLStorage.so"),
    ]


def test_main_writes_the_file_or_says_why_not(
    configure: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "orthanc.json"
    monkeypatch.setenv("ORTHANC_PASSWORD", "pw")
    assert configure.main(["configure.py", str(target)]) == 0
    assert json.loads(target.read_text())["RegisteredUsers"] == {"orthanc": "pw"}
    assert target.stat().st_mode & 0o777 == 0o600
    (Path(configure.CONFIGURATION_FOLDER) / "bad.json").write_text("{")
    assert configure.main(["configure.py", str(target)]) == 1
    assert "not starting Orthanc: " in capsys.readouterr().err


def test_standin_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = sorted(STANDINS.glob("*/*.sh"))
    assert {s.parent.name for s in scripts} == {"orthanc", "postgres"}
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_standin_dockerfiles_pass_hadolint() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.skip("hadolint is not installed (requirements-dev.txt)")
    files = sorted(STANDINS.glob("*/Dockerfile"))
    assert len(files) == 2
    result = subprocess.run(
        [binary, "--failure-threshold", "style", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_standins_are_never_named_as_the_real_images(monkeypatch: pytest.MonkeyPatch) -> None:
    path = REPO / "tools" / "docker_images.py"
    spec = importlib.util.spec_from_file_location("docker_images", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "docker_images", module)  # for its dataclasses
    monkeypatch.syspath_prepend(str(path.parent))
    spec.loader.exec_module(module)
    for stand_in in module.STAND_INS:
        assert stand_in.image.startswith("dpp-standin/"), stand_in.image
