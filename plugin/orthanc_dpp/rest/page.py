"""The protocol library page's files (``plugin/orthanc_dpp/rest/static/``) and its Explorer link.

The page is a few files written for this plugin and shipped with it, so it
works without any network beyond Orthanc's own HTTP server, and behind
Orthanc's authentication like every ``/dpp/`` route. Only the files listed in
``ASSETS`` are served: no path from a request ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

STATIC: Final = Path(__file__).parent / "static"

#: Served name -> (file in STATIC, content type). "" is the page itself.
ASSETS: Final = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "library.js": ("library.js", "text/javascript; charset=utf-8"),
    "library.css": ("library.css", "text/css; charset=utf-8"),
}

#: Sent with every file: only the page's own files run, nothing is framed
#: elsewhere, and browsers do not guess content types.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

#: The file ``orthanc.ExtendOrthancExplorer`` adds to Orthanc Explorer.
EXPLORER_EXTENSION: Final = "explorer-extension.js"


def asset(name: str) -> tuple[bytes, str] | None:
    """The bytes and content type of a served file, or None if ``name`` is not one."""
    found = ASSETS.get(name)
    if found is None:
        return None
    file_name, content_type = found
    return (STATIC / file_name).read_bytes(), content_type


def explorer_extension() -> str:
    """JavaScript that adds a "Protocol library" button to Orthanc Explorer's home page."""
    return (STATIC / EXPLORER_EXTENSION).read_text(encoding="utf-8")
