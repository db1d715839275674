"""The plugin's log lines in Orthanc's log, escaped so a peer cannot forge one."""

from __future__ import annotations

import logging
import warnings
from types import ModuleType


def printable(text: str) -> str:
    """``text`` with line breaks and other control characters escaped.

    Log messages carry what peers send (AE titles, UIDs, file names, error
    texts); escaped, none of it can start a forged line in Orthanc's log.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OrthancLogHandler(logging.Handler):
    """Send Python log records to Orthanc's log, prefixed so they are findable.

    Closed once the plugin has stopped: nothing may call into Orthanc while
    the Python plugin finalizes.
    """

    def __init__(self, orthanc: ModuleType) -> None:
        super().__init__()
        self.orthanc = orthanc
        self.closed = False

    def close(self) -> None:
        self.closed = True
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        if self.closed:
            return
        try:
            message = "DPP: " + printable(record.getMessage())
            if record.exc_info and record.name.startswith("pynetdicom"):
                # pynetdicom logs a traceback for each malformed PDU a peer
                # sends: one line says it, and a stranger cannot flood the log.
                error = record.exc_info[1]
                message += f" ({type(error).__name__}: {printable(str(error))[:200]})"
            elif record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.ERROR:
                self.orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self.orthanc.LogWarning(message)
            else:
                self.orthanc.LogInfo(message)
        except Exception:  # logging must never break a caller
            pass


def quiet_pydicom_warnings() -> None:
    """Drop pydicom's warnings about invalid values in this process.

    Peers choose those values (UIDs in an A-ASSOCIATE-RQ, elements of a
    dataset): each distinct one printed two lines to Orthanc's log and
    stayed in the warnings registry for good, so a stranger could grow both
    without limit. What matters of them, the plugin answers in DICOM
    statuses and HTTP errors.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
