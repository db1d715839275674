"""C-MOVE destination for the retrieve benchmark: a pynetdicom storage SCP that keeps nothing.

``python -m bench.store_scp PORT AET``. It accepts the DPP storage SOP
classes (DCMTK's storescp would need an association profile for them,
docs/design.md, fact 8), sets TCP_NODELAY, counts the encoded bytes it receives
without decoding them, and prints one JSON line per finished association,
so both sides of a comparison are measured against the same, cheap receiver.
"""

from __future__ import annotations

import json
import sys
import threading

from pynetdicom import AE, evt
from pynetdicom.sop_class import RawDataStorage

from bench.child import serve_until_stopped
from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.model.sop import STORAGE_CLASSES, TRANSFER_SYNTAXES


def main(port: int, aet: str) -> None:
    counts: dict[int, list[int]] = {}
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        size = len(event.request.DataSet.getvalue())
        with lock:
            tally = counts.setdefault(id(event.assoc), [0, 0])
            tally[0] += 1
            tally[1] += size
        return 0x0000

    def on_end(event: evt.Event) -> None:
        with lock:
            instances, size = counts.pop(id(event.assoc), [0, 0])
        line = {"event": "association", "instances": instances, "bytes": size}
        print(json.dumps(line), flush=True)

    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 20
    for sop_class in [*STORAGE_CLASSES, RawDataStorage]:  # Raw Data: Orthanc's twins
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    handlers = [
        (evt.EVT_CONN_OPEN, set_tcp_nodelay),
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_RELEASED, on_end),
        (evt.EVT_ABORTED, on_end),
    ]
    serve_until_stopped(ae, port, handlers)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
