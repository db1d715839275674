"""Requests another web site makes a visitor's browser send: refused where they change something.

A page on any site can make a browser POST to Orthanc without asking
Orthanc first, provided the body is of a "simple" type (``text/plain``,
``application/x-www-form-urlencoded``, ``multipart/form-data``), and the
browser adds the visitor's credentials (or needs none when Orthanc has no
authentication). Two rules, for every method but GET and HEAD, close it:

- Browsers say where a request comes from: ``Sec-Fetch-Site`` and
  ``Origin``, headers no page can set. A request they mark as sent by a page
  of another site or origin is refused (403), whatever it holds. A request
  with neither header (curl, scripts, other programs) is no browser's: it is
  served as before.
- Where a route reads a body, the body must say it is of a type the route
  reads (``application/dicom``, ``multipart/related``, ``application/zip``,
  ``application/json``):
  a browser sends those to another origin only after a CORS preflight, which
  Orthanc never grants. This also covers browsers too old to send either
  header. Anything else is refused (415).

``multipart/form-data`` bodies Orthanc's HTTP server takes apart itself: the
plugin gets each part alone, with the part's own headers
(``Content-Disposition: form-data``) and none of the request's, so nothing
tells who sent it (measured on Orthanc 1.10.1 and 1.13.0). Such parts are
refused on every route.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

#: Methods that change nothing here; every other one is checked.
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: ``Sec-Fetch-Site`` values of requests a page of this Orthanc sent, or the user typed.
OWN_SITES = frozenset({"same-origin", "none"})
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Refusal:
    status: int  # 403: sent by another site's page; 415: a body of a type not read here
    reason: str


def check(
    method: str,
    headers: Mapping[str, str],
    body: bytes,
    accepted: Sequence[str] = (),
    *,
    https: bool = False,
) -> Refusal | None:
    """Why this request is refused, or None to serve it.

    ``headers`` have lower-case names (as Orthanc passes them); ``accepted``
    are the media types of the bodies the route reads (empty: it reads none);
    ``https``: Orthanc itself serves HTTPS (``SslEnabled``), so a page of
    this Orthanc has an ``https`` origin.
    """
    if method.upper() in SAFE_METHODS:
        return None
    return foreign(headers, https=https) or form_part(headers) or body_type(headers, body, accepted)


def foreign(headers: Mapping[str, str], *, https: bool = False) -> Refusal | None:
    """403 when the browser says a page of another site or origin sent the request.

    ``Sec-Fetch-Site`` decides when present: the browser works it out itself,
    so it stays right behind a proxy that rewrites Host. ``same-site`` is
    refused too: another port or another subdomain is another program, whose
    pages must not act here. Without it, ``Origin`` must be this server's
    own: the host and port of the Host header.
    """
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site:
        if site in OWN_SITES:
            return None
        return Refusal(
            403,
            f"a page of another web site or origin sent this request (Sec-Fetch-Site: "
            f"{site[:40]}): only this Orthanc's own pages, and programs that are not "
            "browsers, may change things here",
        )
    origin = headers.get("origin")
    if origin is None or same_origin(origin, headers.get("host", ""), https=https):
        return None
    return Refusal(
        403,
        f"a page of another web site sent this request (Origin: {origin[:100]}, this server: "
        f"{headers.get('host', 'no Host header')[:100]}): only this Orthanc's own pages, and "
        "programs that are not browsers, may change things here",
    )


def same_origin(origin: str, host: str, *, https: bool = False) -> bool:
    """Whether ``origin`` (scheme://host[:port]) names the server the Host header names.

    A Host without a port stands for the default port of the scheme the
    browser used, so the origin must then have its scheme's default port.
    Behind a proxy that ends TLS Orthanc cannot know the scheme, so either
    scheme passes unless ``https``. ``null`` (sandboxed frames, local files)
    never matches.
    """
    try:
        sent = urllib.parse.urlsplit(origin.strip())
        own = urllib.parse.urlsplit("//" + host.strip())
        sent_port, own_port = sent.port, own.port
    except ValueError:  # a port that is not a number
        return False
    if sent.scheme not in DEFAULT_PORTS or not sent.hostname or not own.hostname:
        return False
    if https and sent.scheme != "https":
        return False
    if sent.hostname != own.hostname:  # both lower-cased by urlsplit
        return False
    if own_port is None:
        return sent_port in (None, DEFAULT_PORTS[sent.scheme])
    return (sent_port or DEFAULT_PORTS[sent.scheme]) == own_port


def form_part(headers: Mapping[str, str]) -> Refusal | None:
    """415 for one part of a ``multipart/form-data`` body, handed on alone by Orthanc."""
    if not headers.get("content-disposition", "").strip().lower().startswith("form-data"):
        return None
    return Refusal(
        415,
        "a part of a multipart/form-data body is not accepted (Orthanc's HTTP server takes "
        "such bodies apart, and nothing then tells which site sent them): send "
        "application/dicom, multipart/related or application/zip",
    )


def body_type(headers: Mapping[str, str], body: bytes, accepted: Sequence[str]) -> Refusal | None:
    """415 when a route that reads a body gets one that does not say it is of a type it reads.

    No body and no Content-Type is left to the route (an empty find is a
    query with no keys; an empty upload holds no file).
    """
    if not accepted:
        return None
    given = headers.get("content-type", "")
    media = given.split(";", 1)[0].strip().lower()
    wanted = " or ".join(accepted)
    if not media:
        if not body:
            return None
        return Refusal(415, f"the body has no Content-Type: send it as {wanted}")
    if media not in accepted:
        return Refusal(415, f"Content-Type {media[:100]!r} is not read here: send {wanted}")
    return None
