"""C-ECHO and C-STORE service handlers of the DPP listener."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom import Dataset
from pynetdicom import evt

from orthanc_dpp import status
from orthanc_dpp.library import ProtocolLibrary, Stored, StoreError

log = logging.getLogger("orthanc_dpp.store")

#: Error Comment (0000,0902) is LO: at most 64 characters.
ERROR_COMMENT_LENGTH = 64


def status_dataset(code: int, comment: str | None = None) -> Dataset:
    """A status Dataset with an Error Comment cut to the length LO allows."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:ERROR_COMMENT_LENGTH]
    return ds


def requestor(event: evt.Event) -> str:
    """'AET@host:port' of the peer, for log lines."""
    info = event.assoc.requestor
    return f"{info.ae_title}@{info.address}:{info.port}"


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: answer success."""
    log.info("C-ECHO from %s", requestor(event))
    return status.SUCCESS


def make_store_handler(
    library: ProtocolLibrary, on_stored: Callable[[Stored], None]
) -> Callable[[evt.Event], Dataset]:
    """C-STORE handler: success only once Orthanc has stored the instance."""

    def handle_store(event: evt.Event) -> Dataset:
        peer = requestor(event)
        try:
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
            except Exception as exc:  # pydicom raises several types on bad data
                raise StoreError(
                    status.STORE_CANNOT_UNDERSTAND, 400, f"cannot decode the dataset: {exc}"
                ) from exc
            stored = library.store(ds, context_sop_class=str(event.context.abstract_syntax))
        except StoreError as exc:
            log.error("C-STORE from %s refused (0x%04X): %s", peer, exc.dimse_status, exc.reason)
            return status_dataset(exc.dimse_status, exc.reason)
        except Exception as exc:
            log.exception("C-STORE from %s failed unexpectedly", peer)
            return status_dataset(status.STORE_CANNOT_UNDERSTAND, f"internal error: {exc}")
        on_stored(stored)
        log.info(
            "C-STORE from %s: %s stored as %s (%s)",
            peer,
            stored.sop_instance_uid,
            stored.orthanc_id,
            stored.status,
        )
        return status_dataset(status.SUCCESS)

    return handle_store
