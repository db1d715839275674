"""Random paths, query strings and JSON bodies on the ``/dpp/`` routes: the real Orthanc.

Whatever a client sends, the answer is never a 5xx of the plugin's making
(502 only when the remote archive refused, naming its DIMSE status), every
error has a JSON body with a reason, Orthanc keeps answering and the stored
library is unchanged. Bounded by ``max_examples``; upload bodies are not
fuzzed here (``POST /dpp/protocols`` has its own tests).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dpp_tools.samples import make_library
from orthanc_dpp.rest.protocols import LIST_PARAMETERS
from tests.orthanc_server import OrthancServer
from tests.peers import library_unchanged, store_protocols

#: Bounded: each example is one or a few HTTP requests (a C-FIND for ``find``).
FUZZ = settings(
    max_examples=150,
    deadline=None,  # no timed assertions: the bound is the number of examples
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path_factory.mktemp("fuzz"))
    # The plugin queries its own listener: every find is a real C-FIND.
    server.config["DicomModalities"]["self"] = [server.aet, "127.0.0.1", server.dpp_port]
    with server:
        store_protocols(server, make_library(4, seed=7800))
        yield server


@contextlib.contextmanager
def unharmed(orthanc: OrthancServer) -> Iterator[None]:
    """Around a fuzz run: the library unchanged, and no request failed inside the plugin."""
    start = len(orthanc.log())
    with library_unchanged(orthanc):
        yield
    written = orthanc.log()[start:]
    assert "Exception inside the plugin engine" not in written
    assert "Cannot create a Python string" not in written
    assert not re.search(r"REST \S+ failed", written)


def call(orthanc: OrthancServer, method: str, target: str, body: bytes | None = None) -> Any:
    """One request as given (``target`` already percent-encoded); (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", orthanc.http_port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def checked(orthanc: OrthancServer, method: str, target: str, body: bytes | None = None) -> Any:
    """The answer's JSON after asserting what every answer must be."""
    code, data = call(orthanc, method, target, body)
    where = f"{method} {target[:200]} {body[:200] if body else b''!r} -> {code} {data[:300]!r}"
    assert code < 500 or code == 502, where
    if code == 405:
        assert not data, where  # documented: no body, the Allow header lists the methods
        return None
    try:
        payload = json.loads(data) if code >= 400 or data[:1] in (b"{", b"[") else None
    except ValueError:
        raise AssertionError(f"not JSON: {where}") from None
    if code >= 400:
        # The plugin's errors have "Error"; Orthanc's own (a route that is not
        # the plugin's) have "Message".
        assert isinstance(payload, dict), where
        assert payload.get("Error") or payload.get("Message"), where
    if code == 502:
        assert "DimseStatus" in payload, where  # the remote archive refused, and said how
    return payload


def utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def segment(data: bytes) -> str:
    """``data`` as one percent-encoded path segment."""
    return urllib.parse.quote(data, safe="")


#: Path segments: any bytes (invalid UTF-8, NUL, dots), long UIDs, unicode.
SEGMENTS = st.one_of(
    st.binary(min_size=1, max_size=80),
    st.text(min_size=1, max_size=80).map(str.encode),
    st.integers(1, 3000).map(lambda n: b"1." * n + b"1"),
    st.sampled_from([b".", b"..", b"%", b"%2e%2e", b"%00", b"\x00", b"\xff\xfe", b"~", b" "]),
).filter(lambda b: b"/" not in b)


def query_value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.integers(-(2**70), 2**70).map(str),
        st.integers(1, 2000).map(lambda n: "9" * n),  # the request line stays under 16 KiB
        st.sampled_from(["", "%", "%FF", "-1", "0", "1e3", " 1", "\u0663", "true", "2020-", "-"]),
    )


QUERIES = st.lists(
    st.tuples(st.one_of(st.sampled_from(LIST_PARAMETERS), st.text(max_size=20)), query_value()),
    max_size=6,
)


