"""Orthanc's DICOM modality list, as the DPP listener needs it.

Move destinations and peer permissions come from Orthanc's own modality list
(``DicomModalities``, or ``PUT /modalities/...`` at run time), read from
``GET /modalities?expand`` (docs/design.md, fact 14) so that the plugin and Orthanc
agree on who is who. This module only parses and matches: fetching the JSON
is the adapter's job, and a refresh swaps one immutable :class:`ModalityList`
for another in a :class:`ModalityRegistry`, so an association that already
holds a list never sees it change under its feet.

AET matching follows Orthanc 1.10.1 (``OrthancConfiguration::IsSameAETitle``
and ``LookupDicomModalityUsingAETitle``): case-insensitive unless the global
option ``StrictAetComparison`` is true, and when several modalities share an
AET the first one in symbolic-name order wins, because Orthanc keeps its
modalities in a map sorted by that name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger("orthanc_dpp.modalities")

# Orthanc lowercases with a byte-wise ASCII tolower; str.lower() would also
# fold non-ASCII letters, which AE titles (default repertoire) never carry
# but a misconfigured entry might.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Orthanc's permission flags and their JSON keys; all default to true when a
# key is absent (RemoteModalityParameters::Clear).
_FLAG_KEYS: Final[dict[str, str]] = {
    "allow_echo": "AllowEcho",
    "allow_find": "AllowFind",
    "allow_find_worklist": "AllowFindWorklist",
    "allow_get": "AllowGet",
    "allow_move": "AllowMove",
    "allow_store": "AllowStore",
    "allow_n_action": "AllowNAction",
    "allow_event_report": "AllowEventReport",
    "allow_transcoding": "AllowTranscoding",
}


class ModalityError(ValueError):
    """One modality entry cannot be understood."""


@dataclass(frozen=True)
class Modality:
    """One entry of Orthanc's modality list (RemoteModalityParameters)."""

    name: str  # Orthanc's symbolic name, the key in DicomModalities
    aet: str
    host: str
    port: int
    allow_echo: bool = True
    allow_find: bool = True
    allow_find_worklist: bool = True
    allow_get: bool = True
    allow_move: bool = True
    allow_store: bool = True
    allow_n_action: bool = True
    allow_event_report: bool = True
    allow_transcoding: bool = True
    use_dicom_tls: bool = False
    local_aet: str = ""
    manufacturer: str = "Generic"
    timeout: int = 0  # seconds; 0 means Orthanc's default

    def describe(self) -> str:
        """'name (AET@host:port)', for log lines and error comments."""
        return f"{self.name} ({self.aet}@{self.host}:{self.port})"


def aet_key(aet: str, strict: bool) -> str:
    """The form under which two AE titles compare equal.

    Leading and trailing spaces are insignificant in an AE value (PS3.5 6.2);
    DCMTK already strips them before Orthanc compares, so stripping here
    changes nothing for well-formed titles.
    """
    aet = aet.strip(" ")
    return aet if strict else aet.translate(_ASCII_LOWER)


def _port(value: Any) -> int:
    # Orthanc accepts the port as a number or a numeric string.
    if isinstance(value, bool):
        raise ModalityError("Port must be a number")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ModalityError(f"Port {value!r} is not a number") from None
    if not isinstance(value, int) or not 0 < value < 65536:
        raise ModalityError(f"Port {value!r} is not between 1 and 65535")
    return value


