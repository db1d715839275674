"""Why an instance was not stored, and why a call into Orthanc failed.

Every store path (DIMSE C-STORE, the C-STORE sub-operations of a C-GET this
plugin requests, the ``/dpp/protocols`` REST route) reports a refusal as a
:class:`StoreError` carrying both the DIMSE and the HTTP status, so each
front end answers in its own protocol without knowing the others. They live
here, apart from :mod:`orthanc_dpp.storage.library`, so that code which only
receives datasets (the SCU side) need not import the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from orthanc_dpp.model import dimse_status
from orthanc_dpp.storage.decoding import LimitExceeded


class OrthancError(Exception):
    """A call into Orthanc's REST API failed; ``message`` is Orthanc's reason.

    ``code`` is Orthanc's error code (``orthanc.ErrorCode``) when the plugin
    API gave one, ``description`` its text without the code; both decide how
    a failed store is reported (:func:`orthanc_dpp.storage.library.store_refusal`).
    """

    def __init__(
        self,
        method: str,
        uri: str,
        message: str,
        code: int | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(f"{method} {uri}: {message}")
        self.method = method
        self.uri = uri
        self.message = message
        self.code = code
        self.description = description or message


class StoreError(Exception):
    """An instance was not stored; the statuses say how to report it."""

    def __init__(self, dimse_status: int, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.dimse_status = dimse_status
        self.http_status = http_status
        self.reason = reason


@contextlib.contextmanager
def undecodable_as_store_error() -> Iterator[None]:
    """Turn a failure to decode a received dataset into the :class:`StoreError` that refuses it.

    A dataset over the limits keeps the limit's own statuses and Error
    Comment; anything else pydicom raises on bad data (it raises several
    types) is 0xC000 "cannot decode the dataset", HTTP 400.
    """
    try:
        yield
    except LimitExceeded as exc:
        raise StoreError(exc.status, exc.http_status, exc.comment) from exc
    except Exception as exc:
        raise StoreError(
            dimse_status.STORE_CANNOT_UNDERSTAND, 400, f"cannot decode the dataset: {exc}"
        ) from exc
