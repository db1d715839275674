"""A bounded concurrent DICOM load on the plugin's listener, for tests that look for freezes.

Why a driver of its own: the defect it hunts (a GIL / Orthanc-mutex deadlock
under a dozen concurrent peers) shows only with several kinds of peers at
once, and it freezes the very server the test talks to. So everything here is
bounded, and a freeze turns into figures and messages instead of a hung
pytest:

* every association has ACSE, DIMSE, network and TCP-connect timeouts;
* every peer stops by itself (a duration and a maximum number of operations);
* the driver stops waiting at a hard deadline (duration + grace), or a few
  seconds after no peer has succeeded for ``stall_seconds``, and reports the
  peers still running as *stuck* (their daemon threads end once Orthanc is
  stopped or killed);
* a watchdog polls Orthanc's REST API (``GET /system``, ``GET /dpp/status``)
  with a short timeout and samples Orthanc's resident memory meanwhile.

Peers are threads of this process, one kind of operation each:

``store``  C-STORE of new, distinct protocols from :mod:`dpp_tools.samples`;
``find``   C-FIND on the DPP model by a Protocol Name wildcard, which must
           return the known protocol the pattern was taken from;
``get``    C-GET of 3 known protocols, all 3 received on the association;
``move``   C-MOVE of 3 known protocols to a :class:`MemoryStorageSCP`.

Only loopback addresses are used.

The package: :mod:`tests.load.peers` (the peers and their DICOM operations),
:mod:`tests.load.report` (the figures, the REST watchdog) and
:mod:`tests.load.run` (the driver).
"""

from tests.load.peers import MemoryStorageSCP, dicom_modalities, found_uids
from tests.load.report import LoadResult
from tests.load.run import run_load

__all__ = ["LoadResult", "MemoryStorageSCP", "dicom_modalities", "found_uids", "run_load"]
