"""Performed Procedure Protocol instances as the usage reads them, and the usage's own store.

The instances are ordinary patient instances (the plugin neither normalizes
nor indexes them); the index feed hands each new one here
(:func:`read_performed`), which reads only the attributes of
:data:`orthanc_dpp.model.usage.KEYWORDS`, from a file of at most
:data:`PERFORMED_MAXIMUM_BYTES`. :func:`restore_usage` takes the usage saved
with the index snapshot back, if it describes the same change-log position.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pydicom

from orthanc_dpp.model import usage as protocol_usage
from orthanc_dpp.model.snapshot import SnapshotStore
from orthanc_dpp.model.usage import KEYWORDS, Performed, ProtocolUsage, performed
from orthanc_dpp.storage.library import OrthancApi, OrthancError

log = logging.getLogger("orthanc_dpp.feed")

#: Largest Performed Procedure Protocol file read for its usage (they hold
#: parameters, no pixels: a few kB to a few hundred); larger ones are not counted.
PERFORMED_MAXIMUM_BYTES = 16 << 20


def read_performed(
    api: OrthancApi, read_file: Callable[[str], bytes], orthanc_id: str
) -> Performed | None:
    """What a stored performed instance references, and when; None if gone or unreadable."""
    try:
        size = int(api.get(f"/instances/{orthanc_id}/attachments/dicom/size"))
        if size > PERFORMED_MAXIMUM_BYTES:
            log.error(
                "Performed procedure protocol %s not counted in the usage: %d bytes, more than %d",
                orthanc_id,
                size,
                PERFORMED_MAXIMUM_BYTES,
            )
            return None
        data = read_file(orthanc_id)
    except (OrthancError, ValueError):
        return None  # deleted between the change and now
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=list(KEYWORDS)
        )
        found = performed(ds)
    except Exception as exc:  # a damaged file must not stop the feed
        log.error("Performed procedure protocol %s not counted: %s", orthanc_id, exc)
        return None
    log.info(
        "Performed procedure protocol %s counted: uses %s at %s",
        orthanc_id,
        ", ".join(found.defined) or "no defined protocol",
        found.when or "an unknown time",
    )
    return found


def restore_usage(store: SnapshotStore | None, usage: ProtocolUsage, last_seq: int) -> bool:
    """Fill ``usage`` from ``store`` if it was saved at ``last_seq``; False (and why) if not.

    Both describe the change log up to the same position, or neither is used:
    performed instances before the index snapshot's position are never read again.
    """
    if store is None:
        return True
    try:
        rows, usage_seq = protocol_usage.load(store.read())
    except protocol_usage.UsageSnapshotError as exc:
        log.warning("Index snapshot not used (protocol usage: %s): rebuilding from Orthanc", exc)
        return False
    if usage_seq != last_seq:
        log.warning(
            "Index snapshot not used (protocol usage saved at change %d, index at %d): "
            "rebuilding from Orthanc",
            usage_seq,
            last_seq,
        )
        return False
    usage.load(rows)
    return True
