"""DICOM TLS for the DPP listener and for C-MOVE to modalities with ``UseDicomTls``.

Driven by Orthanc's own keys, so that one configuration secures both DICOM
ports: ``DicomTlsEnabled``, ``DicomTlsCertificate``, ``DicomTlsPrivateKey``,
``DicomTlsTrustedCertificates`` and ``DicomTlsRemoteCertificateRequired``
(default true, as in Orthanc). Each can be overridden in the plugin's
``"Tls"`` object (``Enabled``, ``Certificate``, ``PrivateKey``,
``TrustedCertificates``, ``RemoteCertificateRequired``), which also has
``MinimumProtocolVersion`` ("1.2", the default, or "1.3"). Orthanc's own
``DicomTlsMinimumProtocolVersion`` is not read: its numbers are Orthanc's
and DCMTK's, and it does not exist before Orthanc 1.12.4.

A peer's certificate is checked against the trusted certificates; the
peer's host name is not (modalities are reached by address, and Orthanc
does not check it either).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: Keys of the plugin's "Tls" object -> Orthanc's top-level key.
ORTHANC_KEYS: Final = {
    "Enabled": "DicomTlsEnabled",
    "Certificate": "DicomTlsCertificate",
    "PrivateKey": "DicomTlsPrivateKey",
    "TrustedCertificates": "DicomTlsTrustedCertificates",
    "RemoteCertificateRequired": "DicomTlsRemoteCertificateRequired",
}
VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
KNOWN_KEYS = sorted([*ORTHANC_KEYS, "MinimumProtocolVersion"])


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    trusted_certificates: str = ""
    remote_certificate_required: bool = True
    minimum_version: str = "1.2"


def parse_tls(
    orthanc_configuration: Mapping[str, Any], section: Any, base: Path
) -> tuple[TlsSettings, list[str]]:
    """TLS settings from Orthanc's keys and the plugin's ``Tls`` object; errors name the key.

    Relative file names are taken from ``base`` (the configuration's folder).
    """
    errors: list[str] = []
    prefix = "DefinedProcedureProtocol.Tls"
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return TlsSettings(), [f"{prefix}: must be a JSON object"]
    values: dict[str, Any] = {}
    for key, orthanc_key in ORTHANC_KEYS.items():
        if key in section:
            where, value = f"{prefix}.{key}", section[key]
        else:
            where, value = orthanc_key, orthanc_configuration.get(orthanc_key)
        if value is None:
            continue
        if key in ("Enabled", "RemoteCertificateRequired"):
            if not isinstance(value, bool):
                errors.append(f"{where}: must be true or false (got {value!r})")
                continue
        elif not isinstance(value, str) or not value:
            errors.append(f"{where}: must be a file name (got {value!r})")
            continue
        values[key] = value
    version = section.get("MinimumProtocolVersion", "1.2")
    if version not in VERSIONS:
        errors.append(f'{prefix}.MinimumProtocolVersion: must be "1.2" or "1.3" (got {version!r})')
        version = "1.2"
    unknown = set(section) - set(ORTHANC_KEYS) - {"MinimumProtocolVersion"}
    for key in sorted(unknown):
        errors.append(f"{prefix}.{key}: unknown key (known keys: {', '.join(KNOWN_KEYS)})")
    settings = TlsSettings(
        enabled=values.get("Enabled", False),
        certificate=_path(values.get("Certificate", ""), base),
        private_key=_path(values.get("PrivateKey", ""), base),
        trusted_certificates=_path(values.get("TrustedCertificates", ""), base),
        remote_certificate_required=values.get("RemoteCertificateRequired", True),
        minimum_version=version,
    )
    if settings.enabled:
        for key, path in (
            ("Certificate", settings.certificate),
            ("PrivateKey", settings.private_key),
            ("TrustedCertificates", settings.trusted_certificates),
        ):
            if not path:
                if key == "TrustedCertificates" and not settings.remote_certificate_required:
                    continue
                errors.append(
                    f"{ORTHANC_KEYS[key]} (or {prefix}.{key}): needed when DICOM TLS is enabled"
                )
            elif not Path(path).is_file():
                errors.append(f"{ORTHANC_KEYS[key]} (or {prefix}.{key}): no file {path}")
    return settings, errors


def _path(value: str, base: Path) -> str:
    return str(base / value) if value and not Path(value).is_absolute() else value


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """For the listener: our certificate; peers' certificates checked as configured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.minimum_version]
    context.load_cert_chain(settings.certificate, settings.private_key)
    if settings.trusted_certificates:
        context.load_verify_locations(settings.trusted_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.remote_certificate_required else ssl.CERT_OPTIONAL
        )
    return context


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """For C-MOVE destinations with ``UseDicomTls``: our certificate, theirs checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = VERSIONS[settings.minimum_version]
    context.check_hostname = False  # modalities are reached by address
    context.load_cert_chain(settings.certificate, settings.private_key)
    if settings.trusted_certificates:
        context.load_verify_locations(settings.trusted_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE  # RemoteCertificateRequired false
    return context
