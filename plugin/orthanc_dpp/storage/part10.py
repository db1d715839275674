"""Protocols as Part 10 files: read whole or walked, and written spliced.

A received file is read the way the stored one will be read back: an
element cut short, a file meta with faults or a value that cannot be
decoded is refused here, with the reason, before anything is stored. A file
whose elements :mod:`orthanc_dpp.storage.encoded` vouches for is kept as
received, and only what normalization adds is encoded (``spliced_part10``).
"""

from __future__ import annotations

import io
import threading
import warnings

import pydicom
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.valuerep import PersonName

from orthanc_dpp.model import dimse_status, normalization
from orthanc_dpp.storage import encoded
from orthanc_dpp.storage.decoding import Malformed, read_file_meta
from orthanc_dpp.storage.errors import StoreError

#: Held while :func:`parse_part10` records pydicom's warnings (see there).
_WARNINGS_CAUGHT = threading.Lock()


def parse_part10(data: bytes) -> Dataset:
    """Decode a DICOM Part 10 file, or raise :class:`StoreError` saying why not.

    pydicom reads a truncated file without complaint (the last value comes
    out short); such a file is refused here, since storing it would keep a
    damaged protocol as if it were whole.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise StoreError(
            dimse_status.STORE_CANNOT_UNDERSTAND,
            400,
            "not a DICOM Part 10 file (no 'DICM' prefix after the 128-byte preamble)",
        )
    stream = _WholeReads(data)
    try:
        # catch_warnings swaps process-wide state and restores what it found:
        # two threads inside at once could leave the other's recorder installed
        # for good (and take each other's warnings), hence one at a time.
        with _WARNINGS_CAUGHT, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(stream)
            _check_complete(ds)
            # Decode every element now: a damaged file must fail here, not later.
            for _ in ds.iterall():
                pass
        for warning in caught:
            if "end of file" in str(warning.message).lower():
                raise ValueError(str(warning.message))
        if stream.cut_short:
            raise ValueError(f"file truncated: {stream.cut_short} bytes of an element at its end")
    except Exception as exc:  # pydicom raises many types on damaged data (zlib.error...)
        raise StoreError(
            dimse_status.STORE_CANNOT_UNDERSTAND, 400, f"cannot decode the DICOM file: {exc}"
        ) from exc
    if len(ds) == 0:
        raise StoreError(
            dimse_status.STORE_CANNOT_UNDERSTAND, 400, "the DICOM file holds no dataset"
        )
    return ds


class _WholeReads(io.BytesIO):
    """A file that notes a read the end of the file cut short.

    pydicom ends a dataset without a word when fewer bytes than an element
    header are left: a file cut inside a header would lose its last element.
    (The inflated dataset of a Deflated file is read from pydicom's own
    buffer: a cut there is not seen.)
    """

    cut_short = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if size is not None and size > 0 and 0 < len(chunk) < size:
            self.cut_short = len(chunk)
        return chunk


def read_part10(data: bytes, maximum_depth: int) -> tuple[Dataset, encoded.Elements | None]:
    """A Part 10 file as :func:`parse_part10` reads it, and its walked elements if it could.

    The file meta is the one :func:`decoding.read_file_meta` reads (pydicom's
    reading, which the inflation check used too); one with faults is
    refused. A little endian file whose every element :func:`encoded.scan`
    vouches for (lengths within their containers at every level, at most
    ``maximum_depth`` levels of sequences) is read lazily, its values decoded
    when used, and its elements are returned for :meth:`ProtocolLibrary.store`
    to splice into. Anything else goes through :func:`parse_part10`, which
    decodes every value and says what is wrong (elements: None).
    """
    try:
        meta = read_file_meta(data)
    except Malformed as exc:
        raise StoreError(exc.status, exc.http_status, exc.comment) from exc
    if meta is not None and meta.fault:
        raise StoreError(dimse_status.STORE_CANNOT_UNDERSTAND, 400, meta.fault)
    if meta is not None:
        try:
            implicit = encoded.WALKED.get(str(meta.transfer_syntax or "").strip("\x00 "))
            if implicit is not None:
                elements = encoded.scan(data[meta.end :], implicit, maximum_depth)
                if elements.tags:
                    ds = read_dataset(io.BytesIO(elements.data), implicit, True)
                    ds.set_original_encoding(implicit, True)
                    ds.file_meta = meta.dataset
                    return ds, elements
        except Exception:  # pydicom raises many types on damaged data
            pass  # parse_part10 decides, and says why
    return parse_part10(data), None


def _check_complete(ds: Dataset) -> None:
    """Raise ValueError if a top-level value is shorter than its declared length."""
    # keys(): iterating the Dataset itself would decode the raw elements.
    for tag in ds.keys():  # noqa: SIM118
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.value is None:
            continue
        if raw.length != 0xFFFFFFFF and len(raw.value) < raw.length:
            raise ValueError(
                f"file truncated in element {tag}: {len(raw.value)} of {raw.length} bytes"
            )


def encode_part10(ds: Dataset) -> bytes:
    """Encode ``ds`` as a Part 10 file in the transfer syntax of its file meta."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def spliced_part10(
    ds: Dataset, elements: encoded.Elements, result: normalization.Normalized
) -> bytes | None:
    """``ds`` as a Part 10 file: the received ``elements`` plus what normalization added.

    Only the added elements are encoded (see :mod:`orthanc_dpp.storage.encoded`).
    None when that cannot be done faithfully (the file meta names another
    transfer syntax; a group length in a touched group; an added text that
    is not ASCII, whose bytes would depend on the character set), and the
    caller encodes the whole dataset instead.
    """
    meta = getattr(ds, "file_meta", None)
    if not isinstance(meta, FileMetaDataset):
        return None
    if encoded.WALKED.get(str(meta.get("TransferSyntaxUID", ""))) is not elements.implicit:
        return None
    touched = result.touched
    if not touched:
        return encoded.part10(meta, elements.data)
    if elements.has_group_length(tag.group for tag in touched):
        return None
    for tag in touched:
        value = ds[tag].value
        if not isinstance(value, str | PersonName) or not str(value).isascii():
            return None
    added = encoded.encode_elements(ds, touched, elements.implicit)
    return encoded.part10(meta, encoded.splice(elements, added))
