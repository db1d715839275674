"""Baseline (a): the plainest DPP C-FIND SCP pynetdicom allows, over a Python list.

``python -m bench.baseline_scp PORT AET COUNT``. It holds the benchmark
library's first COUNT protocols as pydicom datasets in a list and answers
C-FIND (SOP class 1.2.840.10008.5.1.4.20.1) by testing every dataset with a
simple filter: universal, single value, ``*``/``?`` wild card, sequence items
(any stored item matching all keys of the query item). No index, no
character-set or VR subtleties: this is the ceiling for a pynetdicom SCP in
one Python process, which is what the plugin is compared with.

It runs in its own process (its own GIL, as Orthanc's interpreter has) and
reports its load time and resident memory in its "ready" line.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config

from bench import corpus
from bench.child import rss_kib
from orthanc_dpp.dicom.connections import set_tcp_nodelay
from orthanc_dpp.model.sop import DPP_FIND, TRANSFER_SYNTAXES

SKIP = {0x00080005, 0x00080052}  # Specific Character Set, Query/Retrieve Level


def _text(value: object) -> str:
    return str(value).rstrip(" ")


def _value_matches(stored: DataElement | None, wanted: object) -> bool:
    if wanted in (None, "", b""):
        return True  # universal
    if stored is None or stored.value in (None, ""):
        return False
    values = stored.value if stored.VM > 1 else [stored.value]
    pattern = _text(wanted)
    if "*" in pattern or "?" in pattern:
        return any(fnmatch.fnmatchcase(_text(v), pattern) for v in values)
    return any(_text(v) == pattern for v in values)


def _item_matches(stored_items: Sequence, query_item: Dataset) -> bool:
    return any(_matches(item, query_item) for item in stored_items)


def _matches(ds: Dataset, query: Dataset) -> bool:
    for elem in query:
        if elem.tag in SKIP:
            continue
        stored = ds.get(elem.tag)
        if elem.VR == "SQ":
            if not elem.value or not any(e.value not in (None, "") for e in elem.value[0]):
                continue  # a return key only
            if stored is None or not _item_matches(stored.value, elem.value[0]):
                return False
        elif not _value_matches(stored, elem.value):
            return False
    return True


def _response(ds: Dataset, query: Dataset) -> Dataset:
    out = Dataset()
    if "SpecificCharacterSet" in ds:
        out.SpecificCharacterSet = ds.SpecificCharacterSet
    for elem in query:
        if elem.tag in SKIP:
            continue
        stored = ds.get(elem.tag)
        if elem.VR == "SQ" and stored is not None and elem.value and len(elem.value[0]):
            wanted = [e.tag for e in elem.value[0]]
            items = []
            for item in stored.value:
                reduced = Dataset()
                for tag in wanted:
                    if tag in item:
                        reduced[tag] = item[tag]
                items.append(reduced)
            out[elem.tag] = DataElement(elem.tag, "SQ", Sequence(items))
        elif stored is not None:
            out[elem.tag] = stored
        else:
            out[elem.tag] = DataElement(elem.tag, elem.VR, None)
    return out


def load(count: int) -> list[Dataset]:
    return [dcmread(io.BytesIO(data)) for data in corpus.key_files(count)]


def main(port: int, aet: str, count: int) -> None:
    started = time.monotonic()
    datasets = load(count)
    # Decode the values once, as a long-running SCP would have after its first queries.
    for ds in datasets:
        for elem in ds.iterall():
            _ = elem.value
    load_seconds = time.monotonic() - started

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        for ds in datasets:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            if _matches(ds, query):
                yield 0xFF00, _response(ds, query)

    # As the plugin does (listener.quiet_pynetdicom): no per-message log handlers.
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    ae = AE(ae_title=aet)
    ae.maximum_associations = 10
    # pynetdicom's network timeout counts only *received* data, so a C-FIND
    # answer longer than it (100,000 responses) would be aborted midway.
    ae.network_timeout = None
    ae.add_supported_context(DPP_FIND, TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_C_FIND, on_find)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    ready = {
        "event": "ready",
        "count": len(datasets),
        "load_seconds": load_seconds,
        "rss_kib": rss_kib(os.getpid()),
    }
    print(json.dumps(ready), flush=True)
    try:
        threading.Event().wait()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
