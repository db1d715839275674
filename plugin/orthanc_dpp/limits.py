"""Bounds on what a peer can make the plugin decode: size, inflation, nesting, values.

pynetdicom decodes a DIMSE dataset with one ``zlib.decompress`` for the
Deflated transfer syntax, without a cap: 1 MiB on the wire became 1 GiB in
memory. :func:`decode_dimse_dataset` decodes datasets and identifiers
itself, inflating in bounded steps and stopping as soon as the inflated
size passes the limit, then checks how deeply sequences nest (deep nesting
makes every recursive walk over a dataset, pydicom's own included, run out
of stack). The size on the wire is bounded earlier, while PDUs arrive
(:mod:`orthanc_dpp.connections`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from orthanc_dpp import status

#: Bytes inflated per step: large enough to be quick, small enough that an
#: overshoot past the limit costs nothing.
INFLATE_STEP = 1 << 20


@dataclass(frozen=True)
class DatasetLimits:
    """Limits from the plugin's settings; each names its configuration key."""

    maximum_size: int = 16 << 20  # MaximumDatasetSize, bytes, on the wire and inflated
    maximum_depth: int = 8  # MaximumNestingDepth, sequence levels
    maximum_values: int = 10_000  # MaximumValuesPerKey, for C-FIND/C-GET/C-MOVE identifiers


class LimitExceeded(Exception):
    """A dataset passes one of the limits; ``status`` and ``http_status`` say how to answer."""

    def __init__(
        self,
        comment: str,
        key: str,
        *,
        dimse_status: int = status.STORE_OUT_OF_RESOURCES,
        http_status: int = 413,
    ) -> None:
        super().__init__(comment)
        self.comment = comment
        self.key = key
        self.status = dimse_status
        self.http_status = http_status


def inflate(data: bytes, maximum: int) -> bytes:
    """Raw-deflate ``data`` (PS3.5 A.5), refusing output larger than ``maximum`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    while True:
        chunk = inflater.decompress(pending, min(INFLATE_STEP, maximum + 1 - len(out)))
        out += chunk
        if len(out) > maximum:
            raise LimitExceeded(
                f"Dataset inflates to more than MaximumDatasetSize ({maximum} bytes)",
                "MaximumDatasetSize",
            )
        pending = inflater.unconsumed_tail
        if not pending:
            out += inflater.flush()
            if len(out) > maximum:
                continue  # reported on the next turn
            return bytes(out)


def nesting_depth(ds: Dataset, maximum: int, depth: int = 0) -> int:
    """Deepest sequence nesting in ``ds``, counting no further than ``maximum + 1``."""
    deepest = depth
    for element in ds:
        if element.VR == "SQ" and isinstance(element.value, Sequence):
            if depth + 1 > maximum:
                return depth + 1
            for item in element.value:
                deepest = max(deepest, nesting_depth(item, maximum, depth + 1))
                if deepest > maximum:
                    return deepest
    return deepest


def too_deep(maximum: int) -> LimitExceeded:
    return LimitExceeded(
        f"Sequences nested deeper than MaximumNestingDepth ({maximum})",
        "MaximumNestingDepth",
        dimse_status=status.STORE_CANNOT_UNDERSTAND,
        http_status=400,
    )


def check_nesting(ds: Dataset, maximum: int) -> None:
    try:
        depth = nesting_depth(ds, maximum)
    except RecursionError:  # pydicom decodes nested sequences recursively
        depth = maximum + 1
    if depth > maximum:
        raise too_deep(maximum)


def decode_dimse_dataset(raw: bytes, transfer_syntax: str, limits: DatasetLimits) -> Dataset:
    """Decode a DIMSE dataset or identifier within ``limits`` (raises :class:`LimitExceeded`)."""
    if len(raw) > limits.maximum_size:
        raise LimitExceeded(
            f"Dataset larger than MaximumDatasetSize ({limits.maximum_size} bytes)",
            "MaximumDatasetSize",
        )
    syntax = UID(transfer_syntax)
    if syntax.is_deflated:
        raw = inflate(raw, limits.maximum_size)
        implicit, little = False, True
    else:
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    try:
        ds = read_dataset(BytesIO(raw), implicit, little)
    except RecursionError:
        raise too_deep(limits.maximum_depth) from None
    ds.set_original_encoding(implicit, little)
    check_nesting(ds, limits.maximum_depth)
    return ds


def check_values_per_key(identifier: Dataset, maximum: int) -> None:
    """Refuse an identifier with more than ``maximum`` values in one key (C-FIND, C-GET, C-MOVE)."""
    for element in identifier:
        count = element.VM
        if element.VR != "SQ" and count > maximum:
            raise LimitExceeded(
                f"{element.keyword or element.tag} has {count} values, more than "
                f"MaximumValuesPerKey ({maximum})",
                "MaximumValuesPerKey",
                dimse_status=status.FIND_OUT_OF_RESOURCES,
                http_status=400,
            )


def check_part10(data: bytes, limits: DatasetLimits) -> None:
    """Refuse a Part 10 file over ``maximum_size``, as stored or once inflated.

    pydicom inflates a Deflated file in one call when reading it; this
    checks first, inflating in bounded steps (and only for Deflated files).
    """
    if len(data) > limits.maximum_size:
        raise LimitExceeded(
            f"File larger than MaximumDatasetSize ({limits.maximum_size} bytes)",
            "MaximumDatasetSize",
        )
    if len(data) < 144 or data[128:132] != b"DICM":
        return  # not Part 10: the parser says so
    (group_length,) = struct.unpack_from("<L", data, 140)
    end = 144 + group_length
    try:
        meta = read_dataset(BytesIO(data[132:end]), False, True)
        syntax = UID(str(meta.get("TransferSyntaxUID", "")))
    except Exception:
        return  # a damaged header: the parser says what is wrong
    if syntax.is_deflated:
        inflate(data[end:], limits.maximum_size)
