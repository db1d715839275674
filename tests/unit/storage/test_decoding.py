"""Bounded decoding: inflation stops at the limit, nesting and value counts are refused."""

from __future__ import annotations

import struct
import zlib

import pytest
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from orthanc_dpp.dicom.connections import MessageMeter
from orthanc_dpp.model import dimse_status
from orthanc_dpp.storage.decoding import (
    DatasetLimits,
    LimitExceeded,
    check_values_per_key,
    decode_dimse_dataset,
    inflate,
)
from tests.datasets import nested


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def encoded(ds: Dataset) -> bytes:
    data = encode(ds, False, True)  # explicit VR little endian, as pynetdicom sends
    assert data is not None
    return data


def test_inflate_within_the_limit() -> None:
    data = b"protocol" * 1000
    assert inflate(deflate(data), len(data)) == data


def test_a_deflate_bomb_stops_at_the_limit() -> None:
    bomb = deflate(bytes(64 << 20))  # 64 MiB of zeros, about 64 KiB deflated
    assert len(bomb) < 100_000
    with pytest.raises(LimitExceeded) as refused:
        inflate(bomb, 1 << 20)
    assert refused.value.key == "MaximumDatasetSize"
    assert refused.value.status == dimse_status.STORE_OUT_OF_RESOURCES
    assert "inflates to more than MaximumDatasetSize (1048576 bytes)" in refused.value.comment


def test_decode_deflated_and_plain() -> None:
    ds = Dataset()
    ds.ProtocolName = "Head"
    ds.SOPInstanceUID = "1.2.3.4"
    raw = encoded(ds)
    limits = DatasetLimits()
    assert decode_dimse_dataset(raw, ExplicitVRLittleEndian, limits).ProtocolName == "Head"
    back = decode_dimse_dataset(deflate(raw), DeflatedExplicitVRLittleEndian, limits)
    assert back.SOPInstanceUID == "1.2.3.4"


def test_too_large_on_the_wire() -> None:
    with pytest.raises(LimitExceeded, match=r"larger than MaximumDatasetSize \(65536 bytes\)"):
        decode_dimse_dataset(bytes(70_000), ExplicitVRLittleEndian, DatasetLimits(65536))


@pytest.mark.parametrize(("depth", "refused"), [(8, False), (9, True), (120, True)])
def test_nesting_depth(depth: int, refused: bool) -> None:
    raw = encoded(nested(depth))
    limits = DatasetLimits(maximum_depth=8)
    if not refused:
        assert decode_dimse_dataset(raw, ExplicitVRLittleEndian, limits).SOPInstanceUID == "1.2.3"
        return
    with pytest.raises(LimitExceeded) as too_deep:
        decode_dimse_dataset(raw, ExplicitVRLittleEndian, limits)
    assert too_deep.value.status == dimse_status.STORE_CANNOT_UNDERSTAND
    assert too_deep.value.comment == "Sequences nested deeper than MaximumNestingDepth (8)"


def test_values_per_key() -> None:
    identifier = Dataset()
    identifier.SOPInstanceUID = [f"1.2.{n}" for n in range(11)]
    check_values_per_key(identifier, 11)
    with pytest.raises(LimitExceeded) as refused:
        check_values_per_key(identifier, 10)
    assert refused.value.comment == (
        "SOPInstanceUID has 11 values, more than MaximumValuesPerKey (10)"
    )
    assert refused.value.status == dimse_status.FIND_OUT_OF_RESOURCES


def pdv(data: bytes, *, command: bool = False, last: bool = False) -> bytes:
    control = (0x01 if command else 0) | (0x02 if last else 0)
    return struct.pack(">LBB", len(data) + 2, 1, control) + data


def store_command() -> bytes:
    """A C-STORE-RQ command set: a dataset follows."""
    command = Dataset()
    command.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    command.CommandField = 0x0001
    command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = "1.2.3"
    return encode(command, True, True)


def test_data_fragments_are_counted_per_message() -> None:
    meter = MessageMeter(1000, 16384, 4096)
    assert meter.feed(pdv(store_command(), command=True, last=True) + pdv(b"d" * 100)) is None
    assert meter.data == 100
    assert meter.feed(pdv(b"d" * 100, last=True)) is None  # message done
    assert meter.data == 0
    assert meter.feed(pdv(b"d" * 600) + pdv(b"d" * 500)) == (
        "a dataset of more than 1000 bytes (MaximumDatasetSize)"
    )
