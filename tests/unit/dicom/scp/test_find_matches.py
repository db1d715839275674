"""The C-FIND handler: statuses, limits, cancel, failures, and a real association."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from pydicom.dataset import Dataset
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelFind

from orthanc_dpp.dicom.scp import find_matches as find_module
from orthanc_dpp.dicom.scp.find_matches import handle_find
from orthanc_dpp.model import dimse_status
from orthanc_dpp.model.index import ProtocolIndex
from tests import dicom_client
from tests.datasets import CT, build, make_index, raw_identifiers
from tests.scp_harness import find_scp


def never() -> bool:
    return False


def run(spec: dict[str, Any] | Dataset, index: ProtocolIndex | None = None, **kwargs: Any) -> list:
    identifier = spec if isinstance(spec, Dataset) else build(spec)
    options = {"max_results": 0, "is_cancelled": never, **kwargs}
    return list(handle_find(identifier, index or make_index(), **options))


def code_of(result: Any) -> int:
    return result if isinstance(result, int) else int(result.Status)


def test_pending_responses_then_success() -> None:
    results = run({"ProtocolName": "CT*", "SOPInstanceUID": ""})
    *pending, final = results
    assert final == (dimse_status.SUCCESS, None)
    assert [code_of(s) for s, _ in pending] == [dimse_status.PENDING] * 5
    assert [ds.ProtocolName for _, ds in pending] == [f"CT Kopf {n}" for n in (1, 3, 5, 7, 9)]
    assert all(set(ds.keys()) == {0x00080018, 0x00181030} for _, ds in pending)


def test_no_match_is_plain_success() -> None:
    assert run({"ProtocolName": "MR*"}) == [(dimse_status.SUCCESS, None)]


def test_approvals_are_not_answered() -> None:
    results = run({"SOPInstanceUID": "1.2.3.9"})
    assert results == [(dimse_status.SUCCESS, None)]


def test_unsupported_optional_key_gives_ff01() -> None:
    identifier = build({"ProtocolName": "CT Kopf 1"})
    identifier.add_new(0x00091001, "LO", "private")
    (pending, _), final = run(identifier)
    assert code_of(pending) == dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED
    assert final == (dimse_status.SUCCESS, None)


@pytest.mark.parametrize(
    ("spec", "code", "named"),
    [
        (
            {"QueryRetrieveLevel": "IMAGE"},
            dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "QueryRetrieveLevel",
        ),
        ({"InstanceCreationDate": "2024"}, dimse_status.UNABLE_TO_PROCESS, "InstanceCreationDate"),
        (
            {"PotentialScheduledProtocolCodeSequence": [{"CodeValue": "A"}, {"CodeValue": "B"}]},
            dimse_status.UNABLE_TO_PROCESS,
            "PotentialScheduledProtocolCodeSequence",
        ),
    ],
)
def test_bad_identifiers_answer_with_a_comment(spec: dict[str, Any], code: int, named: str) -> None:
    ((result, dataset),) = run(spec)
    assert dataset is None
    assert result.Status == code
    assert named in result.ErrorComment and len(result.ErrorComment) <= 64
    assert "OffendingElement" in result


@pytest.mark.parametrize(
    ("limit", "pendings", "final"),
    [
        (3, 3, dimse_status.FIND_OUT_OF_RESOURCES),
        (5, 5, dimse_status.SUCCESS),
        (0, 5, dimse_status.SUCCESS),
    ],
)
def test_max_results(limit: int, pendings: int, final: int) -> None:
    results = run({"ProtocolName": "CT*"}, max_results=limit)
    assert len(results) == pendings + 1
    assert code_of(results[-1][0]) == final
    if final == dimse_status.FIND_OUT_OF_RESOURCES:
        assert "3" in results[-1][0].ErrorComment


def test_cancel_stops_with_fe00() -> None:
    index = make_index(200)
    sent: list[Any] = []
    generator = handle_find(
        build({"ProtocolName": "*"}), index, max_results=0, is_cancelled=lambda: len(sent) >= 2
    )
    for result in generator:
        sent.append(result)
    assert [code_of(s) for s, _ in sent] == [
        dimse_status.PENDING,
        dimse_status.PENDING,
        dimse_status.CANCEL,
    ]
    assert sent[-1] == (dimse_status.CANCEL, None)


def test_cancel_before_the_first_match() -> None:
    assert run({"ProtocolName": "*"}, is_cancelled=lambda: True) == [(dimse_status.CANCEL, None)]


def test_unexpected_errors_become_c000_and_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(identifier: Dataset, model: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(find_module, "compile_query", broken)
    with caplog.at_level(logging.ERROR, logger="orthanc_dpp.find"):
        ((result, _),) = run({"ProtocolName": ""})
    assert result.Status == dimse_status.UNABLE_TO_PROCESS and result.ErrorComment
    assert any("boom" in (r.exc_text or "") for r in caplog.records)


def test_failure_while_streaming(caplog: pytest.LogCaptureFixture) -> None:
    class Exploding(ProtocolIndex):
        def find(self, query: Any, is_cancelled: Any) -> Iterator[Any]:
            yield from list(super().find(query, is_cancelled))[:1]
            raise MemoryError("out of memory")

    index = Exploding()
    for n, ds in enumerate([build({"SOPClassUID": CT, "ProtocolName": "A"})] * 3):
        index.put(f"o{n}", ds)
    with caplog.at_level(logging.ERROR, logger="orthanc_dpp.find"):
        results = run({"ProtocolName": "A"}, index)
    assert [code_of(s) for s, _ in results] == [
        dimse_status.PENDING,
        dimse_status.UNABLE_TO_PROCESS,
    ]
    assert caplog.records


# -- no identifier can make it raise ------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of the garbage values
@settings(max_examples=200, deadline=None)
@given(data=raw_identifiers())
def test_no_identifier_makes_it_raise(data: bytes) -> None:
    try:
        identifier = decode(io.BytesIO(data), False, True)
    except Exception:
        return  # pynetdicom answers 0xC310 itself when the identifier cannot be decoded
    results = list(handle_find(identifier, INDEX, max_results=3, is_cancelled=never))
    *pending, (final, dataset) = results
    assert dataset is None
    assert code_of(final) in (
        dimse_status.SUCCESS,
        dimse_status.FIND_OUT_OF_RESOURCES,
        dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        dimse_status.UNABLE_TO_PROCESS,
    )
    for result, response in pending:
        assert code_of(result) in (
            dimse_status.PENDING,
            dimse_status.PENDING_OPTIONAL_KEYS_UNSUPPORTED,
        )
        assert isinstance(response, Dataset) and len(response) > 0


INDEX = make_index(6)


# -- a real association on the loopback interface ------------------------------------------------


@pytest.fixture
def scp() -> Iterator[tuple[int, dict[str, Any]]]:
    options: dict[str, Any] = {"max_results": 0}
    index = make_index(6)

    def on_find(event: Any) -> Iterator[Any]:
        yield from handle_find(
            event.identifier,
            index,
            max_results=options["max_results"],
            is_cancelled=lambda: event.is_cancelled,
        )

    with find_scp(on_find) as port:
        yield port, options


def find_over_network(port: int, identifier: Dataset) -> list[tuple[Dataset, Dataset | None]]:
    assoc = dicom_client.associate(
        "127.0.0.1",
        port,
        "DPPTEST",
        calling_aet="SCU",
        contexts=[DefinedProcedureProtocolInformationModelFind],
        transfer_syntaxes=DEFAULT_TRANSFER_SYNTAXES,
        timeout=5,
    )
    try:
        return list(assoc.send_c_find(identifier, DefinedProcedureProtocolInformationModelFind))
    finally:
        assoc.release()


def test_real_association(scp: tuple[int, dict[str, Any]]) -> None:
    port, options = scp
    identifier = build(
        {
            "SpecificCharacterSet": "ISO_IR 100",
            "ProtocolName": "CT*",
            "InstitutionName": "",
            "PotentialScheduledProtocolCodeSequence": [{"CodeValue": "RPID16", "CodeMeaning": ""}],
        }
    )
    results = find_over_network(port, identifier)
    *pending, (final, _) = results
    assert final.Status == dimse_status.SUCCESS
    assert len(pending) == 3
    for rsp_status, response in pending:
        assert rsp_status.Status == dimse_status.PENDING
        assert response.InstitutionName == "Hôpital Nord"
        assert response.SpecificCharacterSet == "ISO_IR 100"
        assert response.PotentialScheduledProtocolCodeSequence[0].CodeMeaning == "Head"

    ((bad, _),) = find_over_network(port, build({"QueryRetrieveLevel": "STUDY"}))
    assert bad.Status == dimse_status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert "QueryRetrieveLevel" in bad.ErrorComment

    options["max_results"] = 1
    *_, (limited, _) = find_over_network(port, build({"ProtocolName": ""}))
    assert limited.Status == dimse_status.FIND_OUT_OF_RESOURCES and limited.ErrorComment
