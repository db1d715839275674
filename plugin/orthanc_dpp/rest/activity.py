"""Recent activity: the plugin's last log lines, kept in memory for the library page.

Every store, find, retrieve and refusal is already logged (at INFO and
above) by the module that handles it, so a logging handler on the
``orthanc_dpp`` logger sees them all without any front end knowing about
it. Only the first line of a message is kept, at most ``MAXIMUM_MESSAGE``
characters: tracebacks stay in Orthanc's log, for the administrator.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
from typing import Any, Final

DEFAULT_CAPACITY: Final = 200
MAXIMUM_MESSAGE: Final = 500


class ActivityLog(logging.Handler):
    """A bounded ring of recent log records, newest last."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.capacity = capacity
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = (record.getMessage().splitlines() or [""])[0]
        except Exception:  # a bad format string must not break the caller
            message = str(record.msg)
        if len(message) > MAXIMUM_MESSAGE:
            message = message[: MAXIMUM_MESSAGE - 1] + "…"
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        event = {
            "Time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "Level": record.levelname,
            "Source": record.name,
            "Message": message,
        }
        with self._guard:
            self._events.append(event)

    def events(self) -> list[dict[str, Any]]:
        """The kept events, newest first."""
        with self._guard:
            return list(reversed(self._events))

    def as_json(self) -> dict[str, Any]:
        return {"Capacity": self.capacity, "Events": self.events()}
