"""Malformed Part 10 files for the upload tests: lying metas, cuts, repeats, bad deflate, noise.

Every file :func:`refused_files` draws must be refused by ``POST /dpp/protocols``
(none is a readable protocol), so a test can ask for a 4xx and an unchanged
library. :func:`damaged_files` also draws files that may still be readable
(bytes flipped anywhere): the checker and the parser must then agree.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dpp_tools.samples import make_protocol, to_bytes

#: A Transfer Syntax UID value that starts with Implicit VR Little Endian's UID.
DEFLATED_UID = DeflatedExplicitVRLittleEndian.encode()
PRIVATE_BLOB = 0x7FE11010  # after every attribute of a protocol: appended last


def meta_end(data: bytes) -> int:
    """Where the dataset of a well-formed Part 10 file starts (its group length is true)."""
    (length,) = struct.unpack_from("<L", data, 140)
    return 144 + length


def with_group_length(data: bytes, length: int) -> bytes:
    """``data`` with File Meta Information Group Length (0002,0000) set to ``length``."""
    return data[:140] + struct.pack("<L", length) + data[144:]


def meta_elements(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each file meta element of a well-formed file."""
    out, pos, end = [], 132, meta_end(data)
    while pos < end:
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN"):
            (length,) = struct.unpack_from("<L", data, pos + 8)
            size = 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            size = 8 + length
        out.append((pos, pos + size))
        pos += size
    return out


def transfer_syntax_value(data: bytes) -> int:
    """Offset of the Transfer Syntax UID (0002,0010) value in a well-formed file."""
    for start, _ in meta_elements(data):
        if data[start : start + 4] == b"\x02\x00\x10\x00":
            return start + 8
    raise ValueError("no Transfer Syntax UID")


def deflated_bomb(seed: int, inflated: int) -> bytes:
    """A Deflated protocol whose dataset ends with a private OB of ``inflated`` zero bytes.

    Built in steps (the zeros are never held whole): a protocol, readable
    and storable, that is as large as asked once inflated.
    """
    ds = make_protocol(seed, "CT")
    whole = to_bytes(ds, DeflatedExplicitVRLittleEndian)
    head = whole[: meta_end(whole)]
    plain = to_bytes(ds, ExplicitVRLittleEndian)
    dataset = plain[meta_end(plain) :]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    group, element = PRIVATE_BLOB >> 16, PRIVATE_BLOB & 0xFFFF
    out = [packer.compress(dataset + struct.pack("<HH2sHL", group, element, b"OB", 0, inflated))]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(packer.compress(zeros))
    out.append(packer.compress(bytes(inflated & ((1 << 20) - 1))))
    out.append(packer.flush())
    return head + b"".join(out)


def lying_about_syntax(data: bytes) -> bytes:
    """The reported attack: a group length ending inside the Transfer Syntax UID value.

    Read up to that length, the value is "1.2.840.10008.1.2" (Implicit VR
    Little Endian, not deflated); pydicom reads the whole group and inflates.
    """
    value = transfer_syntax_value(data)
    assert data[value : value + len(DEFLATED_UID)] == DEFLATED_UID
    return with_group_length(data, value + len(ImplicitVRLittleEndian) - 144)


def top_level_starts(data: bytes) -> set[int]:
    """Offsets where a top-level element of a well-formed uncompressed file starts."""
    stream = io.BytesIO(data)
    stream.seek(meta_end(data))
    starts = set()
    position = stream.tell()
    for raw in data_element_generator(stream, False, True):
        starts.add(position)
        position = stream.tell()
        del raw
    return starts


def protocol_file(seed: int, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds: Dataset = make_protocol(seed, "CT")
    return to_bytes(ds, syntax)


PLAIN = protocol_file(4242)
DEFLATED = protocol_file(4243, DeflatedExplicitVRLittleEndian)
BASES = (PLAIN, DEFLATED)
PLAIN_BOUNDARIES = top_level_starts(PLAIN) | {len(PLAIN)}


def _whole_stream(data: bytes) -> bool:
    try:
        zlib.decompress(data[meta_end(DEFLATED) :], -zlib.MAX_WBITS)
    except zlib.error:
        return False
    return True


#: pydicom pads the deflated dataset to an even length: without the pad it is whole.
DEFLATED_WHOLE = {n for n in range(len(DEFLATED) - 8, len(DEFLATED)) if _whole_stream(DEFLATED[:n])}


@st.composite
def lying_group_length(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(BASES))
    true = meta_end(data) - 144
    length = draw(
        st.one_of(
            st.integers(0, true + 64), st.integers(0, 0xFFFFFFFF), st.sampled_from([0, true - 3])
        ).filter(lambda n: n != true)
    )
    return with_group_length(data, length)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(BASES))
    if data is PLAIN:
        # A cut at a top-level boundary leaves a whole (shorter) file.
        cut = draw(st.integers(0, len(data) - 1).filter(lambda n: n not in PLAIN_BOUNDARIES))
    else:
        cut = draw(st.integers(0, len(data) - 1).filter(lambda n: n not in DEFLATED_WHOLE))
    return data[:cut]


@st.composite
def repeated_meta_element(draw: st.DrawFn) -> bytes:
    """A file meta element written twice (a second Transfer Syntax UID, say)."""
    data = draw(st.sampled_from(BASES))
    elements = meta_elements(data)
    start, end = draw(st.sampled_from(elements[1:]))
    element = data[start:end]
    if data[start : start + 4] == b"\x02\x00\x10\x00" and draw(st.booleans()):
        other = ExplicitVRLittleEndian if data is DEFLATED else DeflatedExplicitVRLittleEndian
        value = other.encode() + b"\x00" * (len(other) % 2)
        element = element[:6] + struct.pack("<H", len(value)) + value
    twice = data[:end] + element + data[end:]
    if draw(st.booleans()):  # a group length that counts both
        twice = with_group_length(twice, meta_end(data) - 144 + len(element))
    return twice


@st.composite
def deflated_garbage(draw: st.DrawFn) -> bytes:
    """A sound meta saying Deflated, and a body that is not a deflated protocol."""
    head = DEFLATED[: meta_end(DEFLATED)]
    noise = draw(st.binary(min_size=0, max_size=4096))
    if draw(st.booleans()):  # a valid deflate stream of garbage
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        noise = packer.compress(noise) + packer.flush()
    return head + noise


@st.composite
def random_bytes(draw: st.DrawFn) -> bytes:
    noise = draw(st.binary(min_size=0, max_size=4096))
    if draw(st.booleans()):
        return bytes(128) + b"DICM" + noise
    return noise


@st.composite
def flipped(draw: st.DrawFn) -> bytes:
    """Bytes changed anywhere in the meta or the first elements: maybe still readable."""
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(128, min(len(data) - 1, meta_end(bytes(data)) + 64)))
        data[position] = draw(st.integers(0, 255))
    return bytes(data)


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[bytes]]] = {
    "lying group length": lying_group_length,
    "truncated": truncated,
    "repeated meta element": repeated_meta_element,
    "deflated garbage": deflated_garbage,
    "random bytes": random_bytes,
}


def refused_files() -> st.SearchStrategy[bytes]:
    """Files no upload may store."""
    return st.one_of(*(make() for make in STRATEGIES.values()))


def damaged_files() -> st.SearchStrategy[bytes]:
    """:func:`refused_files` and files with bytes flipped, which may still be readable."""
    return st.one_of(refused_files(), flipped())
