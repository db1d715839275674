"""Bounds on what a peer can make the plugin decode: size, inflation, nesting, values.

pynetdicom decodes a DIMSE dataset with one ``zlib.decompress`` for the
Deflated transfer syntax, without a cap: 1 MiB on the wire became 1 GiB in
memory. :func:`decode_dimse_dataset` decodes datasets and identifiers
itself, inflating in bounded steps and stopping as soon as the inflated
size passes the limit, then checks how deeply sequences nest (deep nesting
makes every recursive walk over a dataset, pydicom's own included, run out
of stack). The size on the wire is bounded earlier, while PDUs arrive
(:mod:`orthanc_dpp.dicom.connections`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import STANDARD_VR

from orthanc_dpp.model import dimse_status

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
        dimse_status: int = dimse_status.STORE_OUT_OF_RESOURCES,
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
        dimse_status=dimse_status.STORE_CANNOT_UNDERSTAND,
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
                dimse_status=dimse_status.FIND_OUT_OF_RESOURCES,
                http_status=400,
            )


class Malformed(LimitExceeded):
    """A Part 10 file whose limits cannot be checked, because it cannot be read safely."""

    def __init__(self, comment: str) -> None:
        super().__init__(
            comment, "", dimse_status=dimse_status.STORE_CANNOT_UNDERSTAND, http_status=400
        )


@dataclass(frozen=True)
class FileMeta:
    """The File Meta Information of a Part 10 file, as pydicom's ``dcmread`` finds it.

    ``fault`` says why the file is refused all the same, once its inflated
    size is checked (a bomb behind a lying meta is answered as a bomb).
    """

    dataset: FileMetaDataset
    end: int  # where pydicom starts reading the dataset
    transfer_syntax: UID | None
    fault: str | None = None


#: The VRs of the standard (pydicom reads others as Implicit VR, or with a guessed length).
_VRS = frozenset(str(vr) for vr in STANDARD_VR)


def _not_group_0002(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def read_file_meta(data: bytes) -> FileMeta | None:
    """The file meta of ``data`` read as ``dcmread`` reads it; None without the DICM prefix.

    pydicom ends the meta where group 0002 ends, whatever (0002,0000) says,
    and keeps the last of repeated elements; so the meta is read here by
    pydicom's own element reader with pydicom's own stopping rule. Raises
    :class:`Malformed` where pydicom would read otherwise than this: an
    element of an unknown VR (pydicom reads the meta again as Implicit VR),
    command elements (group 0000) after the meta (pydicom reads them before
    it inflates a Deflated dataset), values pydicom cannot decode. Other
    faults, which pydicom reads past the same way, are left in
    :attr:`FileMeta.fault`: a group length that disagrees with the elements,
    repeated or unordered elements, an element cut short or of undefined
    length.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    stream = BytesIO(data)
    stream.seek(132)
    try:
        elements = list(data_element_generator(stream, False, True, stop_when=_not_group_0002))
    except Exception as exc:  # pydicom raises several types on a damaged header
        raise Malformed(f"cannot read the file meta: {exc}") from exc
    end = stream.tell()
    faults: list[str] = []
    previous = -1
    for raw in elements:
        where = f"file meta element {raw.tag}"
        if not isinstance(raw, RawDataElement) or raw.VR not in _VRS:
            raise Malformed(f"{where} is not Explicit VR Little Endian")
        if raw.length == 0xFFFFFFFF:
            faults.append(f"{where} has an undefined length")
        elif len(raw.value or b"") != raw.length:
            faults.append(f"file truncated in {where}")
        if raw.tag <= previous:
            faults.append(f"{where} repeated or out of order")
        previous = raw.tag
    try:
        meta = FileMetaDataset({raw.tag: raw for raw in elements})
        for _ in meta:  # decode every value now, as dcmread would later
            pass
        group_length = meta.get("FileMetaInformationGroupLength")
        syntax = meta.get("TransferSyntaxUID")
        transfer_syntax = None if syntax is None else UID(str(syntax))
    except Exception as exc:  # pydicom raises several types on bad values
        raise Malformed(f"cannot decode the file meta: {exc}") from exc
    if data[end : end + 2] == b"\x00\x00":
        raise Malformed("command elements (group 0000) after the file meta")
    if group_length is not None and group_length != end - 144:
        faults.insert(
            0,
            f"File Meta Information Group Length (0002,0000) says {group_length} bytes, "
            f"the file meta elements take {end - 144}",
        )
    return FileMeta(meta, end, transfer_syntax, "; ".join(faults) or None)


def check_part10(data: bytes, limits: DatasetLimits) -> FileMeta | None:
    """Refuse a Part 10 file over ``maximum_size``, as stored or once inflated, or malformed.

    pydicom inflates a Deflated file in one call when reading it; this
    checks first, inflating in bounded steps (and only for Deflated files)
    from where :func:`read_file_meta`, pydicom's reading, ends the meta.
    Then a meta whose elements disagree with each other is refused, so that
    no reader (one trusting the group length, say) can find another dataset
    in the file. Returns the meta; None when ``data`` is not Part 10 (the
    parser says so).
    """
    if len(data) > limits.maximum_size:
        raise LimitExceeded(
            f"File larger than MaximumDatasetSize ({limits.maximum_size} bytes)",
            "MaximumDatasetSize",
        )
    meta = read_file_meta(data)
    if meta is None:
        return None
    # The one transfer syntax that dcmread inflates the whole dataset for.
    if meta.transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            inflate(data[meta.end :], limits.maximum_size)
        except zlib.error as exc:
            raise Malformed(f"the Deflated dataset cannot be inflated: {exc}") from exc
    if meta.fault:
        raise Malformed(meta.fault)
    return meta
