"""Who may use which DIMSE service of the DPP listener.

By default the answer is Orthanc's own (Orthanc 1.10.1,
``OrthancApplicationEntityFilter::IsAllowedRequest`` in ``main.cpp``), so an
administrator configures one modality list for both listeners:

1. ``DicomAlwaysAllowEcho`` / ``Store`` (default true) and
   ``DicomAlwaysAllowFind`` / ``Get`` / ``Move`` (default false) allow that
   service to every caller, known or not, whatever its modality flags say.
2. Otherwise the calling AET is looked up in the modality list (see
   :mod:`orthanc_dpp.dicom.modalities` for the AET comparison). Unknown: refused.
3. One modality with that AET: refused if ``DicomCheckModalityHost`` is on
   and the peer's address differs from its Host, else its ``Allow*`` flag.
4. Several modalities with that AET: allowed if one that allows the service
   has the peer's Host (with the host check on), or if all of them allow it.

Orthanc refuses by aborting the association; the plugin instead answers the
request with 0x0124 "Refused: Not Authorized" where PS3.7 lists it (C-STORE
9.1.1.1.9, C-GET 9.1.3.1.6, C-MOVE 9.1.4.1.7), which tells the caller why.
PS3.7 does not list it for C-FIND (9.1.2.1.6) or C-ECHO (9.1.5.1.4): those
services need another refusal (a 0xCxxx failure, or an abort as in Orthanc).

The plugin's own knob ``UnknownCallers`` can replace step 1 with an explicit
list of services open to callers that are not in the modality list.

The same rules judge an association before it is accepted
(:func:`judge_caller`): a caller they would refuse every service is
rejected at once, and callers not declared in the list share only
``UnknownCallersMaximumAssociations`` of the association slots (see
:mod:`orthanc_dpp.dicom.admission`).

One deliberate difference: writing the protocol library is a privilege.
``DicomAlwaysAllowStore`` (true by default, meant for images) does not open
C-STORE on the DPP listener: only modalities declared with ``AllowStore``
may store protocols, unless ``UnknownCallersMayStore`` (or ``"Store"`` in an
``UnknownCallers`` list) says otherwise. A protocol decides how a scanner
irradiates patients; an unknown peer must not be able to add or replace one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from orthanc_dpp.dicom.modalities import Modality, ModalityList, ModalityRegistry

log = logging.getLogger("orthanc_dpp.access")


class Service(StrEnum):
    """DIMSE services of the DPP listener, named as in Orthanc's options."""

    ECHO = "Echo"
    FIND = "Find"
    GET = "Get"
    MOVE = "Move"
    STORE = "Store"


# Orthanc's per-modality flag for each service. DPP C-FIND is not a
# worklist query, so it is governed by AllowFind, not AllowFindWorklist.
_MODALITY_FLAG: Final[dict[Service, str]] = {
    Service.ECHO: "allow_echo",
    Service.FIND: "allow_find",
    Service.GET: "allow_get",
    Service.MOVE: "allow_move",
    Service.STORE: "allow_store",
}

#: Orthanc 1.10.1's ``DicomAlwaysAllow*`` options and their defaults.
#: (``DicomAlwaysAllowFindWorklist`` also exists but concerns worklists only.)
ORTHANC_ALWAYS_ALLOW_DEFAULTS: Final[dict[Service, bool]] = {
    Service.ECHO: True,
    Service.FIND: False,
    Service.GET: False,
    Service.MOVE: False,
    Service.STORE: True,
}


@dataclass(frozen=True)
class AccessPolicy:
    """Everything a decision needs besides the modality list.

    ``always_allowed``: the services whose ``DicomAlwaysAllow*`` option is true.
    ``unknown_callers``: the plugin's ``UnknownCallers`` setting; None means
    "as Orthanc" (step 1 above applies), a set means: callers not in the
    modality list may use exactly these services, and known callers are
    judged by their own flags only.
    """

    always_allowed: frozenset[Service] = frozenset(
        s for s, on in ORTHANC_ALWAYS_ALLOW_DEFAULTS.items() if on and s != Service.STORE
    )
    unknown_callers: frozenset[Service] | None = None

    @classmethod
    def from_orthanc(
        cls,
        orthanc_configuration: Mapping[str, Any],
        unknown_callers: frozenset[Service] | None = None,
        *,
        unknown_may_store: bool = False,
    ) -> AccessPolicy:
        """Read the ``DicomAlwaysAllow*`` options (all but Store) from Orthanc's configuration.

        ``unknown_may_store`` is the plugin's ``UnknownCallersMayStore``: it
        takes the place of ``DicomAlwaysAllowStore`` for the DPP listener.
        """
        allowed: set[Service] = set()
        for service, default in ORTHANC_ALWAYS_ALLOW_DEFAULTS.items():
            if service == Service.STORE:
                continue
            value = orthanc_configuration.get(f"DicomAlwaysAllow{service.value}", default)
            if value if isinstance(value, bool) else default:
                allowed.add(service)
        if unknown_may_store:
            allowed.add(Service.STORE)
            if unknown_callers is not None:
                unknown_callers = unknown_callers | {Service.STORE}
        return cls(frozenset(allowed), unknown_callers)


@dataclass(frozen=True)
class Decision:
    """The verdict, with a reason fit for a log line and an Error Comment."""

    allowed: bool
    reason: str
    modality: Modality | None = None

    def __bool__(self) -> bool:
        return self.allowed


