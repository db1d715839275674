"""Zip archives of Part 10 files: what ``GET /dpp/export`` answers and ``POST /dpp/protocols``
also reads.

Reading is bounded before anything is inflated, since a small zip can
declare gigabytes (a zip bomb): at most ``maximum_members`` files, and all
of them together at most ``maximum_size`` bytes once inflated, counted from
the sizes the archive declares and again while inflating (a member that
inflates beyond its declared size fails its CRC check). Member names are
only labels of the per-file results: nothing is written to disk, so paths
such as ``../x`` do no harm. Folders in the archive are skipped; a zip inside
the zip is one more file (refused as not DICOM), never opened.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterable


class ZipRefused(ValueError):
    """The archive as a whole is refused: ``http_status`` 400 (unreadable) or 413 (too big)."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


def write_zip(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip of ``files`` (name, bytes), deflated, in the order given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def read_zip(body: bytes, maximum_members: int, maximum_size: int) -> list[tuple[str, bytes]]:
    """The files of a zip archive, (name, bytes) in archive order; :class:`ZipRefused` when the
    archive cannot be read or holds more than the bounds allow."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise ZipRefused(400, f"not a readable zip archive: {exc}") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > maximum_members:
            raise ZipRefused(413, f"the zip holds {len(members)} files, at most {maximum_members}")
        declared = sum(info.file_size for info in members)
        if declared > maximum_size:
            raise ZipRefused(
                413,
                f"the zip's files hold {declared} bytes once inflated, more than "
                f"MaximumUploadSize ({maximum_size} bytes)",
            )
        files: list[tuple[str, bytes]] = []
        for info in members:
            try:
                # zipfile inflates at most the declared size and then checks the CRC,
                # so a member that would inflate beyond it fails here.
                with archive.open(info) as member:
                    data = member.read(info.file_size)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error,
                    OSError) as exc:  # fmt: skip
                raise ZipRefused(
                    400, f"zip member {info.filename!r} cannot be read: {exc}"
                ) from None
            files.append((info.filename, data))
    return files