def query_string(pairs: list[tuple[str, str]], raw: bool) -> str:
    """``pairs`` percent-encoded, or (``raw``) with only what HTTP forbids encoded."""
    safe = "%!$'()*+,;:@~[]" if raw else ""
    return "&".join(
        f"{urllib.parse.quote(k, safe=safe)}={urllib.parse.quote(v, safe=safe)}" for k, v in pairs
    )


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=30),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=10), inner, max_size=4),
            st.fixed_dictionaries({"vr": st.text(max_size=3)}, optional={"Value": inner}),
        ),
        max_leaves=10,
    )


FIND_KEYS = st.one_of(
    st.sampled_from(
        [
            "Limit",
            "ProtocolName",
            "SOPInstanceUID",
            "SOPClassUID",
            "00181030",
            "0008,0018",
            "(0008,0016)",
            "ModelSpecificationSequence",
            "SpecificCharacterSet",
            "InstanceCreationDate",
            "PatientName",
            "7FE00010",
            "FFFEE000",
            "00000000",
        ]
    ),
    st.text(max_size=12),
)
#: Plain text values: most reach the remote archive (wildcards, unicode, long).
TEXT_KEYS = st.dictionaries(
    st.sampled_from(
        [
            "ProtocolName",
            "ContentCreatorName",
            "InstanceCreationDate",
            "InstanceCreationTime",
            "EquipmentModality",
            "ClinicalTrialProtocolID",
            "PotentialReasonsForProcedure",
            "SpecificCharacterSet",
        ]
    ),
    st.one_of(
        st.text(max_size=80),
        st.integers(1, 20000).map(lambda n: "*" * n),
        st.sampled_from(["*", "?", "\\", "a\\b", "20200101-", "-", "\u00e9*", "ISO_IR 100"]),
    ),
    max_size=4,
).map(lambda d: json.dumps(d).encode())
FIND_BODIES = st.one_of(
    TEXT_KEYS,
    st.dictionaries(FIND_KEYS, json_values(), max_size=4).map(lambda d: json.dumps(d).encode()),
    json_values().map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
)


def test_protocol_list_query_strings(orthanc: OrthancServer) -> None:
    @FUZZ
    @given(pairs=QUERIES, raw=st.booleans())
    @example(pairs=[("limit", "1"), ("limit", "1001")], raw=False)
    @example(pairs=[("offset", "-1"), ("offset", "5")], raw=False)
    @example(pairs=[("name", "%"), ("date", "%4"), ("code", "%41")], raw=True)
    @example(pairs=[("code", "x" * 2000)], raw=False)
    def run(pairs: list[tuple[str, str]], raw: bool) -> None:
        query = query_string(pairs, raw)
        # Not UTF-8 once decoded: see test_query_value_that_is_not_utf8.
        assume(utf8(urllib.parse.unquote_to_bytes(query)))
        payload = checked(orthanc, "GET", "/dpp/protocols?" + query)
        if isinstance(payload, dict) and "Protocols" in payload:
            assert 1 <= payload["Limit"] <= 1000
            assert len(payload["Protocols"]) <= payload["Limit"]

    with unharmed(orthanc):
        run()


def test_protocol_paths(orthanc: OrthancServer) -> None:
    @FUZZ
    @given(data=SEGMENTS, route=st.sampled_from(["", "/file", "/tree"]), delete=st.booleans())
    @example(data=b"\xff\xfe", route="", delete=False)
    @example(data=b"\xff\xfe", route="/tree", delete=False)
    @example(data=b"\xc3", route="", delete=True)
    @example(data=b"..", route="/file", delete=False)
    def run(data: bytes, route: str, delete: bool) -> None:
        method = "DELETE" if delete and not route else "GET"
        checked(orthanc, method, f"/dpp/protocols/{segment(data)}{route}")

    with unharmed(orthanc):
        run()
        # Traversal reaches Orthanc's own routes, as Orthanc resolves them: no plugin answer.
        for target in ("/dpp/protocols/..%2F..%2Fsystem", "/dpp/protocols/%2e%2e%2f%2e%2e"):
            checked(orthanc, "GET", target)


def test_job_paths(orthanc: OrthancServer) -> None:
    @FUZZ
    @given(data=SEGMENTS, cancel=st.booleans())
    @example(data=b"\xff", cancel=False)
    @example(data=b"\xff", cancel=True)
    def run(data: bytes, cancel: bool) -> None:
        if cancel:
            checked(orthanc, "POST", f"/dpp/jobs/{segment(data)}/cancel", b"{}")
        else:
            checked(orthanc, "GET", f"/dpp/jobs/{segment(data)}")

    with unharmed(orthanc):
        run()