def _string(entry: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise ModalityError(f"{key} must be a string")
    return value


def _flag(entry: Mapping[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ModalityError(f"{key} must be true or false")
    return value


def parse_modality(name: str, entry: Any) -> Modality:
    """One entry, in Orthanc's object form or its old ``[AET, host, port(, maker)]`` form.

    ``/modalities?expand`` always answers the object form; the array form is
    accepted so that the same parser reads ``DicomModalities`` straight from
    the configuration.
    """
    if isinstance(entry, list):
        if len(entry) not in (3, 4) or not all(isinstance(v, str) for v in entry[:2]):
            raise ModalityError("must be [AET, host, port] or [AET, host, port, manufacturer]")
        maker = entry[3] if len(entry) == 4 else "Generic"
        if not isinstance(maker, str):
            raise ModalityError("manufacturer must be a string")
        return Modality(name, entry[0], entry[1], _port(entry[2]), manufacturer=maker)
    if not isinstance(entry, Mapping):
        raise ModalityError("must be a JSON object")
    if "Port" not in entry:
        raise ModalityError("Port is missing")
    timeout = entry.get("Timeout", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise ModalityError("Timeout must be a non-negative number of seconds")
    flags = {attr: _flag(entry, key, True) for attr, key in _FLAG_KEYS.items()}
    return Modality(
        name=name,
        aet=_string(entry, "AET"),
        host=_string(entry, "Host"),
        port=_port(entry["Port"]),
        use_dicom_tls=_flag(entry, "UseDicomTls", False),
        local_aet=_string(entry, "LocalAet", ""),
        manufacturer=_string(entry, "Manufacturer", "Generic"),
        timeout=timeout,
        **flags,
    )


@dataclass(frozen=True)
class ModalityList:
    """An immutable snapshot of Orthanc's modalities plus the options that match them.

    ``strict_aet_comparison`` and ``check_modality_host`` are Orthanc's global
    ``StrictAetComparison`` and ``DicomCheckModalityHost`` (both default false).
    ``problems`` lists entries that were skipped, one message each.
    """

    modalities: tuple[Modality, ...] = ()
    strict_aet_comparison: bool = False
    check_modality_host: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Symbolic-name order is Orthanc's lookup order (std::map iteration).
        ordered = tuple(sorted(self.modalities, key=lambda m: m.name))
        object.__setattr__(self, "modalities", ordered)

    def __len__(self) -> int:
        return len(self.modalities)

    def matching_aet(self, aet: str) -> tuple[Modality, ...]:
        """Every modality whose AET equals ``aet`` under Orthanc's comparison."""
        key = aet_key(aet, self.strict_aet_comparison)
        return tuple(
            m for m in self.modalities if aet_key(m.aet, self.strict_aet_comparison) == key
        )

    def resolve_destination(self, aet: str) -> Modality | None:
        """The C-MOVE destination Orthanc would pick for ``aet``, or None if unknown."""
        found = self.matching_aet(aet)
        return found[0] if found else None


def parse_modalities(
    data: Any, *, strict_aet_comparison: bool = False, check_modality_host: bool = False
) -> ModalityList:
    """Build a :class:`ModalityList` from ``/modalities?expand`` (or ``DicomModalities``).

    A bad entry is skipped and reported in ``problems`` rather than failing the
    whole list: one typo must not make every destination unknown.
    """
    if not isinstance(data, Mapping):
        raise ModalityError("the modality list must be a JSON object keyed by name")
    modalities: list[Modality] = []
    problems: list[str] = []
    for name, entry in data.items():
        try:
            modalities.append(parse_modality(str(name), entry))
        except ModalityError as exc:
            problems.append(f"modality {name!r}: {exc}")
    return ModalityList(
        tuple(modalities),
        strict_aet_comparison=strict_aet_comparison,
        check_modality_host=check_modality_host,
        problems=tuple(problems),
    )


class ModalityRegistry:
    """Holds the current :class:`ModalityList`; swapped whole on refresh.

    Readers take :attr:`current` once per request and keep using that
    snapshot, so a concurrent refresh is never seen half-done.
    """

    def __init__(self, initial: ModalityList | None = None) -> None:
        self._lock = threading.Lock()
        self._current = initial if initial is not None else ModalityList()

    @property
    def current(self) -> ModalityList:
        with self._lock:
            return self._current

    def replace(self, modalities: ModalityList) -> None:
        with self._lock:
            self._current = modalities

    def refresh(
        self,
        fetch: Callable[[], Any],
        *,
        strict_aet_comparison: bool = False,
        check_modality_host: bool = False,
    ) -> bool:
        """Re-read the list with ``fetch`` (returns the parsed JSON); keep the old one on error.

        Called on Orthanc's UPDATED_MODALITIES change and periodically. A
        failed fetch is logged and leaves the previous list in place, since a
        stale list is better than none. Returns whether the list was replaced.
        """
        try:
            fresh = parse_modalities(
                fetch(),
                strict_aet_comparison=strict_aet_comparison,
                check_modality_host=check_modality_host,
            )
        except Exception as exc:  # the fetch may fail in many ways; none may escape
            log.error("cannot refresh the DICOM modality list, keeping the old one: %s", exc)
            return False
        for problem in fresh.problems:
            log.warning("ignoring %s", problem)
        self.replace(fresh)
        return True


def matching_options(orthanc_configuration: Mapping[str, Any]) -> dict[str, bool]:
    """Orthanc's ``StrictAetComparison`` and ``DicomCheckModalityHost``, with its defaults.

    Pass the result as keyword arguments to :func:`parse_modalities` or
    :meth:`ModalityRegistry.refresh`. Orthanc reads these with
    ``GetBooleanParameter``, so anything but a JSON boolean is an error there;
    here a non-boolean falls back to the default rather than blocking retrieval.
    """
    keys = {
        "strict_aet_comparison": "StrictAetComparison",
        "check_modality_host": "DicomCheckModalityHost",
    }
    options = {}
    for attribute, key in keys.items():
        value = orthanc_configuration.get(key, False)
        options[attribute] = value if isinstance(value, bool) else False
    return options
