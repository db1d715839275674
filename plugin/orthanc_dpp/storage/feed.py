"""Keep the protocol index current from Orthanc's change log.

Orthanc's ``/changes`` is shared by every node on one database, so following
it (rather than only this node's change callbacks) lets a node learn of
instances stored through another node. Deletions are not in ``/changes``
(docs/design.md, fact 10): they come from this node's DELETED callback
(:meth:`IndexFeed.forget`) and from :meth:`IndexFeed.reconcile`, which drops
index entries whose instance no longer exists.

One worker thread does all reading; Orthanc's callbacks only call
:meth:`IndexFeed.wake` or :meth:`IndexFeed.forget`, both of which return at
once (the worker checks that a reported deletion is real before dropping
the entry: an overwritten instance is deleted and stored again).

The same changes keep the protocols' usage current (:mod:`orthanc_dpp.model.usage`):
a new CT or XA Performed Procedure Protocol instance, an ordinary patient
instance the plugin leaves as Orthanc stored it, has its few attributes of
usage read (:mod:`orthanc_dpp.storage.performed`), and its deletion takes them back. The usage is
saved beside the index snapshot with the same change-log position, so a
restart neither loses it nor reads the performed instances again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from orthanc_dpp.model import search, snapshot
from orthanc_dpp.model import usage as protocol_usage
from orthanc_dpp.model.index import ProtocolIndex
from orthanc_dpp.model.key_table import SOP_CLASS_UID, SOP_INSTANCE_UID
from orthanc_dpp.model.normalization import library_uids
from orthanc_dpp.model.snapshot import SnapshotStore
from orthanc_dpp.model.sop import STORAGE_CLASSES
from orthanc_dpp.model.usage import PERFORMED_CLASSES, ProtocolUsage
from orthanc_dpp.storage import stored_record
from orthanc_dpp.storage.library import OrthancError, ProtocolLibrary, orthanc_resource_id
from orthanc_dpp.storage.performed import read_performed, restore_usage

log = logging.getLogger("orthanc_dpp.feed")

CHANGES_PAGE = 1000
#: Shortest time between two reads of ``/changes``. Every stored instance
#: wakes the worker (NEW_INSTANCE); during a burst of stores one read per
#: interval catches up with all of them, instead of one read per instance
#: competing with the stores for Orthanc and the interpreter lock.
CATCH_UP_SPACING = 0.1
#: Seconds a "stored and indexed here" mark stays valid.
FRESH_SECONDS = 60.0


class FreshInstances:
    """Orthanc IDs this node is storing itself, whose next NewInstance change it skips.

    The mark is set *before* the instance is sent to Orthanc (so the change
    can never be read before it) and removed when the store creates nothing
    (it failed, or Orthanc kept an existing copy). It carries the MD5 of the
    file sent: Orthanc drops an instance's changes when it is overwritten
    (``OverwriteInstances``), so the change the feed finds may be that of a
    copy stored around the plugin before the feed read ours; it is skipped
    only if Orthanc still holds our file. The change may be read
    before the store handler has indexed the instance: until it has
    (:meth:`indexed`), the skipped change's position holds the snapshot's
    change-log position back (:meth:`low_water`), so a crash in between
    cannot leave an instance that neither the snapshot nor the change log
    will index. Marks expire after FRESH_SECONDS in any case.
    """

    def __init__(self) -> None:
        # id -> (when, indexed already, MD5 of the file sent or None)
        self._marks: dict[str, tuple[float, bool, str | None]] = {}
        self._skipped: dict[str, tuple[int, float]] = {}  # id -> (change seq, when)
        self._lock = threading.Lock()

    def mark(self, orthanc_id: str, md5: str | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._marks) > 10_000:
                self._marks = {k: v for k, v in self._marks.items() if now - v[0] < FRESH_SECONDS}
            self._marks[orthanc_id] = (now, False, md5)

    def unmark(self, orthanc_id: str) -> None:
        with self._lock:
            self._marks.pop(orthanc_id, None)
            self._skipped.pop(orthanc_id, None)

    def indexed(self, orthanc_id: str) -> None:
        """The store handler has put the instance in the index."""
        with self._lock:
            if orthanc_id in self._marks:
                when, _, md5 = self._marks[orthanc_id]
                self._marks[orthanc_id] = (when, True, md5)
            self._skipped.pop(orthanc_id, None)

    def take(
        self, orthanc_id: str, seq: int, stored_md5: Callable[[str], str | None] | None = None
    ) -> bool:
        """True (once) if the change ``seq`` of ``orthanc_id`` needs no reading.

        ``stored_md5`` tells the MD5 of the file Orthanc holds now (None if
        it cannot say): a marked change whose file is not the one sent is
        read after all.
        """
        with self._lock:
            mark = self._marks.pop(orthanc_id, None)
        now = time.monotonic()
        if mark is None or now - mark[0] >= FRESH_SECONDS:
            return False
        _, indexed, md5 = mark
        if md5 is not None and stored_md5 is not None and stored_md5(orthanc_id) != md5:
            log.info("Instance %s was replaced after this node stored it: reading it", orthanc_id)
            return False
        if not indexed:
            with self._lock:
                self._skipped[orthanc_id] = (seq, now)
        return True

    def low_water(self) -> int | None:
        """The earliest skipped change whose instance is not indexed yet, if any."""
        with self._lock:
            now = time.monotonic()
            self._skipped = {k: v for k, v in self._skipped.items() if now - v[1] < FRESH_SECONDS}
            return min((seq for seq, _ in self._skipped.values()), default=None)


def report_duplicate(uid: str, other: str, newcomer: str, index: ProtocolIndex) -> None:
    """Log a second Orthanc instance with an indexed SOP Instance UID, and what wins."""
    if index.newest_wins:
        log.warning(
            "SOP Instance UID %s: Orthanc instance %s replaces %s in the index "
            "(OverwriteInstances); C-FIND, C-GET, C-MOVE and /dpp/ answer with the newer",
            uid,
            newcomer,
            other,
        )
    else:
        log.error(
            "SOP Instance UID %s is stored twice in Orthanc: %s is indexed, %s is ignored; "
            "C-FIND, C-GET, C-MOVE and /dpp/ answer with %s. Delete %s",
            uid,
            other,
            newcomer,
            other,
            newcomer,
        )


class IndexFeed:
    """Loads the index at start-up, then follows ``/changes`` on a worker thread."""

    def __init__(
        self,
        library: ProtocolLibrary,
        index: ProtocolIndex,
        *,
        poll_interval: float,
        reconcile_interval: float,
        on_tick: Callable[[], None] | None = None,
        snapshots: SnapshotStore | None = None,
        snapshot_interval: float = 60.0,
        fresh: FreshInstances | None = None,
        fast_load: bool = True,
        read_file: Callable[[str], bytes] | None = None,
        usage: ProtocolUsage | None = None,
        usage_snapshots: SnapshotStore | None = None,
    ) -> None:
        #: Where the usage is saved with each index snapshot (None: it is not).
        self.usage_snapshots = usage_snapshots
        self.library = library
        #: Counts of the performed instances referencing each defined protocol.
        self.usage = usage if usage is not None else ProtocolUsage()
        #: The start-up reads stored files directly (:meth:`_load_changes`);
        #: false: as every later change is read (pydicom, one metadata call each).
        self.fast_load = fast_load
        #: How the start-up reads a stored file (default: the library's REST read).
        self.read_file = read_file or library.stored_bytes
        self.index = index
        self.poll_interval = poll_interval
        self.reconcile_interval = reconcile_interval
        self.on_tick = on_tick  # other periodic work of the worker thread
        self.snapshots = snapshots
        self.snapshot_interval = snapshot_interval
        self._saved_version = (-1, -1)  # (index, usage) versions last saved
        self._saved_at = 0.0
        self.restored: int | None = None  # entries taken from the snapshot at load
        self.last_seq = 0
        self.ready = False
        self.load_seconds: float | None = None
        # Change-log positions the load started at and goes to, for its progress.
        self._load_span: tuple[int, int] | None = None
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one catch-up at a time
        #: Library-series instances :meth:`reconcile` found not to be protocols.
        self._not_protocols: set[str] = set()
        #: Library-series instances the index lacked at the last reconciliation.
        self._missing: set[str] = set()
        # Instances this node stores and indexes itself: their NewInstance
        # change needs no second read. Any other NewInstance is read again,
        # even for a known ID: Orthanc records one when an instance is
        # overwritten (OverwriteInstances), on this node or another.
        self.fresh = fresh or FreshInstances()
        self._deleted: set[str] = set()  # DELETED events not yet checked
        self._deleted_lock = threading.Lock()

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

    def _stored_md5(self, orthanc_id: str) -> str | None:
        """The MD5 Orthanc keeps of the instance's file; None if gone or not kept."""
        try:
            return self.library.api.get(f"/instances/{orthanc_id}/attachments/dicom/md5").decode()
        except OrthancError:
            return None

    def _sop_class(self, orthanc_id: str) -> str | None:
        """The instance's SOP Class UID from Orthanc's metadata; None if gone."""
        try:
            return self.library.api.get(f"/instances/{orthanc_id}/metadata/SopClassUid").decode()
        except OrthancError:
            return None

    def _is_protocol(self, orthanc_id: str) -> bool:
        """Whether the instance is of a library class; a performed protocol is counted."""
        sop_class = self._sop_class(orthanc_id)
        if sop_class in PERFORMED_CLASSES:
            found = read_performed(self.library.api, self.read_file, orthanc_id)
            if found is not None:
                self.usage.add(orthanc_id, found)
        return sop_class in STORAGE_CLASSES

    def _index_instance(self, orthanc_id: str) -> bool:
        if not self._is_protocol(orthanc_id):
            return False
        try:
            ds = self.library.original_dataset(orthanc_id)
        except OrthancError:
            return False  # deleted between the change and now
        except Exception as exc:  # a damaged file must not stop the feed
            log.error("Cannot index instance %s: %s", orthanc_id, exc)
            return False
        other = self.index.put(orthanc_id, ds)
        if other is not None:
            report_duplicate(str(ds.get("SOPInstanceUID", "")), other, orthanc_id, self.index)
        return other is None or self.index.newest_wins

    def _load_instance(self, orthanc_id: str, in_library: bool) -> bool:
        """:meth:`_index_instance` for the start-up, same outcome, less work.

        The file is read by :func:`stored_record.original_record` (the
        same record, without pydicom). Instances of the library's series
        (``in_library``) are normalized protocols, so their SOP class is
        taken from the file rather than asked of Orthanc first.
        """
        if not in_library and not self._is_protocol(orthanc_id):
            return False
        try:
            data = self.read_file(orthanc_id)
        except OrthancError:
            return False  # deleted between the change and now
        try:
            found = stored_record.original_record(data, self.index.records)
        except Exception as exc:  # a damaged file must not stop the feed
            log.error("Cannot index instance %s: %s", orthanc_id, exc)
            return False
        if in_library and str(found.first(SOP_CLASS_UID) or "").strip() not in STORAGE_CLASSES:
            return False
        other = self.index.put_record(orthanc_id, found)
        if other is not None:
            uid = str(found.first(SOP_INSTANCE_UID) or "")
            report_duplicate(uid, other, orthanc_id, self.index)
        return other is None or self.index.newest_wins

    def _load_changes(self) -> int | None:
        """The start-up's catch-up: every new instance of ``/changes``; None if stopped.

        Without a snapshot that is every stored protocol, so it reads them
        the fast way (:meth:`_load_instance`), with every sequence
        remembered meanwhile (``index.records.bulk_reading``), and checks for
        a stop between instances.
        """
        with self._lock, self.index.records.bulk_reading():
            library = self._library_instances()
            added = 0
            for seq, change in self._changes(self.last_seq):
                if self._stop.is_set():
                    return None
                orthanc_id = change["ID"]
                if (
                    change.get("ChangeType") == "NewInstance"
                    and not self.fresh.take(orthanc_id, seq, self._stored_md5)
                    and self._load_instance(orthanc_id, orthanc_id in library)
                ):
                    added += 1
                self.last_seq = max(self.last_seq, seq)
            return added

    def load_progress(self) -> dict[str, int] | None:
        """While the first load runs: change-log entries read, out of how many."""
        span = self._load_span
        if self.ready or span is None:
            return None
        start, end = span
        return {"ChangesRead": max(self.last_seq - start, 0), "ChangesToRead": max(end - start, 0)}

    def _last_change(self) -> int:
        """The newest change-log position now (0 if Orthanc does not say)."""
        try:
            return int(self._get_json("/changes?last").get("Last", 0))
        except (OrthancError, ValueError, TypeError, AttributeError):
            return 0

    # -- the three ways the index changes -------------------------------

    def catch_up(self) -> int:
        """Index every new instance in ``/changes``; return how many were added."""
        with self._lock:
            added = 0
            for seq, change in self._changes(self.last_seq):
                if (
                    change.get("ChangeType") == "NewInstance"
                    and not self.fresh.take(change["ID"], seq, self._stored_md5)
                    and self._index_instance(change["ID"])
                ):
                    added += 1
                self.last_seq = max(self.last_seq, seq)
            return added

    def forget(self, orthanc_id: str) -> None:
        """Orthanc's DELETED callback for an instance: drop it once it is really gone.

        Returns at once; the worker checks. An instance overwritten under
        ``OverwriteInstances`` is deleted and stored again under the same ID,
        and its DELETED event may arrive after the new copy is indexed.
        """
        with self._deleted_lock:
            self._deleted.add(orthanc_id)
        self._wake.set()

    def apply_deletions(self) -> int:
        """Remove the instances reported deleted that Orthanc no longer has."""
        with self._deleted_lock:
            pending, self._deleted = self._deleted, set()
        removed = 0
        for orthanc_id in pending:
            if self._sop_class(orthanc_id) is not None:
                continue  # stored again meanwhile (overwritten)
            if self.usage.remove(orthanc_id):
                log.info("Performed procedure protocol %s deleted: no longer counted", orthanc_id)
            if self.index.remove(orthanc_id):
                removed += 1
        return removed

    def _library_instances(self) -> set[str]:
        """IDs of the instances in the library series, in one call per series.

        Normalized protocols live in one series per storage class whose
        Orthanc ID follows from the normalization labels, so their existence
        is known without asking for each instance.
        """
        present: set[str] = set()
        labels = self.library.labels
        for sop_class in STORAGE_CLASSES:
            study, series = library_uids(labels, sop_class)
            series_id = orthanc_resource_id(labels.patient_id, study, series)
            with contextlib.suppress(OrthancError):  # none of that class stored yet
                present.update(self._get_json(f"/series/{series_id}").get("Instances", []))
        return present

    def reconcile(self) -> int:
        """Make the index hold the library series: drop what is gone, add what is missing.

        Returns how many entries were dropped. Deletions by another node are
        not in the change log at all. Additions are, but can be missed: with
        several nodes on PostgreSQL a store that took its change number
        before another but committed after it is behind a poller that has
        moved past it (seen when the database went away mid-burst), and a
        store answered "database unavailable" may still be in Orthanc.
        An instance of the library series the index lacks in two passes in
        a row is read (one pass could catch it between its commit and the
        feed's next read, or this node's store and its indexing); those that
        are not protocols are not read again.
        """
        removed = 0
        indexed = self.index.orthanc_ids()
        library = self._library_instances()
        for orthanc_id in indexed - library:
            if self._stop.is_set():
                break
            if self._sop_class(orthanc_id) is None and self.index.remove(orthanc_id):
                removed += 1
        if removed:
            log.info("Reconciliation removed %d deleted protocol(s) from the index", removed)
        self._not_protocols &= library
        added = 0
        with self._lock:
            missing = library - self.index.orthanc_ids() - self._not_protocols
            overdue, self._missing = missing & self._missing, missing
            for orthanc_id in overdue:
                if self._stop.is_set():
                    break
                if self._index_instance(orthanc_id):
                    added += 1
                elif self._sop_class(orthanc_id) is not None:
                    self._not_protocols.add(orthanc_id)
        if added:
            log.warning("Reconciliation added %d protocol(s) the change log did not show", added)
        return removed

    # -- the snapshot --------------------------------------------------------

    def _restore(self) -> bool:
        """Fill the index from the stored snapshot; False if there is none usable."""
        if self.snapshots is None:
            return False
        try:
            entries, last_seq = snapshot.load(self.snapshots.read(), self.index.records)
        except snapshot.SnapshotError as exc:
            log.warning("Index snapshot not used (%s): rebuilding from Orthanc", exc)
            return False
        if not restore_usage(self.usage_snapshots, self.usage, last_seq):
            return False
        try:
            for orthanc_id, record in entries:
                self.index.put_record(orthanc_id, record)
        except Exception as exc:  # never an index stuck "loading": rebuild instead
            log.warning("Index snapshot not used (%s): rebuilding from Orthanc", exc)
            for orthanc_id in self.index.orthanc_ids():
                self.index.remove(orthanc_id)
            self.usage.load([])  # recounted by the rebuild, as the index
            return False
        self.last_seq = last_seq
        self.restored = len(entries)
        return True

    def save_snapshot(self, force: bool = False) -> bool:
        """Store the index if it changed and the interval has passed (or ``force``)."""
        if self.snapshots is None or not self.ready:
            return False
        version = (self.index.version, self.usage.version)
        due = time.monotonic() - self._saved_at >= self.snapshot_interval
        if version == self._saved_version or not (due or force):
            return False
        with self._lock:  # last_seq must describe exactly these entries
            seq = self.last_seq
            entries = [(e.orthanc_id, e.record) for e in self.index.snapshot()]
            rows = self.usage.rows()
            pending = self.fresh.low_water()
            if pending is not None:  # a store read from the log but not indexed yet
                seq = min(seq, pending - 1)
        started = time.monotonic()
        try:
            if self.usage_snapshots is not None:  # first: the index is used only if both agree
                self.usage_snapshots.write(protocol_usage.dump(rows, seq))
            self.snapshots.write(snapshot.dump(entries, seq))
        except Exception as exc:
            log.error("Index snapshot not saved: %s", exc)
            return False
        self._saved_version, self._saved_at = version, time.monotonic()
        log.info(
            "Index snapshot saved: %d protocol(s) at change %d in %.1f s",
            len(entries),
            seq,
            self._saved_at - started,
        )
        return True

    # -- the worker thread -------------------------------------------------

    def load(self) -> None:
        """Initial load: the snapshot if any, then what ``/changes`` adds, then deletions."""
        started = time.monotonic()
        restored = self._restore()
        restored_at = self.last_seq
        self._load_span = (self.last_seq, max(self._last_change(), self.last_seq))
        if self.fast_load:
            loaded = self._load_changes()
            if loaded is None:
                return  # stopping: not ready, no snapshot of a partial index
            count = loaded
        else:
            count = self.catch_up()
        removed = self.reconcile() if restored else 0
        if restored and not count and not removed and self.last_seq == restored_at:
            # The index is what the snapshot holds: no need to save it again.
            self._saved_version = (self.index.version, self.usage.version)
            self._saved_at = time.monotonic()
        self.load_seconds = time.monotonic() - started
        log.warning(
            "Protocol index loaded in %.1f s: %d protocol(s) (%s%d new from the change log, "
            "%d deleted since), change log at %d",
            self.load_seconds,
            len(self.index.orthanc_ids()),
            f"{self.restored} from the snapshot, " if restored else "",
            count,
            removed,
            self.last_seq,
        )
        # Ready only once the line is written: whoever sees the index ready
        # (``/dpp/status``, a test waiting for it) finds the line in the log.
        self.ready = True
        # Ready already: C-FIND and the list answer meanwhile (a search that comes
        # first works out the keys it needs itself).
        warmed = time.monotonic()
        prepared = search.prepare(self.index, self._stop.is_set)
        log.info(
            "Search keys of %d indexed instance(s) prepared in %.1f s",
            prepared,
            time.monotonic() - warmed,
        )

    def wake(self) -> None:
        """Ask the worker to read ``/changes`` now (from Orthanc's change callback)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dpp-index-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.save_snapshot(force=True)

    def _run(self) -> None:
        next_reconcile = time.monotonic() + self.reconcile_interval
        last_catch_up = 0.0
        while not self._stop.is_set():
            # Deletions at once (C-FIND must stop answering a deleted protocol);
            # new instances at most every CATCH_UP_SPACING (see there).
            due = last_catch_up + CATCH_UP_SPACING - time.monotonic()
            try:
                if not self.ready:
                    self.load()
                    last_catch_up = time.monotonic()
                else:
                    self.apply_deletions()
                    if due <= 0:
                        self.catch_up()
                        last_catch_up = time.monotonic()
                if self.on_tick is not None:
                    self.on_tick()
                if time.monotonic() >= next_reconcile:
                    self.reconcile()
                    next_reconcile = time.monotonic() + self.reconcile_interval
                self.save_snapshot()
                self.last_error = None
            except Exception as exc:  # keep following; report in /dpp/status
                self.last_error = str(exc)
                log.error("Protocol index update failed: %s", exc)
            self._wake.wait(self.poll_interval if due <= 0 else min(due, self.poll_interval))
            self._wake.clear()