def test_remote_find_bodies_and_modality_names(orthanc: OrthancServer) -> None:
    @settings(FUZZ, max_examples=100)
    @given(body=FIND_BODIES, name=st.one_of(st.just(b"self"), SEGMENTS))
    @example(body=b'{"Limit": 1e400}', name=b"self")
    @example(body=b"{}", name=b"\xff\xfe")
    @example(body=b'{"SOPInstanceUID": {"vr": "UI", "Value": [{"a": 1}]}}', name=b"self")
    def run(body: bytes, name: bytes) -> None:
        payload = checked(orthanc, "POST", f"/dpp/modalities/{segment(name)}/find", body)
        if isinstance(payload, dict) and "Count" in payload:
            assert payload["Count"] == len(payload["Answers"])

    with unharmed(orthanc):
        run()


# -- what the fuzz found -------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/dpp/protocols/%FF%FE",
        "/dpp/protocols/%C3/file",
        "/dpp/protocols/%ED%A0%80/tree",
        "/dpp/jobs/%FF",
        "/dpp/ui/%FF",
    ],
)
def test_path_segment_that_is_not_utf8_is_not_found(orthanc: OrthancServer, target: str) -> None:
    # The Python plugin cannot hand such a segment to the plugin: it answered 500 by itself.
    code, data = call(orthanc, "GET", target)
    assert code == 404
    assert json.loads(data)["Message"] == "Unknown resource"  # Orthanc's own answer


@pytest.mark.parametrize(
    "target",
    ["/dpp/modalities/%FF%FE/find", "/dpp/modalities/%C3/retrieve", "/dpp/jobs/%FF/cancel"],
)
def test_post_to_a_segment_that_is_not_utf8_is_not_found(orthanc, target: str) -> None:
    code, data = call(orthanc, "POST", target, b"{}")
    assert code == 404
    assert json.loads(data)["Message"] == "Unknown resource"


def test_unicode_segment_still_reaches_the_plugin(orthanc: OrthancServer) -> None:
    code, data = call(orthanc, "GET", "/dpp/protocols/Sch%C3%A4del/tree")
    assert code == 404
    assert json.loads(data)["Error"] == "no protocol with SOP Instance UID or Orthanc ID 'Schädel'"


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("00000000", "a command element (group 0000)"),
        ("ErrorComment", "a command element (group 0000)"),
        ("00020010", "a file meta element (group 0002)"),
    ],
)
def test_find_key_that_no_identifier_holds_is_a_bad_request(orthanc, key: str, what: str) -> None:
    # It went to the remote archive, which refused the whole query: HTTP 502.
    body = json.dumps({key: "1.2" if key == "00020010" else "", "ProtocolName": ""}).encode()
    code, data = call(orthanc, "POST", "/dpp/modalities/self/find", body)
    assert code == 400
    assert json.loads(data) == {
        "Error": f"bad query key {key!r}: {what}: not a query key",
        "HttpStatus": 400,
        "Key": key,
    }


def test_query_value_that_is_not_utf8(orthanc: OrthancServer) -> None:
    """Orthanc 1.10 and 1.12 (Python plugin 4 and 5) hand the plugin query
    values still percent-encoded: the plugin decodes them and names the
    parameter. Orthanc 1.13 with Python plugin 7.1 decodes them first, and
    the Python plugin, unable to make a str of the bytes, answers 500 before
    any plugin code runs: beyond the plugin's reach (docs/operations.md, "Robustness").
    Either way Orthanc goes on answering."""
    code, data = call(orthanc, "GET", "/dpp/protocols?limit=%FF")
    if code == 400:
        assert json.loads(data)["Parameter"] == "limit"
    else:
        assert code == 500
        assert json.loads(data)["Message"] == "Internal error"  # Orthanc's, not the plugin's
        assert orthanc.wait_for_log("Cannot create a Python string")
    assert checked(orthanc, "GET", "/dpp/protocols?limit=1")["Limit"] == 1
