"""DICOM TLS settings: Orthanc's keys, the plugin's overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

from orthanc_dpp.config import ConfigError, parse_settings
from orthanc_dpp.dicom.tls import TlsSettings, parse_tls


def files(folder: Path) -> dict[str, str]:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (folder / name).write_text("x")
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": "cert.pem",
        "DicomTlsPrivateKey": str(folder / "key.pem"),
        "DicomTlsTrustedCertificates": "ca.pem",
    }


def test_off_by_default() -> None:
    assert parse_tls({}, None, Path("/etc/orthanc")) == (TlsSettings(), [])


def test_orthanc_keys_are_used_and_relative_paths_resolved(tmp_path: Path) -> None:
    settings, errors = parse_tls(files(tmp_path), None, tmp_path)
    assert errors == []
    assert settings.enabled and settings.remote_certificate_required
    assert settings.certificate == str(tmp_path / "cert.pem")
    assert settings.trusted_certificates == str(tmp_path / "ca.pem")


def test_plugin_section_overrides(tmp_path: Path) -> None:
    section = {"RemoteCertificateRequired": False, "MinimumProtocolVersion": "1.3"}
    settings, errors = parse_tls(files(tmp_path), section, tmp_path)
    assert errors == [] and not settings.remote_certificate_required
    assert settings.minimum_version == "1.3"
    off, _ = parse_tls(files(tmp_path), {"Enabled": False}, tmp_path)
    assert not off.enabled


def test_errors_name_the_key(tmp_path: Path) -> None:
    configuration = files(tmp_path)
    configuration["DicomTlsPrivateKey"] = "missing.key"
    section = {"MinimumProtocolVersion": "1.0", "Cert": "x"}
    _, errors = parse_tls(configuration, section, tmp_path)
    assert errors == [
        'DefinedProcedureProtocol.Tls.MinimumProtocolVersion: must be "1.2" or "1.3" (got \'1.0\')',
        "DefinedProcedureProtocol.Tls.Cert: unknown key (known keys: Certificate, Enabled, "
        "MinimumProtocolVersion, PrivateKey, RemoteCertificateRequired, TrustedCertificates)",
        f"DicomTlsPrivateKey (or DefinedProcedureProtocol.Tls.PrivateKey): no file "
        f"{tmp_path / 'missing.key'}",
    ]


def test_bad_tls_keeps_the_listener_down_with_the_reason(tmp_path: Path) -> None:
    configuration = {"DicomTlsEnabled": True, "DefinedProcedureProtocol": {}}
    try:
        parse_settings(configuration, tmp_path)
    except ConfigError as exc:
        assert (
            "DicomTlsCertificate (or DefinedProcedureProtocol.Tls.Certificate): needed"
            in (exc.errors[0])
        )
    else:
        raise AssertionError("TLS without a certificate was accepted")
