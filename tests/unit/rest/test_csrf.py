"""The rule against requests another web site makes a browser send (``orthanc_dpp.rest.csrf``)."""

from __future__ import annotations

import pytest

from orthanc_dpp.rest.csrf import check, same_origin

UPLOAD = ("application/dicom", "multipart/related")
DICOM = {"content-type": "application/dicom"}


@pytest.mark.parametrize("method", ["GET", "HEAD", "get"])
def test_reading_is_never_refused(method: str) -> None:
    headers = {"sec-fetch-site": "cross-site", "origin": "http://attacker.example"}
    assert check(method, headers, b"", UPLOAD) is None


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site", "something-new"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_what_the_browser_marks_as_another_sites_is_refused(site: str, method: str) -> None:
    refusal = check(method, {**DICOM, "sec-fetch-site": site}, b"x", UPLOAD)
    assert refusal is not None and refusal.status == 403
    assert f"Sec-Fetch-Site: {site.lower()}" in refusal.reason
    assert "another web site" in refusal.reason


@pytest.mark.parametrize("site", ["same-origin", "none", " Same-Origin "])
def test_sec_fetch_site_of_this_origin_decides_even_when_host_was_rewritten(site: str) -> None:
    headers = {
        **DICOM,
        "sec-fetch-site": site,
        "origin": "https://pacs.example",  # the browser's view, before a proxy
        "host": "127.0.0.1:8042",  # Orthanc's view, after it
    }
    assert check("POST", headers, b"x", UPLOAD) is None


@pytest.mark.parametrize(
    ("origin", "host", "https", "same"),
    [
        ("http://127.0.0.1:8042", "127.0.0.1:8042", False, True),
        ("http://LOCALHOST:8042", "localhost:8042", False, True),
        ("http://[::1]:8042", "[::1]:8042", False, True),
        ("https://pacs.example", "pacs.example", False, True),
        ("https://pacs.example", "pacs.example:443", False, True),
        ("http://pacs.example", "pacs.example:80", False, True),
        ("https://pacs.example:443", "pacs.example", True, True),
        ("http://pacs.example", "pacs.example", True, False),  # Orthanc serves HTTPS itself
        ("https://pacs.example:8443", "pacs.example", False, False),
        ("http://pacs.example:8042", "pacs.example:8043", False, False),
        ("http://127.0.0.1:9000", "127.0.0.1:8042", False, False),
        ("http://attacker.example:8042", "127.0.0.1:8042", False, False),
        ("http://pacs.example.attacker.example", "pacs.example", False, False),
        ("null", "127.0.0.1:8042", False, False),
        ("file://", "127.0.0.1:8042", False, False),
        ("http://127.0.0.1:port", "127.0.0.1:8042", False, False),
        ("http://127.0.0.1:8042", "", False, False),
        ("http://127.0.0.1:8042", "127.0.0.1:x", False, False),
    ],
)
def test_origin_against_host(origin: str, host: str, https: bool, same: bool) -> None:
    assert same_origin(origin, host, https=https) is same
    headers = {**DICOM, "origin": origin, "host": host}
    refusal = check("POST", headers, b"x", UPLOAD, https=https)
    if same:
        assert refusal is None
    else:
        assert refusal is not None and refusal.status == 403
        assert f"Origin: {origin}" in refusal.reason


def test_requests_without_browser_headers_are_served_as_before() -> None:
    assert check("POST", {**DICOM, "host": "127.0.0.1:8042"}, b"x", UPLOAD) is None
    assert check("DELETE", {"host": "127.0.0.1:8042"}, b"") is None
    assert check("POST", {}, b"") is None  # job cancel: no body read, no type needed


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_part_of_a_form_data_body_is_refused_on_every_route(method: str) -> None:
    """Orthanc hands each part on alone, with only the part's headers."""
    part = {
        "content-disposition": 'form-data; name="file"; filename="p.dcm"',
        "content-type": "application/dicom",
    }
    for accepted in (UPLOAD, ()):
        refusal = check(method, part, b"x", accepted)
        assert refusal is not None and refusal.status == 415
        assert "multipart/form-data" in refusal.reason
        assert refusal.reason.endswith("application/dicom, multipart/related or application/zip")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "Application/DICOM",
        'multipart/related; type="application/dicom"; boundary=x',
        " multipart/related ;boundary=x",
    ],
)
def test_the_types_a_route_reads_are_served(content_type: str) -> None:
    assert check("POST", {"content-type": content_type}, b"x", UPLOAD) is None


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/json",
        "application/dicom+json",
    ],
)
def test_other_types_are_refused_with_what_to_send(content_type: str) -> None:
    refusal = check("POST", {"content-type": content_type}, b"x", UPLOAD)
    assert refusal is not None and refusal.status == 415
    media = content_type.split(";")[0]
    assert refusal.reason == (
        f"Content-Type {media!r} is not read here: send application/dicom or multipart/related"
    )


def test_a_body_without_a_type_is_refused_an_empty_one_left_to_the_route() -> None:
    refusal = check("POST", {}, b"{}", ("application/json",))
    assert refusal is not None and refusal.status == 415
    assert refusal.reason == "the body has no Content-Type: send it as application/json"
    assert check("POST", {}, b"", ("application/json",)) is None


def test_a_foreign_page_is_refused_for_what_it_is_before_its_body_type() -> None:
    headers = {"content-type": "text/plain", "sec-fetch-site": "cross-site"}
    refusal = check("POST", headers, b"x", UPLOAD)
    assert refusal is not None and refusal.status == 403


def test_long_header_values_are_cut_in_the_reason() -> None:
    origin = "http://" + "a" * 5000 + ".example"
    refusal = check("POST", {"origin": origin, "host": "pacs"}, b"", ())
    assert refusal is not None and len(refusal.reason) < 600
