"""What hostile peers send, and how much memory Orthanc needed to survive it."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom.dsutils import encode

from orthanc_dpp.model.sop import CT_DPP_STORAGE
from tests.orthanc_server import OrthancServer
from tests.peers import store_protocols


def peak_memory_kb(orthanc: OrthancServer) -> int:
    """Orthanc's peak resident memory so far (VmHWM, kB), to show what a bomb cost it."""
    assert orthanc.process is not None
    status = Path(f"/proc/{orthanc.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def rss_kb(orthanc: OrthancServer) -> int:
    """Resident memory of the Orthanc process in KiB (VmRSS)."""
    assert orthanc.process is not None
    with open(f"/proc/{orthanc.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def deflated_bomb(inflated: int) -> bytes:
    """A dataset whose one OB element inflates to ``inflated`` bytes of zeros."""
    head = Dataset()
    head.SOPClassUID = CT_DPP_STORAGE
    head.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    prefix = encode(head, False, True) or b""
    element = struct.pack("<HH2sHL", 0x0009, 0x1010, b"OB", 0, inflated)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [packer.compress(prefix + element)]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(packer.compress(zeros))
    out.append(packer.flush())
    return b"".join(out)


@contextlib.contextmanager
def admission_limited(
    folder: Path,
    protocols: Iterable[Dataset],
    *,
    maximum_associations: int,
    per_address: int,
    acse_timeout: float,
    network_timeout: float,
    config: dict[str, Any] | None = None,
) -> Iterator[OrthancServer]:
    """A started Orthanc holding ``protocols`` whose listener admits at most
    ``maximum_associations`` associations and ``per_address`` connections from one
    address, with the given ACSE and network timeouts (seconds): the server that
    hostile peers try to exhaust. Stopped on exit."""
    server = OrthancServer(
        folder,
        dpp={
            "AcseTimeout": acse_timeout,
            "NetworkTimeout": network_timeout,
            "MaximumAssociations": maximum_associations,
            "MaximumConnectionsPerAddress": per_address,
        },
        config=config,
    )
    with server:
        store_protocols(server, protocols)
        yield server
