"""The ``"DefinedProcedureProtocol"`` section of ``orthanc.json``.

Parsed and validated in this one place into an immutable :class:`Settings`.
Every problem is collected (not just the first) and names its key, because
an administrator editing JSON wants the whole list at once. A bad section
keeps the DPP listener down but never takes Orthanc down.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from orthanc_dpp.dicom.access import Service, parse_unknown_callers
from orthanc_dpp.dicom.tls import TlsSettings, parse_tls
from orthanc_dpp.model.normalization import Normalization

SECTION = "DefinedProcedureProtocol"

# PS3.5 6.2: AE is 16 characters of the default repertoire without
# backslash or control characters; leading/trailing spaces are insignificant.
_AE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
# Normalization labels go into LO/PN values of datasets of any character
# set, so they are restricted to printable ASCII without backslash.
_LABEL_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")


class ConfigError(Exception):
    """The section is invalid; ``errors`` lists one message per bad key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Settings:
    """Validated plugin settings; defaults are what an unset key means."""

    enabled: bool = True
    ae_title: str = "ORTHANC_DPP"
    check_called_ae_title: bool = False
    port: int = 11112
    bind_address: str = "0.0.0.0"
    maximum_associations: int = 10
    maximum_connections_per_address: int = 5
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    maximum_pdu_size: int = 16382
    maximum_find_results: int = 0
    maximum_dataset_size: int = 16 << 20
    maximum_upload_size: int = 64 << 20
    maximum_nesting_depth: int = 8
    maximum_values_per_key: int = 10_000
    find_time_limit: float = 600.0
    find_response_cache_size: int = 64  # MiB of encoded C-FIND responses kept
    change_poll_interval: float = 1.0
    reconcile_interval: float = 60.0
    snapshot_interval: float = 60.0
    fast_index_load: bool = True
    python_path: tuple[str, ...] = ()
    unknown_callers: frozenset[Service] | None = None  # None: as Orthanc
    unknown_callers_may_store: bool = False
    # AE titles that may C-STORE Protocol Approvals (besides being allowed to store).
    approval_storers: frozenset[str] = frozenset()
    # Of MaximumAssociations; the rest is kept for declared modalities.
    unknown_callers_maximum_associations: int = 2
    report_missing_instances: bool = True
    pending_response_interval: float = 1.0
    # "auto": only where calls into Orthanc release the interpreter lock.
    received_instance_hook: bool | str = "auto"
    normalization: Normalization = field(default_factory=Normalization)
    tls: TlsSettings = field(default_factory=TlsSettings)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number of seconds")
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return float(value)

    return check


