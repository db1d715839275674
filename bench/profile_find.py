"""``python -m bench.profile_find``: where the listener's time goes in a broad C-FIND.

Profiles (cProfile) the SCP side of the `universal` query of
bench/find_bench.py over generated protocols, in this process: once through
pynetdicom's own C-FIND loop (what the plugin did before its fast path:
one dataset built and encoded per response, two PDUs each), then through
:meth:`orthanc_dpp.dicom.scp.handlers.FindHandler.serve` (cold cache, then warm). The
requester is bench/counting_scu.py, so the requester's cost stays out of
the figures. Prints the functions with the most own time for each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.service_class import DefinedProcedureProtocolQueryRetrieveServiceClass
from pynetdicom.sop_class import DefinedProcedureProtocolInformationModelFind as DPP_FIND

from bench.counting_scu import CountingAssociation
from bench.find_bench import queries
from dpp_tools.samples import make_library
from orthanc_dpp.dicom import pynetdicom_private as private
from orthanc_dpp.dicom.access import AccessPolicy, Gatekeeper, parse_unknown_callers
from orthanc_dpp.dicom.modalities import ModalityRegistry
from orthanc_dpp.dicom.scp import handlers
from orthanc_dpp.dicom.scp.find_responses import ResponseCache
from orthanc_dpp.dicom.scp.routing import route_dpp_services
from orthanc_dpp.model.index import ProtocolIndex


def _index(count: int) -> ProtocolIndex:
    index = ProtocolIndex()
    for n, ds in enumerate(make_library(count)):
        index.put(f"o{n}", ds)
    return index


def _profiled(handler: Any, fast: bool, runs: int) -> tuple[float, str]:
    """Seconds per query and the top of the profile, SCP side only."""
    profile = cProfile.Profile()
    service = DefinedProcedureProtocolQueryRetrieveServiceClass
    routed = service._c_find_scp  # what pynetdicom calls for a DPP C-FIND

    def serve(*args: Any) -> None:
        profile.runcall(routed, *args)

    service._c_find_scp = serve  # type: ignore[method-assign]
    bound = handler if fast else (lambda event: handler(event))  # stock loop when not a FindHandler
    ae = AE(ae_title="PROFILE")
    ae.add_supported_context(DPP_FIND, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, bound)])
    try:
        requester = CountingAssociation(server.server_address[1], "PROFILE", DPP_FIND)
        started = time.perf_counter()
        for _ in range(runs):
            requester.find(queries("1.2")["universal"])
        seconds = (time.perf_counter() - started) / runs
        requester.release()
    finally:
        server.shutdown()
        service._c_find_scp = routed  # type: ignore[method-assign]
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
    return seconds, out.getvalue()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_find", description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="protocols (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="queries per profile (default 3)")
    args = parser.parse_args(argv)
    private.quiet_logging()  # as the listener does: no per-message log formatting
    route_dpp_services()  # as DppListener.start does
    index = _index(args.count)
    gate = Gatekeeper(
        ModalityRegistry(),
        AccessPolicy.from_orthanc({}, parse_unknown_callers(["Find"])),
    )
    for label, fast, cache in (
        ("before: pynetdicom's loop", False, 0),
        ("after: FindHandler.serve, cold cache", True, 0),
        ("after: FindHandler.serve, warm cache", True, 1 << 28),
    ):
        handler = handlers.FindHandler(
            index,
            gate,
            handlers.FindOptions(max_results=0),
            is_ready=lambda: True,
            cache=ResponseCache(cache),
        )
        if cache:
            _profiled(handler, fast, 1)  # fills the cache
        seconds, top = _profiled(handler, fast, args.runs)
        per = seconds / args.count * 1e6
        print(f"== {label}: {seconds * 1000:.0f} ms per query, {per:.0f} us per response")
        print(top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
