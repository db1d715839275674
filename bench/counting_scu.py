"""A C-FIND requester that counts responses without decoding their identifiers.

pynetdicom's ``send_c_find`` decodes every response (PDU, command set and
identifier, about 0.4 ms each here), so against a fast SCP the benchmark
would measure the requester. Modalities and protocol-management tools are
mostly C++ or Java, far cheaper per response. This requester reads the
PDUs itself, decodes only each command set (for its status), and so shows
what the SCPs deliver. Association and messages are built with pynetdicom's
PDU and DIMSE message classes; the requester is the same for every SCP.
"""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dimse_messages import C_FIND_RQ
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from bench.dimse import PENDING, SCU_AET, DimseError, FindResult

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
TIMEOUT = 300.0


class CountingAssociation:
    """One association (a single presentation context, Explicit VR Little Endian)."""

    def __init__(self, port: int, called_aet: str, model: str) -> None:
        self.model = model
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._offset = 0  # where the unread part of _buffer starts
        self._message_id = 0
        request = A_ASSOCIATE()
        request.application_context_name = APPLICATION_CONTEXT
        request.calling_ae_title = SCU_AET
        request.called_ae_title = called_aet
        context = build_context(model, [ExplicitVRLittleEndian])
        context.context_id = 1
        request.presentation_context_definition_list = [context]
        length = MaximumLengthNotification()
        length.maximum_length_received = 0
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        request.user_information = [length, implementation]
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(request)
        self.sock.sendall(pdu.encode())
        kind, body = self._pdu()
        if kind != 0x02:
            self.sock.close()
            raise DimseError(f"association refused (PDU type 0x{kind:02X})")
        accept = A_ASSOCIATE_AC()
        accept.decode(body)
        results = accept.to_primitive().presentation_context_definition_results_list
        if not results or results[0].result != 0:
            self.sock.close()
            raise DimseError(f"{model} not accepted")
        max_length = next(
            (
                item.maximum_length_received
                for item in accept.to_primitive().user_information
                if isinstance(item, MaximumLengthNotification)
            ),
            16382,
        )
        self.max_pdu = max_length or 0

    def _read(self, count: int) -> bytes:
        while len(self._buffer) - self._offset < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise DimseError("C-FIND: connection lost")
            self._buffer = self._buffer[self._offset :] + chunk
            self._offset = 0
        data = self._buffer[self._offset : self._offset + count]
        self._offset += count
        return data

    def _pdu(self) -> tuple[int, bytes]:
        header = self._read(6)
        (length,) = struct.unpack(">I", header[2:6])
        return header[0], header + self._read(length)

    def find(self, identifier: Dataset) -> FindResult:
        """One C-FIND to its end: pending responses counted, the final status kept."""
        self._message_id += 1
        primitive = C_FIND()
        primitive.MessageID = self._message_id
        primitive.AffectedSOPClassUID = self.model
        primitive.Priority = 2
        primitive.Identifier = BytesIO(encode(identifier, False, True))
        message = C_FIND_RQ()
        message.primitive_to_message(primitive)
        started = time.perf_counter()
        for fragment in message.encode_msg(1, self.max_pdu):
            pdu = P_DATA_TF()
            pdu.from_primitive(fragment)
            self.sock.sendall(pdu.encode())
        matches = 0
        command = b""
        while True:
            kind, data = self._pdu()
            if kind != 0x04:
                raise DimseError(f"C-FIND: PDU type 0x{kind:02X} instead of P-DATA")
            offset = 6
            while offset < len(data):
                (length,) = struct.unpack(">I", data[offset : offset + 4])
                header, value = data[offset + 5], data[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if not header & 1:
                    continue  # identifier fragment: counted, not decoded
                command += value
                if not header & 2:
                    continue
                code = int(decode(BytesIO(command), True, True).Status)
                command = b""
                if code in PENDING:
                    matches += 1
                    continue
                return FindResult(time.perf_counter() - started, matches, code)

    def release(self) -> None:
        """A-RELEASE, then close (whatever the peer answers)."""
        try:
            self.sock.sendall(A_RELEASE_RQ().encode())
            self._pdu()
        except (OSError, DimseError):
            pass
        finally:
            self.sock.close()