def _ae_title(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not _AE_PATTERN.match(value) or not value.strip():
        raise ValueError(
            "must be 1 to 16 printable ASCII characters, not all spaces, without backslash"
        )
    return value.strip()


def _ae_titles(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ValueError('must be a list of AE titles, such as ["PROTOCOL_MGR"]')
    titles = set()
    for title in value:
        try:
            titles.add(_ae_title(title))
        except ValueError as exc:
            raise ValueError(f"holds {str(title)[:32]!r}, which {exc}") from None
    return frozenset(titles)


def _bind_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address such as 0.0.0.0 or 127.0.0.1") from None
    return value


def _pdu_size(value: Any) -> int:
    size = _int_range(0, 2**32 - 1)(value)
    if 0 < size < 4096:
        raise ValueError("must be 0 (unlimited) or at least 4096 bytes")
    return size


def _auto_or_bool(value: Any) -> bool | str:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError('must be "auto", true or false')


def _path_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of directory paths")
    return tuple(value)


def _label(max_length: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a non-empty string")
        if not _LABEL_PATTERN.match(value):
            raise ValueError("must be printable ASCII without backslash")
        if len(value) > max_length:
            raise ValueError(f"must be at most {max_length} characters")
        return value

    return check


# key -> (attribute of Settings, validator)
KEYS: Final[dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "Enabled": ("enabled", _bool),
    "AETitle": ("ae_title", _ae_title),
    "CheckCalledAETitle": ("check_called_ae_title", _bool),
    "Port": ("port", _int_range(1, 65535)),
    "BindAddress": ("bind_address", _bind_address),
    "MaximumAssociations": ("maximum_associations", _int_range(1, 1000)),
    "MaximumConnectionsPerAddress": ("maximum_connections_per_address", _int_range(1, 1000)),
    "AcseTimeout": ("acse_timeout", _seconds(1, 3600)),
    "DimseTimeout": ("dimse_timeout", _seconds(1, 3600)),
    "NetworkTimeout": ("network_timeout", _seconds(1, 3600)),
    "MaximumPduSize": ("maximum_pdu_size", _pdu_size),
    "MaximumFindResults": ("maximum_find_results", _int_range(0, 10**9)),
    "MaximumDatasetSize": ("maximum_dataset_size", _int_range(64 << 10, 2**31 - 1)),
    "MaximumUploadSize": ("maximum_upload_size", _int_range(64 << 10, 2**31 - 1)),
    "MaximumNestingDepth": ("maximum_nesting_depth", _int_range(1, 64)),
    "MaximumValuesPerKey": ("maximum_values_per_key", _int_range(1, 10**6)),
    "FindTimeLimit": ("find_time_limit", _seconds(1, 86400)),
    "FindResponseCacheSize": ("find_response_cache_size", _int_range(0, 1 << 20)),
    "ChangePollInterval": ("change_poll_interval", _seconds(0.1, 3600)),
    "ReconcileInterval": ("reconcile_interval", _seconds(1, 86400)),
    "SnapshotInterval": ("snapshot_interval", _seconds(1, 86400)),
    "FastIndexLoad": ("fast_index_load", _bool),
    "PythonPath": ("python_path", _path_list),
    "UnknownCallers": ("unknown_callers", parse_unknown_callers),
    "UnknownCallersMayStore": ("unknown_callers_may_store", _bool),
    "ApprovalStorers": ("approval_storers", _ae_titles),
    "UnknownCallersMaximumAssociations": (
        "unknown_callers_maximum_associations",
        _int_range(1, 1000),
    ),
    "ReportMissingInstances": ("report_missing_instances", _bool),
    "PendingResponseInterval": ("pending_response_interval", _seconds(0, 3600)),
    "ReceivedInstanceHook": ("received_instance_hook", _auto_or_bool),
}

NORMALIZATION_KEYS: Final[dict[str, tuple[str, Callable[[Any], Any]]]] = {
    "PatientID": ("patient_id", _label(64)),
    "PatientName": ("patient_name", _label(64)),
    "StudyDescription": ("study_description", _label(64)),
}


def _parse_object(
    raw: Any, prefix: str, keys: Mapping[str, tuple[str, Callable[[Any], Any]]], errors: list[str]
) -> dict[str, Any]:
    """Validate one JSON object against ``keys``; append problems to ``errors``."""
    if not isinstance(raw, dict):
        errors.append(f"{prefix}: must be a JSON object")
        return {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in keys:
            known = ", ".join(sorted(keys))
            errors.append(f"{prefix}.{key}: unknown key (known keys: {known})")
            continue
        attribute, validate = keys[key]
        try:
            values[attribute] = validate(value)
        except ValueError as exc:
            errors.append(f"{prefix}.{key}: {exc} (got {value!r})")
    return values


def parse_settings(orthanc_configuration: Mapping[str, Any], base: Path | None = None) -> Settings:
    """Build :class:`Settings` from Orthanc's whole configuration.

    A missing section means all defaults. Raises :class:`ConfigError` naming
    every bad key, including unknown ones (Orthanc itself ignores unknown
    keys silently, which hides typos).
    """
    raw = orthanc_configuration.get(SECTION, {})
    errors: list[str] = []
    raw_tls: Any = None
    if isinstance(raw, dict):
        raw = dict(raw)
        raw_normalization = raw.pop("Normalization", {})
        raw_tls = raw.pop("Tls", None)
    else:
        raw_normalization = {}
    tls, tls_errors = parse_tls(orthanc_configuration, raw_tls, base or Path("."))
    values = _parse_object(raw, SECTION, KEYS, errors)
    normalization = _parse_object(
        raw_normalization, f"{SECTION}.Normalization", NORMALIZATION_KEYS, errors
    )
    errors += tls_errors
    if errors:
        raise ConfigError(errors)
    return Settings(**values, normalization=Normalization(**normalization), tls=tls)
