"""CONFORMANCE.md against the code: keys, SOP classes, transfer syntaxes, statuses, defaults.

The conformance statement is a promise to the people who connect modalities;
each table here is compared with what the listener really configures or what
the matching code really does, so that adding a key, a SOP class, a transfer
syntax, a status or a setting without documenting it fails a test.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_description
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pynetdicom import evt

from orthanc_dpp import __version__, config
from orthanc_dpp.app import listener_settings
from orthanc_dpp.config import SECTION, Settings, parse_settings
from orthanc_dpp.dicom.scp.listener import DppListener
from orthanc_dpp.model import dimse_status, key_table
from orthanc_dpp.model.dimse_status import InvalidIdentifier
from orthanc_dpp.model.key_table import (
    BASIC_CODED_ENTRY,
    CODED_ENTRY,
    TABLE_HH_6_1,
    TABLE_II_6_1,
    KeyRow,
)
from orthanc_dpp.model.matching import SequenceKey
from orthanc_dpp.model.query import compile_query
from orthanc_dpp.model.sop import TRANSFER_SYNTAXES
from tests.doc_examples import REPO, doc_section, tables

CONFORMANCE = REPO / "CONFORMANCE.md"
DOC = CONFORMANCE.read_text()
PLUGIN = REPO / "plugin" / "orthanc_dpp"

#: Matching types in the order the document lists them.
ORDER = ("single value", "list of UID", "wild card", "range", "sequence", "universal")
HEX_CODE = re.compile(r"0x[0-9A-F]{4}")


# -- reading the document -----------------------------------------------------------------


def only_table(heading: str) -> list[list[str]]:
    found = tables(doc_section(CONFORMANCE, heading))
    assert len(found) == 1, f"expected one table under {heading!r}"
    return found[0]


# -- C-FIND keys: what the matching code does with each row -------------------------------

SAMPLES = {
    "UI": "1.2.3",
    "DA": "20240101",
    "TM": "120000",
    "DT": "20240101120000",
    "PN": "Doe^Jane",
    "CS": "CT",
    "UR": "http://example.org/a",
}


def _sample(vr: str) -> str:
    return SAMPLES.get(vr, "abc")


def _probes(vr: str) -> dict[str, Any]:
    """One key value per matching type, as a requester would write it."""
    value = _sample(vr)
    return {
        "single value": value,
        "list of UID": [value, value[:-1] + "4"],
        "wild card": value[:2] + "*",
        "range": f"{value}-{value}",
    }


def key_element(tag: int, vr: str, value: Any) -> DataElement:
    """A key as a requester may send it: wild cards and ranges are not valid VR values."""
    return DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)


def _identifier(path: tuple[KeyRow, ...], element: DataElement) -> Dataset:
    """An identifier holding ``element`` inside the sequences of ``path``.

    A zero-length return key is added beside it, so that a key that is never
    matched still makes a valid identifier.
    """
    inner = Dataset()
    inner.add(element)
    for parent in reversed(path):
        outer = Dataset()
        outer.add(key_element(parent.tag, "SQ", Sequence([inner])))
        inner = outer
    filler = 0x00181030 if 0x00080018 in inner else 0x00080018  # Protocol Name, SOP Instance UID
    inner.add(key_element(filler, "LO" if filler == 0x00181030 else "UI", None))
    return inner


def _matchers(path: tuple[KeyRow, ...], element: DataElement) -> list[Any] | None:
    """The matchers compiled for ``element`` at ``path``; None if the identifier is refused."""
    try:
        query = compile_query(_identifier(path, element))
    except InvalidIdentifier:
        return None
    matchers = list(query.matchers)
    for parent in path:
        nested = [m for m in matchers if isinstance(m, SequenceKey) and m.tag == parent.tag]
        matchers = list(nested[0].items) if nested else []
    return [m for m in matchers if getattr(m, "tag", None) == element.tag]


def observed_matching(path: tuple[KeyRow, ...], row: KeyRow) -> str:
    """The matching types compile_query gives ``row``, found by trying each one."""
    if row.vr == "SQ":
        first = next(r for r in row.items if r.vr != "SQ")  # every sequence row lists items
        item = Dataset()
        item.add(key_element(first.tag, first.vr, _sample(first.vr)))
        seq = _matchers(path, key_element(row.tag, "SQ", Sequence([item])))
        empty = _matchers(path, key_element(row.tag, "SQ", Sequence([])))
        kinds = set()
        if seq and isinstance(seq[0], SequenceKey):
            kinds.add("sequence")
        if empty == []:
            kinds.add("universal")
        return ", ".join(k for k in ORDER if k in kinds)
    kinds = set()
    for kind, value in _probes(row.vr).items():
        matchers = _matchers(path, key_element(row.tag, row.vr, value))
        if matchers and matchers[0].kind in (kind, "combined range"):
            kinds.add(kind)
        elif kind == "single value" and matchers and row.vr in ("DA", "TM", "DT", "UI"):
            kinds.add(kind)  # one value: a one-value range, or a one-UID list
    if _matchers(path, key_element(row.tag, row.vr, None)) == []:
        if not kinds and _matchers(path, key_element(row.tag, row.vr, _sample(row.vr))) == []:
            return "not matched"  # read, returned, never compared
        kinds.add("universal")
    return ", ".join(k for k in ORDER if k in kinds)


def expected_rows(
    rows: tuple[KeyRow, ...],
    stop: tuple[KeyRow, ...],
    note: str,
    path: tuple[KeyRow, ...],
    depth: int = 0,
) -> Iterator[list[str]]:
    """The document's rows for ``rows``: items of ``stop`` are referred to, not repeated.

    ``path`` is where the rows sit in an identifier (for the matching probe),
    ``depth`` how many ">" the document shows.
    """
    for row in rows:
        name = ">" * depth + dictionary_description(row.tag)
        if row.items is stop:
            name += note
        named = ", ".join(k for k in ORDER if k in {m.value for m in row.types}) or "–"
        yield [
            name,
            f"({row.tag >> 16:04X},{row.tag & 0xFFFF:04X})",
            row.vr,
            row.matching,
            row.returning,
            named,
            observed_matching(path, row),
        ]
        if row.items and row.items is not stop:
            yield from expected_rows(row.items, stop, note, (*path, row), depth + 1)


def test_every_table_hh_6_1_key_is_documented_with_its_tag_types_and_matching() -> None:
    documented = only_table("Table HH.6-1 keys")
    expected = list(expected_rows(TABLE_HH_6_1, CODED_ENTRY, " (items: coded entry macro)", ()))
    assert documented == expected


def test_every_table_ii_6_1_key_is_documented_with_its_tag_types_and_matching() -> None:
    documented = only_table("Table II.6-1 keys")
    expected = list(expected_rows(TABLE_II_6_1, CODED_ENTRY, " (items: coded entry macro)", ()))
    assert documented == expected


def test_the_coded_entry_macro_is_documented_once_with_its_matching() -> None:
    documented = only_table("Coded entry macro keys")
    code_sequence = key_table.TOP_LEVEL[0x00189906]  # Potential Scheduled Protocol Code Sequence
    note = " (items: the rows above without this one)"
    expected = list(expected_rows(CODED_ENTRY, BASIC_CODED_ENTRY, note, (code_sequence,)))
    assert documented == expected
    # "the rows above without this one" is what the macro nests:
    assert CODED_ENTRY[:-1] == BASIC_CODED_ENTRY and CODED_ENTRY[-1].items is BASIC_CODED_ENTRY


def test_the_matching_probe_tells_matching_types_apart() -> None:
    """The probe itself: a date key is a range, a UID key a list, a name a wild card."""
    top = key_table.TOP_LEVEL
    assert observed_matching((), top[0x00080012]) == "single value, range, universal"
    assert observed_matching((), top[0x00080018]) == "single value, list of UID, universal"
    assert observed_matching((), top[0x00181030]) == "single value, wild card, universal"
    assert observed_matching((), top[0x00080005]) == "not matched"
    assert observed_matching((), top[0x00189906]) == "sequence, universal"


# -- SOP classes, transfer syntaxes, association parameters -------------------------------


def listener_ae() -> Any:
    """The AE the listener builds, with every service handler bound (as the adapter does)."""
    handlers = {e: (lambda event: None) for e in (evt.EVT_C_FIND, evt.EVT_C_GET, evt.EVT_C_MOVE)}
    return DppListener(listener_settings(Settings()), handlers)._make_ae()


def test_every_accepted_presentation_context_is_documented_with_its_roles() -> None:
    ae = listener_ae()
    contexts = tables(doc_section(CONFORMANCE, "2.2.3 Presentation contexts accepted"))[0]
    documented = {row[1]: row for row in contexts}
    accepted = {str(cx.abstract_syntax): cx for cx in ae.supported_contexts}
    assert set(documented) == set(accepted)
    for uid, cx in accepted.items():
        row = documented[uid]
        assert row[2] == "all four below"
        assert [str(ts) for ts in cx.transfer_syntax] == [str(ts) for ts in TRANSFER_SYNTAXES]
        role_selection = cx.scu_role is not None or cx.scp_role is not None
        assert ("SCP/SCU role selection" in row[4]) == role_selection, uid
        assert row[3].startswith("SCP"), uid


def test_the_sop_class_overview_lists_the_same_classes() -> None:
    rows = only_table("1. Overview")
    assert {row[1] for row in rows} == {
        str(cx.abstract_syntax) for cx in listener_ae().supported_contexts
    }


def test_every_transfer_syntax_is_documented_in_the_listeners_order() -> None:
    found = tables(doc_section(CONFORMANCE, "2.2.3 Presentation contexts accepted"))
    assert len(found) == 2
    assert [row[1] for row in found[1]] == [str(ts) for ts in TRANSFER_SYNTAXES]
    assert [row[0] for row in found[1]] == [ts.name for ts in TRANSFER_SYNTAXES]


def test_the_statement_names_the_plugins_version() -> None:
    assert f"plugin (version {__version__})" in DOC


def test_implementation_identity_and_pdu_size_are_what_the_listener_sends() -> None:
    ae = listener_ae()
    policies = {row[0]: row[1] for row in only_table("2.2.2 Association policies")}
    assert policies["Implementation Class UID"].startswith(str(ae.implementation_class_uid) + " ")
    assert policies["Implementation Version Name"].startswith(ae.implementation_version_name + " ")
    assert f"default {ae.maximum_pdu_size} bytes" in policies["Maximum PDU length received"]
    defaults = Settings()
    served = policies["Associations served at once"]
    assert f"default {defaults.maximum_associations})" in served
    assert f"default {defaults.unknown_callers_maximum_associations})" in served
    per_address = Settings().maximum_connections_per_address
    assert f"default {per_address}" in policies["Connections per remote address"]


# -- statuses -----------------------------------------------------------------------------


def status_codes_used(module: Path, function: str | None = None) -> set[int]:
    """Codes of :mod:`~orthanc_dpp.model.dimse_status` ``module`` (or one function) answers with."""
    tree: ast.AST = ast.parse(module.read_text())
    if function is not None:
        tree = next(
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == function
        )
    # A code only compared with (``if code == dimse_status.X``) is not an answer.
    compared = {id(n) for c in ast.walk(tree) if isinstance(c, ast.Compare) for n in ast.walk(c)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in compared:
            continue
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "dimse_status"
        ):
            names.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module == "orthanc_dpp.model.dimse_status":
            names.update(alias.name for alias in node.names)
    values = {getattr(dimse_status, name, None) for name in names if name.isupper()}
    return {v for v in values if isinstance(v, int) and v != dimse_status.ERROR_COMMENT_LENGTH}


def documented_codes(text: str) -> set[int]:
    codes: set[int] = set()
    for table in tables(text):
        for row in table:
            codes.update(int(code, 16) for code in HEX_CODE.findall(row[0]))
    return codes


ALL_USED = set().union(
    *(status_codes_used(p) for p in PLUGIN.rglob("*.py") if p.name != "dimse_status.py")
)


def test_every_status_the_plugin_answers_is_documented_and_no_other() -> None:
    assert ALL_USED  # the scan found the handlers' statuses
    documented = documented_codes(doc_section(CONFORMANCE, "2.3 SOP-specific conformance"))
    assert {f"0x{c:04X}" for c in ALL_USED - documented} == set()
    assert {f"0x{c:04X}" for c in documented - ALL_USED} == set()


ECHO = "2.3.1 Verification (C-ECHO)"
STORE = "2.3.2 Storage (C-STORE SCP)"
FIND = "2.3.3 Query (C-FIND SCP)"
RETRIEVE = "2.3.5 Retrieve (C-GET and C-MOVE SCP)"


@pytest.mark.parametrize(
    ("code", "heading"),
    [
        (("dicom/scp/handlers.py", "EchoHandler"), ECHO),
        (("dicom/scp/handlers.py", "StoreHandler"), STORE),
        (("storage/library.py", None), STORE),
        (("storage/part10.py", None), STORE),
        (("dicom/scp/handlers.py", "FindHandler"), FIND),
        (("dicom/scp/find_matches.py", None), FIND),
        (("model/query.py", None), FIND),
        (("dicom/scp/retrieve.py", None), RETRIEVE),
        (("dicom/scp/move.py", None), RETRIEVE),
    ],
)
def test_each_services_statuses_are_in_its_section(
    code: tuple[str, str | None], heading: str
) -> None:
    used = status_codes_used(PLUGIN / code[0], code[1])
    assert used
    missing = used - documented_codes(doc_section(CONFORMANCE, heading))
    assert {f"0x{c:04X}" for c in missing} == set()


# -- configuration ------------------------------------------------------------------------

#: Keys of the plugin that do not shape the DICOM interface (docs/configuration.md has them all).
NOT_DICOM = {
    "Enabled",
    "MaximumUploadSize",
    "ReconcileInterval",
    "SnapshotInterval",
    "FastIndexLoad",
    "PythonPath",
    "ReceivedInstanceHook",
}


def test_configuration_defaults_are_the_parsers_defaults() -> None:
    rows = only_table("4. Configuration")
    defaults = Settings()
    seen = set()
    for name, default, _ in rows:
        value = json.loads(re.findall(r"`([^`]+)`", default)[-1])
        if name.startswith("`Tls."):
            key = name.strip("`").split(".", 1)[1]
            parsed = parse_settings({SECTION: {"Tls": {key: value}}})
            assert parsed.tls == defaults.tls, name
            continue
        key = name.strip("`")
        seen.add(key)
        parsed = parse_settings({SECTION: {key: value}})
        assert parsed == defaults, f"{key}: documented default {value!r} is not the default"
    assert seen | NOT_DICOM == set(config.KEYS), "document each new key or list it in NOT_DICOM"
