"""The benchmark's protocol corpus: generated once, encoded once, cached on disk.

``dpp_tools.samples`` generates about 1,500 instances/s but encodes only
about 140 files/s, so a 100,000-protocol library costs over ten CPU-minutes.
It is therefore built in chunks of ``CHUNK`` instances, on every core, into
``bench/results/cache/<factory version>/``, and a library of N protocols is
the first N/CHUNK chunks: every size shares the same files, and a changed
factory (a new hash of its source) gets a new cache instead of stale data.

Each chunk holds the encoded files (what is stored in Orthanc and retrieved)
and, pickled as a list of bytes, the same datasets encoded without their
three bulky Specification sequences: the baseline SCP parses those into its
Python list of datasets at start-up (about 0.2 ms each; pickled pydicom
datasets load five times slower, and full files would cost gigabytes).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from bench import REPO, RESULTS

CHUNK = 1000
KINDS = ("CT", "XA")  # what the DPP information model answers (approvals have their own)
# Large sequences of constraints: no realistic C-FIND key lives there.
BULKY = (
    "AcquisitionProtocolElementSpecificationSequence",
    "ReconstructionProtocolElementSpecificationSequence",
    "StorageProtocolElementSpecificationSequence",
)


def factory_version() -> str:
    """Short hash of the factory's source: the cache key for everything generated."""
    source = (REPO / "dpp_tools" / "samples.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


def cache_root() -> Path:
    return RESULTS / "cache" / factory_version()


def _chunk_dir(number: int) -> Path:
    return cache_root() / f"chunk-{number:04d}"


def _build_chunk(number: int) -> int:
    """Generate, encode and write chunk `number` (in a worker process); return its size."""
    from dpp_tools.samples import make_library, to_bytes

    final = _chunk_dir(number)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    keys: list[bytes] = []
    for i, ds in enumerate(make_library(CHUNK, seed=number * CHUNK, kinds=KINDS)):
        (partial / f"{i:04d}.dcm").write_bytes(to_bytes(ds))
        light = Dataset()
        light.update({elem.tag: elem for elem in ds if elem.keyword not in BULKY})
        light.file_meta = ds.file_meta
        keys.append(to_bytes(light))
    with (partial / "keys.pickle").open("wb") as out:
        pickle.dump(keys, out, protocol=pickle.HIGHEST_PROTOCOL)
    partial.rename(final)  # a chunk exists whole or not at all
    return number


def ensure(count: int, log: bool = True) -> None:
    """Make sure the first `count` protocols are cached, building missing chunks in parallel."""
    chunks = range((count + CHUNK - 1) // CHUNK)
    missing = [n for n in chunks if not _chunk_dir(n).is_dir()]
    if not missing:
        return
    workers = max(1, min(len(missing), os.cpu_count() or 1))
    started = time.monotonic()
    if log:
        print(
            f"  generating {len(missing) * CHUNK:,} protocols into {cache_root()} "
            f"({workers} processes; cached for later runs)",
            flush=True,
        )
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for done, _ in enumerate(pool.imap_unordered(_build_chunk, missing), start=1):
            if log and (done % 10 == 0 or done == len(missing)):
                rate = done * CHUNK / (time.monotonic() - started)
                print(f"    {done * CHUNK:,}/{len(missing) * CHUNK:,} ({rate:.0f}/s)", flush=True)


def files(count: int) -> list[Path]:
    """Paths of the first `count` encoded protocols (call :func:`ensure` first)."""
    paths: list[Path] = []
    for number in range((count + CHUNK - 1) // CHUNK):
        take = min(CHUNK, count - number * CHUNK)
        paths += [_chunk_dir(number) / f"{i:04d}.dcm" for i in range(take)]
    return paths


def key_files(count: int) -> Iterator[bytes]:
    """The first `count` protocols without their bulky sequences, as DICOM files in memory."""
    left = count
    for number in range((count + CHUNK - 1) // CHUNK):
        with (_chunk_dir(number) / "keys.pickle").open("rb") as src:
            chunk: list[bytes] = pickle.load(src)
        yield from chunk[:left]
        left -= len(chunk)


@dataclass(frozen=True)
class SizeSummary:
    count: int
    total_bytes: int

    @property
    def mean_kib(self) -> float:
        return self.total_bytes / self.count / 1024 if self.count else 0.0


def sizes(paths: list[Path]) -> SizeSummary:
    return SizeSummary(len(paths), sum(p.stat().st_size for p in paths))
