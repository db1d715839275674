"""Keep the protocol index current from Orthanc's change log.

Orthanc's ``/changes`` is shared by every node on one database, so following
it (rather than only this node's change callbacks) lets a node learn of
instances stored through another node. Deletions are not in ``/changes``
(DESIGN.md fact 10): they come from this node's DELETED callback
(:meth:`IndexFeed.forget`) and from :meth:`IndexFeed.reconcile`, which drops
index entries whose instance no longer exists.

One worker thread does all reading; Orthanc's callbacks only call
:meth:`IndexFeed.wake` or :meth:`IndexFeed.forget`, both of which return at
once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pydicom import Dataset

from orthanc_dpp.library import OrthancError, ProtocolLibrary
from orthanc_dpp.sop import STORAGE_CLASSES

log = logging.getLogger("orthanc_dpp.feed")

CHANGES_PAGE = 1000


class Index(Protocol):
    """What the feed needs of :class:`orthanc_dpp.index.ProtocolIndex`."""

    def put(self, orthanc_id: str, ds: Dataset) -> None: ...

    def remove(self, orthanc_id: str) -> bool: ...

    def orthanc_ids(self) -> set[str]: ...


class IndexFeed:
    """Loads the index at start-up, then follows ``/changes`` on a worker thread."""

    def __init__(
        self,
        library: ProtocolLibrary,
        index: Index,
        *,
        poll_interval: float,
        reconcile_interval: float,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.library = library
        self.index = index
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.on_tick = on_tick  # other periodic work of the worker thread
        self.last_seq = 0
        self.ready = False
        self.load_seconds: float | None = None
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one catch-up at a time

    # -- reading Orthanc ---------------------------------------------------

    def _get_json(self, uri: str) -> Any:
        return json.loads(self.library.api.get(uri))

    def _changes(self, since: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (seq, change) after ``since`` until Orthanc says Done."""
        while True:
            page = self._get_json(f"/changes?since={since}&limit={CHANGES_PAGE}")
            for change in page.get("Changes", []):
                yield int(change["Seq"]), change
            last = int(page.get("Last", since))
            if page.get("Done", True) or last <= since:
                return
            since = last

    def _sop_class(self, orthanc_id: str) -> str | None:
        """The instance's SOP Class UID from Orthanc's metadata; None if gone."""
        try:
            return self.library.api.get(f"/instances/{orthanc_id}/metadata/SopClassUid").decode()
        except OrthancError:
            return None

    def _index_instance(self, orthanc_id: str) -> bool:
        sop_class = self._sop_class(orthanc_id)
        if sop_class not in STORAGE_CLASSES:
            return False
        try:
            ds = self.library.original_dataset(orthanc_id)
        except OrthancError:
            return False  # deleted between the change and now
        except Exception as exc:  # a damaged file must not stop the feed
            log.error("Cannot index instance %s: %s", orthanc_id, exc)
            return False
        self.index.put(orthanc_id, ds)
        return True

    # -- the three ways the index changes -------------------------------

    def catch_up(self) -> int:
        """Index every new instance in ``/changes``; return how many were added."""
        with self._lock:
            added = 0
            known = self.index.orthanc_ids()
            for seq, change in self._changes(self.last_seq):
                if (
                    change.get("ChangeType") == "NewInstance"
                    and change["ID"] not in known
                    and self._index_instance(change["ID"])
                ):
                    added += 1
                self.last_seq = max(self.last_seq, seq)
            return added

    def forget(self, orthanc_id: str) -> None:
        """This node deleted an instance (Orthanc's DELETED callback)."""
        self.index.remove(orthanc_id)

    def reconcile(self) -> int:
        """Drop entries whose instance no longer exists (deleted by another node)."""
        removed = 0
        for orthanc_id in self.index.orthanc_ids():
            if self._stop.is_set():
                break
            if self._sop_class(orthanc_id) is None and self.index.remove(orthanc_id):
                removed += 1
        if removed:
            log.info("Reconciliation removed %d deleted protocol(s) from the index", removed)
        return removed

    # -- the worker thread -------------------------------------------------

    def load(self) -> None:
        """Initial load: everything in ``/changes`` so far."""
        started = time.monotonic()
        count = self.catch_up()
        self.load_seconds = time.monotonic() - started
        self.ready = True
        log.warning(
            "Protocol index loaded: %d instance(s) in %.1f s (change log at %d)",
            count,
            self.load_seconds,
            self.last_seq,
        )

    def wake(self) -> None:
        """Ask the worker to read ``/changes`` now (from Orthanc's change callback)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dpp-index-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_reconcile = time.monotonic() + self.reconcile_interval
        while not self._stop.is_set():
            try:
                if not self.ready:
                    self.load()
                else:
                    self.catch_up()
                if self.on_tick is not None:
                    self.on_tick()
                if time.monotonic() >= next_reconcile:
                    self.reconcile()
                    next_reconcile = time.monotonic() + self.reconcile_interval
                self.last_error = None
            except Exception as exc:  # keep following; report in /dpp/status
                self.last_error = str(exc)
                log.error("Protocol index update failed: %s", exc)
            self._wake.wait(self.poll_interval)
            self._wake.clear()
