"""Who may use which service: Orthanc 1.10.1's rules plus the UnknownCallers knob."""

from __future__ import annotations

import pytest

from orthanc_dpp.dicom.access import (
    AccessPolicy,
    Service,
    Standing,
    decide,
    judge_caller,
    parse_unknown_callers,
)
from orthanc_dpp.dicom.modalities import parse_modalities

MODALITIES = {
    "ct": {"AET": "CT1", "Host": "10.0.0.1", "Port": 104, "AllowStore": False},
    "ws": {"AET": "WS", "Host": "10.0.0.9", "Port": 104, "AllowMove": False},
}
ORTHANC = AccessPolicy()  # Orthanc's defaults: Echo always allowed; Store not for protocols


def test_orthanc_defaults() -> None:
    assert AccessPolicy.from_orthanc({}) == ORTHANC
    assert ORTHANC.always_allowed == {Service.ECHO}


def test_from_orthanc_reads_the_always_allow_options() -> None:
    policy = AccessPolicy.from_orthanc(
        {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True}
    )
    assert policy.always_allowed == {Service.GET, Service.MOVE}


def test_dicom_always_allow_store_does_not_open_the_protocol_library() -> None:
    mods = parse_modalities(MODALITIES)
    policy = AccessPolicy.from_orthanc({"DicomAlwaysAllowStore": True})
    assert not decide(policy, mods, Service.STORE, "STRANGER", "192.168.0.1")
    assert decide(policy, mods, Service.STORE, "WS", "10.0.0.9")  # declared, AllowStore
    assert not decide(policy, mods, Service.STORE, "CT1", "10.0.0.1")  # AllowStore false
    opened = AccessPolicy.from_orthanc({}, unknown_may_store=True)
    assert decide(opened, mods, Service.STORE, "STRANGER", "192.168.0.1")
    listed = AccessPolicy.from_orthanc({}, frozenset({Service.FIND}), unknown_may_store=True)
    assert decide(listed, mods, Service.STORE, "STRANGER", "192.168.0.1")


def test_unknown_caller_gets_only_always_allowed_services() -> None:
    mods = parse_modalities(MODALITIES)
    for service in Service:
        verdict = decide(ORTHANC, mods, service, "STRANGER", "192.168.0.1")
        assert bool(verdict) == (service == Service.ECHO), service
    refused = decide(ORTHANC, mods, Service.GET, "STRANGER", "192.168.0.1")
    assert "DicomModalities" in refused.reason


def test_known_caller_is_judged_by_its_flags_case_insensitively() -> None:
    mods = parse_modalities(MODALITIES)
    assert decide(ORTHANC, mods, Service.GET, "ct1", "10.0.0.1")
    assert decide(ORTHANC, mods, Service.MOVE, "CT1", "anywhere")  # host not checked
    verdict = decide(ORTHANC, mods, Service.MOVE, "WS", "10.0.0.9")
    assert not verdict and "does not allow Move" in verdict.reason
    assert verdict.modality is not None and verdict.modality.name == "ws"


def test_always_allow_overrides_a_known_modalitys_flag() -> None:
    # Orthanc checks DicomAlwaysAllow* before looking at the modality:
    # WS has AllowMove false but may still move when DicomAlwaysAllowMove is on.
    mods = parse_modalities(MODALITIES)
    assert not decide(ORTHANC, mods, Service.MOVE, "WS", "10.0.0.9")
    moving = AccessPolicy.from_orthanc({"DicomAlwaysAllowMove": True})
    assert decide(moving, mods, Service.MOVE, "WS", "10.0.0.9")


def test_strict_aet_comparison() -> None:
    mods = parse_modalities(MODALITIES, strict_aet_comparison=True)
    assert not decide(ORTHANC, mods, Service.GET, "ct1", "10.0.0.1")
    assert decide(ORTHANC, mods, Service.GET, "CT1", "10.0.0.1")


def test_check_modality_host_compares_the_host_string() -> None:
    mods = parse_modalities(MODALITIES, check_modality_host=True)
    assert decide(ORTHANC, mods, Service.GET, "CT1", "10.0.0.1")
    verdict = decide(ORTHANC, mods, Service.GET, "CT1", "10.0.0.2")
    assert not verdict and "10.0.0.1" in verdict.reason
    # Always-allowed services are granted before any host check, as in Orthanc.
    assert decide(ORTHANC, mods, Service.ECHO, "CT1", "10.0.0.2")