def parse_unknown_callers(value: Any) -> frozenset[Service] | None:
    """Validate the ``UnknownCallers`` key of the plugin section.

    ``"Orthanc"`` (the default) follows Orthanc's ``DicomAlwaysAllow*``
    options; a list such as ``["Echo", "Find", "Get"]`` opens exactly those
    services to callers that are not in the modality list (``[]``: known
    modalities only). Raises ValueError with a message for the config parser.
    """
    if value == "Orthanc":
        return None
    names = ", ".join(s.value for s in Service)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'must be "Orthanc" or a list of service names ({names})')
    services = set()
    for item in value:
        try:
            services.add(Service(item))
        except ValueError:
            raise ValueError(f"unknown service {item!r} (known: {names})") from None
    return frozenset(services)


def _known_caller(
    service: Service, found: Iterable[Modality], host: str, check_host: bool, aet: str
) -> Decision:
    """Steps 3 and 4: the caller's AET is in the list."""
    found = tuple(found)
    flag = _MODALITY_FLAG[service]
    if len(found) == 1:
        modality = found[0]
        if check_host and host != modality.host:
            return Decision(
                False,
                f"{aet} must call from {modality.host}, not {host} (DicomCheckModalityHost)",
                modality,
            )
        if getattr(modality, flag):
            return Decision(True, f"modality {modality.name} allows {service}", modality)
        return Decision(False, f"modality {modality.name} does not allow {service}", modality)
    # Several entries share the AET: Orthanc takes the one on the peer's host
    # if the host check is on, else requires every entry to allow the service.
    allowing = [m for m in found if getattr(m, flag)]
    if check_host:
        for modality in allowing:
            if modality.host == host:
                return Decision(True, f"modality {modality.name} allows {service}", modality)
    if len(allowing) == len(found):
        return Decision(True, f"all {len(found)} modalities {aet} allow {service}", found[0])
    return Decision(False, f"not all {len(found)} modalities with AET {aet} allow {service}", None)


def decide(
    policy: AccessPolicy,
    modalities: ModalityList,
    service: Service,
    calling_aet: str,
    peer_host: str,
) -> Decision:
    """May ``calling_aet`` at ``peer_host`` use ``service``?"""
    if policy.unknown_callers is None and service in policy.always_allowed:
        return Decision(True, f"DicomAlwaysAllow{service} is true")
    found = modalities.matching_aet(calling_aet)
    if found:
        return _known_caller(service, found, peer_host, modalities.check_modality_host, calling_aet)
    if policy.unknown_callers is not None and service in policy.unknown_callers:
        return Decision(True, f"UnknownCallers allows {service}")
    return Decision(False, f"AET {calling_aet} is not in Orthanc's DicomModalities")


@dataclass(frozen=True)
class Standing:
    """Who is asking for an association, judged before it is accepted.

    ``declared``: the calling AET is in the modality list and, with
    ``DicomCheckModalityHost``, the peer calls from that modality's Host;
    such callers may use every association slot, others only
    ``UnknownCallersMaximumAssociations`` of them. ``rights``: the services
    :func:`decide` would allow this caller; none at all means that the
    association is rejected outright.
    """

    declared: bool
    rights: frozenset[Service]

    @property
    def reason(self) -> str:
        """Why a caller without rights is rejected, for the log line."""
        if self.declared:
            return "its modality allows no DIMSE service (Allow* flags)"
        return "not in Orthanc's DicomModalities, and no service is open to unknown callers"


def judge_caller(
    policy: AccessPolicy, modalities: ModalityList, calling_aet: str, peer_host: str
) -> Standing:
    """The :class:`Standing` of ``calling_aet`` at ``peer_host``."""
    found = modalities.matching_aet(calling_aet)
    declared = bool(found) and (
        not modalities.check_modality_host or any(m.host == peer_host for m in found)
    )
    rights = frozenset(s for s in Service if decide(policy, modalities, s, calling_aet, peer_host))
    return Standing(declared, rights)


def describe_requestor(assoc: Any) -> str:
    """'AET@host:port' of an association's requestor, for log lines."""
    info = assoc.requestor
    return f"{info.ae_title}@{info.address}:{info.port}"


class Gatekeeper:
    """Per-service permission of the calling peer, from Orthanc's modality list.

    The one place every DIMSE service asks; a refusal is logged here with the
    caller, its address and the rule, while the peer only hears "not
    authorised".
    """

    def __init__(self, modalities: ModalityRegistry, policy: AccessPolicy) -> None:
        self.modalities = modalities
        self.policy = policy

    def check(
        self, assoc: Any, service: Service, modalities: ModalityList | None = None
    ) -> Decision:
        """Whether ``assoc``'s requestor may use ``service``.

        ``modalities`` is the snapshot of the modality list the caller works
        with for the rest of the request (C-MOVE looks its destination up in
        it); by default the current one.
        """
        info = assoc.requestor
        current = self.modalities.current if modalities is None else modalities
        decision = decide(self.policy, current, service, info.ae_title, info.address)
        if not decision:
            log.warning(
                "C-%s from %s refused: %s",
                service.upper(),
                describe_requestor(assoc),
                decision.reason,
            )
        return decision

    def caller(self, calling_aet: str, peer_host: str) -> Standing:
        """The standing of an association requestor, from the current modality list."""
        return judge_caller(self.policy, self.modalities.current, calling_aet, peer_host)
