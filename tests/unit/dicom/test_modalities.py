"""Orthanc's modality list: parsing /modalities?expand, AET rules, run-time refresh."""

from __future__ import annotations

import logging
import threading

import pytest

from orthanc_dpp.dicom.modalities import (
    Modality,
    ModalityError,
    ModalityList,
    ModalityRegistry,
    matching_options,
    parse_modalities,
    parse_modality,
)

# What Orthanc 1.10.1 answers to GET /modalities?expand (measured: every key
# present, Port a number, LocalAet "" when unset).
EXPANDED = {
    "store": {
        "AET": "StoreSCP",
        "AllowEcho": True,
        "AllowEventReport": True,
        "AllowFind": True,
        "AllowFindWorklist": True,
        "AllowGet": False,
        "AllowMove": True,
        "AllowNAction": True,
        "AllowStore": True,
        "AllowTranscoding": False,
        "Host": "10.0.0.5",
        "LocalAet": "",
        "Manufacturer": "Generic",
        "Port": 4242,
        "Timeout": 0,
        "UseDicomTls": False,
    },
}


def test_expanded_entry_parses_every_field() -> None:
    (m,) = parse_modalities(EXPANDED).modalities
    assert m == Modality(
        name="store",
        aet="StoreSCP",
        host="10.0.0.5",
        port=4242,
        allow_get=False,
        allow_transcoding=False,
    )
    assert m.describe() == "store (StoreSCP@10.0.0.5:4242)"


def test_missing_flags_default_to_true_and_port_may_be_a_string() -> None:
    m = parse_modality("x", {"AET": "X", "Host": "h", "Port": "104"})
    assert m.port == 104
    assert all(
        getattr(m, f)
        for f in (
            "allow_echo",
            "allow_find",
            "allow_find_worklist",
            "allow_get",
            "allow_move",
            "allow_store",
            "allow_n_action",
            "allow_event_report",
            "allow_transcoding",
        )
    )
    assert not m.use_dicom_tls and m.local_aet == "" and m.timeout == 0


def test_array_form_from_the_configuration_file() -> None:
    assert parse_modality("a", ["A", "host", 11112]) == Modality("a", "A", "host", 11112)
    assert parse_modality("b", ["B", "h", 1, "GE"]).manufacturer == "GE"


@pytest.mark.parametrize(
    "entry",
    [
        {"AET": "A", "Host": "h"},  # no port
        {"AET": "A", "Host": "h", "Port": 0},
        {"AET": "A", "Host": "h", "Port": 70000},
        {"AET": "A", "Host": "h", "Port": "x"},
        {"AET": "A", "Host": "h", "Port": True},
        {"AET": 3, "Host": "h", "Port": 1},
        {"AET": "A", "Host": "h", "Port": 1, "AllowGet": "yes"},
        {"AET": "A", "Host": "h", "Port": 1, "Timeout": -1},
        ["A", "h"],
        "A@h:1",
    ],
)
def test_bad_entries_are_rejected(entry: object) -> None:
    with pytest.raises(ModalityError):
        parse_modality("bad", entry)


def test_a_bad_entry_is_skipped_not_fatal() -> None:
    mods = parse_modalities({"ok": ["OK", "h", 1], "bad": {"AET": "B"}})
    assert [m.name for m in mods.modalities] == ["ok"]
    assert mods.problems and "bad" in mods.problems[0]
    with pytest.raises(ModalityError):
        parse_modalities(["not", "an", "object"])


def test_aet_comparison_is_case_insensitive_by_default() -> None:
    mods = parse_modalities(EXPANDED)
    assert mods.resolve_destination("STORESCP") is not None
    assert mods.resolve_destination("storescp") is not None
    assert mods.resolve_destination(" StoreSCP ") is not None  # padding is insignificant
    assert mods.resolve_destination("StoreSCP2") is None


def test_strict_aet_comparison_is_case_sensitive() -> None:
    mods = parse_modalities(EXPANDED, strict_aet_comparison=True)
    assert mods.resolve_destination("StoreSCP") is not None
    assert mods.resolve_destination("STORESCP") is None


def test_only_ascii_letters_fold() -> None:
    # Orthanc lowercases byte by byte in ASCII; "É" and "é" stay different.
    mods = parse_modalities({"a": ["CAFÉ", "h", 1]})
    assert mods.resolve_destination("café") is None
    assert mods.resolve_destination("cafÉ") is not None


def test_duplicate_aet_resolves_to_first_symbolic_name() -> None:
    # Orthanc iterates its modalities in a map sorted by symbolic name.
    mods = parse_modalities({"zeta": ["SAME", "h2", 2], "alpha": ["same", "h1", 1]})
    dest = mods.resolve_destination("Same")
    assert dest is not None and dest.name == "alpha"
    assert [m.name for m in mods.matching_aet("SAME")] == ["alpha", "zeta"]


def test_matching_options_reads_orthanc_defaults() -> None:
    assert matching_options({}) == {"strict_aet_comparison": False, "check_modality_host": False}
    got = matching_options({"StrictAetComparison": True, "DicomCheckModalityHost": True})
    assert got == {"strict_aet_comparison": True, "check_modality_host": True}


def test_registry_refresh_swaps_the_snapshot_and_keeps_old_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ModalityRegistry()
    assert len(registry.current) == 0
    assert registry.refresh(lambda: EXPANDED, check_modality_host=True)
    first = registry.current
    assert first.resolve_destination("storescp") is not None and first.check_modality_host

    def broken() -> object:
        raise ConnectionError("Orthanc REST API unavailable")

    with caplog.at_level(logging.ERROR, logger="orthanc_dpp.modalities"):
        assert not registry.refresh(broken)
    assert registry.current is first
    assert "Orthanc REST API unavailable" in caplog.text

    registry.refresh(lambda: {"new": ["NEW", "h", 5]})
    assert registry.current.resolve_destination("NEW") is not None
    # The old snapshot a request may still hold is untouched.
    assert first.resolve_destination("NEW") is None


def test_registry_is_safe_under_concurrent_refresh_and_reads() -> None:
    registry = ModalityRegistry(ModalityList())
    lists = [parse_modalities({f"m{i}": [f"AE{i}", "h", 100 + i]}) for i in range(50)]
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(2000):
                snapshot = registry.current
                assert len(snapshot) in (0, 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for mods in lists:
        registry.replace(mods)
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert registry.current is lists[-1]
