"""Encoded datasets walked without decoding them: element offsets, nesting depth, splicing.

Storing a protocol used to decode every element with pydicom (to bound the
sequence nesting), then encode the whole dataset again after normalization
added a handful of top-level attributes: two thirds of the plugin's time
per C-STORE. The bytes a peer sent are already a valid encoding of the
dataset, so :func:`scan` walks them once (checking that every length fits,
at every level, and how deeply sequences nest) and :func:`splice` inserts the
few encoded attributes normalization adds between the original elements, in
tag order. The stored file is then the sender's bytes plus the added
attributes, element for element.

Only little endian, non-deflated encodings are walked; anything this reader
does not vouch for raises :class:`Unreadable`, and callers fall back to
decoding with pydicom (which then reports what is wrong, or accepts it).
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: Transfer syntaxes whose datasets are walked here (value: implicit VR).
WALKED: Final = {str(ImplicitVRLittleEndian): True, str(ExplicitVRLittleEndian): False}

_TAG_LENGTH = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<I")
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_PREAMBLE = b"\x00" * 128 + b"DICM"


class Unreadable(ValueError):
    """Bytes this walker does not vouch for (damaged, unsorted, unsupported)."""


class TooDeep(Exception):
    """Sequences nest deeper than the maximum given to :func:`scan`."""


@dataclass(frozen=True)
class Elements:
    """The top-level elements of an encoded dataset: tags (ascending) and start offsets."""

    data: bytes
    implicit: bool
    tags: tuple[int, ...]
    starts: tuple[int, ...]  # one more than tags: the end of the data

    def has_group_length(self, groups: Iterable[int]) -> bool:
        """Whether a group length element (gggg,0000) of one of ``groups`` is present.

        Inserting an element into such a group would make its length wrong.
        """
        for group in set(groups):
            k = bisect.bisect_left(self.tags, group << 16)
            if k < len(self.tags) and self.tags[k] == group << 16:
                return True
        return False


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def scan(data: bytes, implicit: bool, maximum_depth: int) -> Elements:
    """The top-level elements of ``data`` (little endian), every level checked.

    Raises :class:`TooDeep` when a sequence sits deeper than ``maximum_depth``
    levels (a top-level sequence is level 1, as ``decoding.nesting_depth``
    counts), :class:`Unreadable` when a length runs past its container, a
    delimiter is missing, top-level tags are not ascending, or the dataset
    holds Pixel Data (encapsulated fragments are not datasets).
    """
    top: list[tuple[int, int]] = []
    try:
        _elements(data, 0, len(data), implicit, 0, maximum_depth, top)
    except struct.error as exc:
        raise Unreadable(f"element header cut short: {exc}") from None
    tags = tuple(tag for tag, _ in top)
    if any(tags[i] >= tags[i + 1] for i in range(len(tags) - 1)):
        raise Unreadable("top-level elements not in ascending tag order")
    return Elements(data, implicit, tags, (*(start for _, start in top), len(data)))


def _elements(
    data: bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    depth: int,
    maximum: int,
    top: list[tuple[int, int]] | None,
) -> int:
    """Walk elements from ``pos`` to ``end`` (None: to an item delimiter); the end position."""
    limit = len(data) if end is None else end
    while pos < limit:
        start = pos
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        tag = (group << 16) | element
        if group == 0xFFFE:
            if tag == _ITEM_END and end is None:
                return pos + 8
            raise Unreadable(f"unexpected delimiter {tag:08X} at byte {pos}")
        vr: bytes | None = None
        if implicit:
            pos += 8
        else:
            _, _, vr, length = _EXPLICIT.unpack_from(data, pos)
            pos += 8
            if vr in _LONG_VRS:
                (length,) = _LENGTH.unpack_from(data, pos)
                pos += 4
        if top is not None:
            top.append((tag, start))
        if tag == _PIXEL_DATA:
            raise Unreadable("Pixel Data is not walked")
        known = None if vr == b"SQ" else _dictionary_vr(tag)
        sequence = vr == b"SQ" or length == _UNDEFINED or known == "SQ"
        if sequence and depth + 1 > maximum:
            raise TooDeep(depth + 1)
        inner_implicit = implicit or vr == b"UN"  # a sequence in UN is Implicit VR
        if length == _UNDEFINED:
            pos = _items(data, pos, None, inner_implicit, depth + 1, maximum)
            continue
        if pos + length > limit:
            raise Unreadable(f"element {tag:08X} ends after its container")
        if sequence and length:
            _items(data, pos, pos + length, inner_implicit, depth + 1, maximum)
        pos += length
    if end is None:
        raise Unreadable("item delimiter missing")
    return pos


def _items(data: bytes, pos: int, end: int | None, implicit: bool, depth: int, maximum: int) -> int:
    """Walk the items of a sequence value; the position after it (and its delimiter)."""
    limit = len(data) if end is None else end
    while pos < limit:
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_END and end is None:
            return pos
        if tag != _ITEM:
            raise Unreadable(f"item expected in a sequence, found {tag:08X}")
        if length == _UNDEFINED:
            pos = _elements(data, pos, None, implicit, depth, maximum, None)
            continue
        if pos + length > limit:
            raise Unreadable("item ends after its sequence")
        _elements(data, pos, pos + length, implicit, depth, maximum, None)
        pos += length
    if end is None:
        raise Unreadable("sequence delimiter missing")
    return pos


def encode_elements(ds: Dataset, tags: Iterable[int], implicit: bool) -> bytes:
    """The elements ``tags`` of ``ds``, encoded (little endian) in ascending order."""
    part = Dataset()
    for tag in tags:
        part[tag] = ds[tag]
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, part)
    return out.getvalue()


def splice(original: Elements, added: bytes) -> bytes:
    """``original`` with the encoded top-level elements ``added`` inserted in tag order.

    An added element with a tag ``original`` has replaces it.
    """
    new = scan(added, original.implicit, 0)
    data, tags, starts = original.data, original.tags, original.starts
    pieces: list[bytes] = []
    cursor = 0
    for number, tag in enumerate(new.tags):
        k = bisect.bisect_left(tags, tag, cursor)
        pieces.append(data[starts[cursor] : starts[k]])
        pieces.append(added[new.starts[number] : new.starts[number + 1]])
        cursor = k + 1 if k < len(tags) and tags[k] == tag else k
    pieces.append(data[starts[cursor] :])
    return b"".join(pieces)


def part10(file_meta: FileMetaDataset, dataset: bytes) -> bytes:
    """A Part 10 file: preamble, ``file_meta`` (completed as the standard asks), ``dataset``."""
    out = DicomBytesIO()
    out.write(_PREAMBLE)
    write_file_meta_info(out, file_meta, enforce_standard=True)
    return out.getvalue() + dataset