def test_several_modalities_with_one_aet() -> None:
    data = {
        "a": {"AET": "DUP", "Host": "10.0.0.1", "Port": 1, "AllowGet": True},
        "b": {"AET": "DUP", "Host": "10.0.0.2", "Port": 1, "AllowGet": False},
        "c": {"AET": "DUP", "Host": "10.0.0.3", "Port": 1, "AllowMove": True},
    }
    lax = parse_modalities(data)
    checked = parse_modalities(data, check_modality_host=True)
    # Host check on: the entry on the peer's host decides if it allows.
    assert decide(ORTHANC, checked, Service.GET, "DUP", "10.0.0.1")
    assert not decide(ORTHANC, checked, Service.GET, "DUP", "10.0.0.2")
    # Host check off: every entry must allow it.
    assert not decide(ORTHANC, lax, Service.GET, "DUP", "10.0.0.1")
    assert decide(ORTHANC, lax, Service.MOVE, "DUP", "10.0.0.7")
    # Orthanc quirk kept on purpose: if all entries allow the service, the
    # host check does not apply (OrthancApplicationEntityFilter, main.cpp).
    assert decide(ORTHANC, checked, Service.MOVE, "DUP", "10.9.9.9")


def test_unknown_callers_list_replaces_always_allow() -> None:
    mods = parse_modalities(MODALITIES)
    policy = AccessPolicy(
        always_allowed=frozenset(Service), unknown_callers=frozenset({Service.FIND, Service.GET})
    )
    assert decide(policy, mods, Service.GET, "STRANGER", "1.2.3.4")
    assert decide(policy, mods, Service.FIND, "STRANGER", "1.2.3.4")
    assert not decide(policy, mods, Service.STORE, "STRANGER", "1.2.3.4")
    assert not decide(policy, mods, Service.MOVE, "STRANGER", "1.2.3.4")
    # Known callers keep their own flags, even where DicomAlwaysAllow* is on.
    assert not decide(policy, mods, Service.STORE, "CT1", "10.0.0.1")
    assert not decide(policy, mods, Service.MOVE, "WS", "10.0.0.9")
    # An empty list: known modalities only.
    closed = AccessPolicy(unknown_callers=frozenset())
    assert not decide(closed, mods, Service.ECHO, "STRANGER", "1.2.3.4")
    assert decide(closed, mods, Service.ECHO, "WS", "10.0.0.9")


def test_known_aet_on_the_wrong_host_is_not_treated_as_unknown() -> None:
    mods = parse_modalities(MODALITIES, check_modality_host=True)
    policy = AccessPolicy(unknown_callers=frozenset(Service))
    assert not decide(policy, mods, Service.GET, "CT1", "6.6.6.6")


def test_parse_unknown_callers() -> None:
    assert parse_unknown_callers("Orthanc") is None
    assert parse_unknown_callers([]) == frozenset()
    assert parse_unknown_callers(["Echo", "Find", "Get"]) == {
        Service.ECHO,
        Service.FIND,
        Service.GET,
    }
    for bad in ("All", ["Echo", "Retrieve"], [1], {"Echo": True}, None):
        with pytest.raises(ValueError):
            parse_unknown_callers(bad)


def test_a_requestor_is_judged_by_aet_and_with_the_host_check_by_address() -> None:
    mods = parse_modalities(MODALITIES)
    judged = judge_caller(ORTHANC, mods, "ct1", "10.9.9.9")  # case-insensitive, any host
    assert judged.declared and Service.FIND in judged.rights
    assert judge_caller(ORTHANC, mods, "STRANGER", "10.0.0.1") == Standing(
        False, frozenset({Service.ECHO})
    )
    checked = parse_modalities(MODALITIES, check_modality_host=True)
    # Claiming CT1's AE title from another host makes a stranger (echo only, by Orthanc's rule).
    assert judge_caller(ORTHANC, checked, "CT1", "10.9.9.9") == Standing(
        False, frozenset({Service.ECHO})
    )
    assert judge_caller(ORTHANC, checked, "CT1", "10.0.0.1").declared


def test_a_requestor_without_any_right_is_told_why() -> None:
    mods = parse_modalities(
        {
            "mute": {
                "AET": "MUTE",
                "Host": "10.0.0.5",
                "Port": 104,
                "AllowEcho": False,
                "AllowFind": False,
                "AllowGet": False,
                "AllowMove": False,
                "AllowStore": False,
            }
        }
    )
    closed = AccessPolicy(always_allowed=frozenset(), unknown_callers=frozenset())
    stranger = judge_caller(closed, mods, "STRANGER", "10.0.0.1")
    assert stranger == Standing(False, frozenset())
    assert "not in Orthanc's DicomModalities" in stranger.reason
    mute = judge_caller(closed, mods, "MUTE", "10.0.0.5")
    assert mute == Standing(True, frozenset())
    assert "allows no DIMSE service" in mute.reason
