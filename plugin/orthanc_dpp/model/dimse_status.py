"""DIMSE status codes used by the DPP SCP, named after PS3.4 and PS3.7.

pynetdicom's ``Status`` enum names only a handful of codes; these are the
ones our handlers answer with, so that no bare hexadecimal number appears in
handler code and every status is searchable by its meaning.
"""

from collections.abc import Iterable
from typing import Final

from pydicom import Dataset

# General (PS3.7 C)
SUCCESS: Final = 0x0000
CANCEL: Final = 0xFE00
PENDING: Final = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED: Final = 0xFF01
NOT_AUTHORIZED: Final = 0x0124
DUPLICATE_SOP_INSTANCE: Final = 0x0111

# Storage service class (PS3.4 B.2.3)
STORE_OUT_OF_RESOURCES: Final = 0xA700
STORE_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
STORE_CANNOT_UNDERSTAND: Final = 0xC000

# Query/Retrieve (PS3.4 C.4, reused by Annex HH)
FIND_OUT_OF_RESOURCES: Final = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC000
OUT_OF_RESOURCES_NUMBER_OF_MATCHES: Final = 0xA701
OUT_OF_RESOURCES_SUB_OPERATIONS: Final = 0xA702
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
SUB_OPERATIONS_COMPLETE_WITH_FAILURES: Final = 0xB000


#: Error Comment (0000,0902) is LO: at most 64 characters.
ERROR_COMMENT_LENGTH: Final = 64


def error_comment(text: str) -> str:
    """``text`` as a valid Error Comment: LO, default repertoire, 64 characters at most.

    Backslash (a value delimiter), control and non-ASCII characters, which
    may come from a peer's own data, are replaced.
    """
    cleaned = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)
    return cleaned[:ERROR_COMMENT_LENGTH].rstrip()


def status_dataset(code: int, comment: str | None = None, offending: Iterable[int] = ()) -> Dataset:
    """A status with its Error Comment (see :func:`error_comment`) and Offending Element."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = error_comment(comment)
    if offending := list(offending):
        ds.OffendingElement = offending
    return ds


class InvalidIdentifier(Exception):
    """A C-FIND, C-GET or C-MOVE identifier that cannot be served.

    ``status`` is the final status, ``comment`` the Error Comment (already
    cleaned by :func:`error_comment`), ``offending`` the Offending Element tags.
    """

    def __init__(self, code: int, comment: str, offending: Iterable[int] = ()) -> None:
        super().__init__(comment)
        self.status = code
        self.comment = error_comment(comment)
        self.offending = tuple(offending)
