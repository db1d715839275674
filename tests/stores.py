"""One C-STORE whose answer the test judges itself.

``tests.peers.store_protocols`` asserts Success; the tests that expect a
refusal (a duplicate, a full disk) need the status as Orthanc answered it.
"""

from __future__ import annotations

from pydicom import Dataset

from tests.orthanc_server import OrthancServer
from tests.peers import associate


def c_store(orthanc: OrthancServer, ds: Dataset) -> Dataset:
    """C-STORE ``ds`` on an association of its own; the status, whatever it is."""
    assoc = associate(orthanc)
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()
