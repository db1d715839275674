"""Profile of the index's start-up without a snapshot: the plugin's Python work per stored file.

Reads the files of a prepared Orthanc folder (``bench/results/orthanc/<factory>-<size>/``)
in change-log order, as the plugin's load reads them, and builds the index from
them in this process under cProfile, with the previous loader (pydicom,
``FastIndexLoad: false``) or the current one. Orthanc's own part (its REST
calls) is not in it: compare with ``LoadSeconds`` of ``python -m bench find``.

    .venv/bin/python -m bench.profile_start bench/results/orthanc/<factory>-10000 current
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import sqlite3
import sys
import time
from pathlib import Path

from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.storage import stored_record


def stored_files(folder: Path) -> list[bytes]:
    """The DICOM files of Orthanc's data folder, in the order of its change log."""
    db = folder / "db"
    with contextlib.closing(sqlite3.connect(f"file:{db / 'index'}?mode=ro", uri=True)) as index:
        rows = index.execute(
            "SELECT a.uuid FROM Changes c JOIN AttachedFiles a ON a.id = c.internalId "
            "WHERE c.changeType = 2 AND a.fileType = 1 ORDER BY c.seq"  # NewInstance, DICOM
        ).fetchall()
    return [(db / uuid[:2] / uuid[2:4] / uuid).read_bytes() for (uuid,) in rows]


def main(folder: str, loader: str, top: int = 12) -> None:
    files = stored_files(Path(folder))
    index = ProtocolIndex()
    build = stored_record.full_record if loader == "previous" else stored_record.original_record
    bulk = index.records.bulk_reading() if loader == "current" else contextlib.nullcontext()

    def load() -> None:
        with bulk:
            for number, data in enumerate(files):
                index.put_record(str(number), build(data, index.records))

    profile = cProfile.Profile()
    started = time.process_time()
    profile.runcall(load)
    seconds = time.process_time() - started
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    print(f"{loader}: {len(files):,} files, {seconds:.1f} s CPU under cProfile")
    print(text[text.index("ncalls") :])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "current")
