"""C-FIND pending responses, encoded once and sent in few writes.

A modality that synchronises its protocol list asks the same broad query
again and again; almost all of its cost used to be Python building and
encoding one response dataset, then one command set, then two P-DATA PDUs,
per match (the matching itself takes milliseconds). Here:

* :class:`ResponseCache` keeps the encoded response identifier of each
  stored protocol *version* for each distinct request (identifier bytes,
  information model, transfer syntax), bounded in bytes. A response is a
  pure function of those, so a cached answer is exactly what encoding again
  would give. A new version of a protocol is a new record object, hence a
  miss; the cache holds the record it was built from so its identity cannot
  be reused by another object while the entry lives.
* :class:`PendingEncoder` turns one identifier into the P-DATA-TF PDUs of
  one C-FIND-RSP: the command set is encoded once per request and status,
  and command and identifier travel in one PDU when they fit the peer's
  maximum PDU length (pynetdicom sends two). Everything is encoded by
  pynetdicom's own PDU and message classes.
* :class:`Batch` gathers whole PDUs and writes them together: one system
  call for many responses, never later than ``max_delay`` after the first
  one waiting, so the first matches of a slow selective query still go out
  at once.

Nothing here touches a socket or an association: the caller passes the
write function (:mod:`orthanc_dpp.dicom.scp.handlers`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

#: Bytes a cache entry costs beyond its encoded identifier (key, value tuple, dict node).
ENTRY_OVERHEAD = 240  # measured with tracemalloc: about 227


class ResponseCache:
    """Encoded C-FIND response identifiers, least recently used first out, bounded in bytes.

    Thread-safe; ``max_bytes`` 0 keeps nothing (every lookup misses).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, Any], tuple[object, int, bytes]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, record: object, request: Any) -> tuple[int, bytes] | None:
        """(pending status, identifier bytes) cached for ``record`` and ``request``, or None."""
        key = (id(record), request)
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] is not record:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[1], found[2]

    def put(self, record: object, request: Any, code: int, data: bytes) -> None:
        """Remember ``data`` (and its status) for ``record`` under ``request``."""
        cost = len(data) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        key = (id(record), request)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= len(old[2]) + ENTRY_OVERHEAD
            self._entries[key] = (record, code, data)
            self.bytes += cost
            while self.bytes > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self.bytes -= len(dropped) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._entries)


class PendingEncoder:
    """The PDUs of the pending C-FIND-RSP messages answering one request.

    ``max_pdu`` is the peer's maximum PDU length (0: no limit).
    """

    def __init__(self, message_id: int, sop_class_uid: str, context_id: int, max_pdu: int) -> None:
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.context_id = context_id
        self.max_pdu = max_pdu
        self._commands: dict[int, bytes] = {}

    def _response(self, code: int, identifier: bytes | None) -> C_FIND_RSP:
        primitive = C_FIND()
        primitive.MessageIDBeingRespondedTo = self.message_id
        primitive.AffectedSOPClassUID = self.sop_class_uid
        primitive.Status = code
        # A command set alone (``identifier`` None) still says a data set follows.
        primitive.Identifier = BytesIO(b"\x00" if identifier is None else identifier)
        message = C_FIND_RSP()
        message.primitive_to_message(primitive)
        return message

    def _command(self, code: int) -> bytes | None:
        """The command PDV (control header and bytes) for ``code``, if it fits one PDU."""
        command = self._commands.get(code)
        if command is None:
            first = next(self._response(code, None).encode_msg(self.context_id, self.max_pdu))
            (_, command), *more = first.presentation_data_value_list
            if more or command[0] != 0x03:  # the command set took several fragments
                return None
            self._commands[code] = command
        return command

    def primitives(self, code: int, identifier: bytes) -> list[P_DATA]:
        """The P-DATA primitives of one pending response carrying ``identifier``."""
        command = self._command(code)
        if command is not None and (
            not self.max_pdu or len(command) + len(identifier) + 9 <= self.max_pdu
        ):
            primitive = P_DATA()
            # pynetdicom wants [id, bytes] lists, though it declares tuples.
            primitive.presentation_data_value_list = [
                [self.context_id, command],  # type: ignore[list-item]
                [self.context_id, b"\x02" + identifier],  # type: ignore[list-item]
            ]
            return [primitive]
        # Larger than one PDU: pynetdicom's own fragmentation, one PDU per fragment.
        return list(self._response(code, identifier).encode_msg(self.context_id, self.max_pdu))

    def encode(self, code: int, identifier: bytes) -> bytes:
        """Every PDU of one pending response carrying ``identifier``, ready to write."""
        return b"".join(_pdu(primitive) for primitive in self.primitives(code, identifier))


def _pdu(primitive: P_DATA) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


class Batch:
    """Whole PDUs waiting to be written together.

    ``write`` gets the joined bytes once ``limit`` bytes wait or the oldest
    waited ``max_delay`` seconds (checked at each :meth:`add`), and at
    :meth:`flush`.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        limit: int = 64 << 10,
        max_delay: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self.limit = limit
        self.max_delay = max_delay
        self._clock = clock
        self._parts: list[bytes] = []
        self._size = 0
        self._since = 0.0
        self.written = 0  # writes made, for tests and logs

    def add(self, pdus: bytes) -> None:
        """Queue ``pdus``; write the batch if it is full or old enough."""
        now = self._clock()
        if not self._parts:
            self._since = now
        self._parts.append(pdus)
        self._size += len(pdus)
        if self._size >= self.limit or now - self._since >= self.max_delay:
            self.flush()

    def flush(self) -> None:
        """Write whatever waits (nothing if nothing does)."""
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        self.written += 1
        self._write(data)
