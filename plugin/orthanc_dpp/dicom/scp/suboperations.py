"""The C-STORE sub-operations of a C-GET or C-MOVE: prepared ahead, sent pre-encoded.

A sub-operation is a round trip: the peer stores the instance and answers
before the next one may start. ``Association.send_c_store`` (pynetdicom
3.0.4) adds to every round trip work that need not be on it:

* loading and encoding the instance happen while nothing is on the wire;
  here the next instance is prepared while the peer stores the current
  one (:class:`Lookahead`);
* on an association we requested (C-MOVE), it waits for the association's
  reactor thread to pause, which sleeps 1 ms between checks, once per
  instance; here the reactor is paused once for the whole retrieve;
* the association's DUL thread polls its socket and its send queue every
  1 ms; here it polls faster while sub-operations are in flight, and the
  serving thread lets it send each request before preparing the next
  (:meth:`StoreChannel.start`), since both need the GIL.

On a shared 2-core machine this took C-MOVE of 1,000 small protocols from
about half of Orthanc's own speed to slightly faster (docs/performance.md).
Memory stays bounded: one encoded instance waits while another is sent.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from orthanc_dpp.dicom import pynetdicom_private as private

FAILED = "Failure"

#: Seconds the DUL thread sleeps between polls while sub-operations run
#: (pynetdicom's default is 0.001; restored afterwards).
FAST_POLL = 0.0002
#: ... and the C-MOVE requester's DUL thread meanwhile: it only has to
#: notice a C-CANCEL and send the occasional pending response, and each of
#: its wake-ups takes the GIL from the thread doing the sub-operations.
QUIET_POLL = 0.005
#: Sleep between checks that the DUL thread has sent a request.
_HAND_OVER = 0.00005
#: How often a wait for a C-STORE response checks whether the peer aborted.
_ABORT_CHECK = 0.05
#: pynetdicom's default C-STORE priority (LOW), as ``send_c_store`` sends it.
_PRIORITY = 2


@dataclass(frozen=True)
class Outcome:
    """How one sub-operation ended."""

    category: str  # pynetdicom status category: Success, Warning or Failure
    reason: str | None = None
    fatal: bool = False  # the association can no longer be used
    status: int | None = None  # the peer's C-STORE status, when it answered


@dataclass
class Prepared:
    """One C-STORE request encoded and cut into P-DATA, or why it cannot be sent."""

    uid: str
    message_id: int
    failure: Outcome | None = None
    message: C_STORE_RQ | None = None
    fragments: list[P_DATA] = field(default_factory=list)


# --- presentation contexts and conversion -----------------------------------------------


def conversion_loss(ds: Dataset, source: UID, target: UID) -> str | None:
    """Why re-encoding ``ds`` from ``source`` to ``target`` would change it, or None.

    Between the uncompressed little-endian syntaxes only one thing can be
    lost: going from explicit to implicit VR drops the VR of elements the
    receiver cannot look up in the data dictionary (private elements other
    than private creators, which are LO by rule, and unknown public tags).
    """
    if source == target or source.is_implicit_VR or not target.is_implicit_VR:
        return None
    for elem in ds.iterall():
        tag = elem.tag
        if tag.is_private:
            if not tag.is_private_creator:
                return f"implicit VR would lose the VR of private element {tag}"
            continue
        try:
            dictionary_VR(tag)
        except KeyError:
            return f"implicit VR would lose the VR of unknown element {tag}"
    return None


@dataclass
class Preparer:
    """Builds the C-STORE requests of one retrieve, one instance per call.

    Loading, re-encoding and encoding the whole DIMSE message happen here,
    while the peer stores the previous instance (:class:`Lookahead`). Every
    reason a sub-operation fails before reaching the peer is decided here
    too, so the sending side only sends.
    """

    load: Callable[[str], Dataset]
    assoc: Association
    allow_conversion: bool
    max_pdu: int
    log: logging.Logger
    originator: tuple[str, int] | None = None

    def __call__(self, uid: str, orthanc_id: str | None, message_id: int) -> Prepared:
        if orthanc_id is None:
            return Prepared(uid, message_id, Outcome(FAILED, "not stored here"))
        try:
            ds = self.load(orthanc_id)
            sop_class = UID(ds.SOPClassUID)
            stored_ts = UID(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:
            self.log.error("cannot load instance %s (%s): %s", uid, orthanc_id, exc)
            return Prepared(uid, message_id, Outcome(FAILED, "cannot be loaded"))
        cx = private.accepted_context(self.assoc, sop_class, stored_ts)
        if cx is None:
            reason = f"no accepted context for {sop_class.name}/{stored_ts.name}"
            return Prepared(uid, message_id, Outcome(FAILED, reason))
        target = UID(cx.transfer_syntax[0])
        if target != stored_ts:
            loss = (
                conversion_loss(ds, stored_ts, target)
                if self.allow_conversion
                else "transcoding not allowed (AllowTranscoding)"
            )
            if loss:
                return Prepared(uid, message_id, Outcome(FAILED, loss))
        try:
            data = encode(ds, target.is_implicit_VR, target.is_little_endian, target.is_deflated)
        except Exception as exc:  # pynetdicom returns None and logs; be safe either way
            self.log.error("cannot encode instance %s as %s: %s", uid, target.name, exc)
            data = None
        if data is None:
            return Prepared(uid, message_id, Outcome(FAILED, f"cannot be encoded as {target.name}"))
        del ds
        req = C_STORE()
        req.MessageID = message_id
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = uid
        req.Priority = _PRIORITY
        if self.originator:
            req.MoveOriginatorApplicationEntityTitle = self.originator[0]
            req.MoveOriginatorMessageID = self.originator[1]
        req.DataSet = BytesIO(data)
        message, fragments = private.encode_request(req, int(cx.context_id or 0), self.max_pdu)
        return Prepared(uid, message_id, None, message, fragments)


class Lookahead:
    """Hands out prepared sub-operations in plan order, one prepared in advance.

    :meth:`prepare_next` is called right after a C-STORE request has gone
    out: the next instance is loaded and encoded on the serving thread while
    the peer stores the current one. An earlier version used a worker
    thread; handing the GIL between it and pynetdicom's threads cost more
    CPU than the work itself.
    """

    def __init__(
        self,
        plan: Iterable[tuple[str, str | None, int]],
        make: Callable[[str, str | None, int], Prepared],
    ) -> None:
        self._plan = iter(plan)
        self._make = make
        self._upcoming: Prepared | None = None

    def _prepare(self) -> Prepared | None:
        item = next(self._plan, None)
        return None if item is None else self._make(*item)

    def prepare_next(self) -> None:
        if self._upcoming is None:
            self._upcoming = self._prepare()

    def take(self) -> Prepared | None:
        """The next sub-operation (prepared now if it was not yet), or None at the end."""
        current, self._upcoming = self._upcoming, None
        return current if current is not None else self._prepare()


class StoreChannel:
    """Sends prepared C-STORE requests on one association, one round trip at a time.

    Use as a context manager around the sub-operations: it speeds up the
    DUL's polling and, for an association this side requested, keeps its
    reactor paused so that it cannot take the C-STORE responses off the
    DIMSE queue (what ``send_c_store`` does per message). The acceptor's
    reactor is the thread serving the C-GET, so it is paused already.
    """

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> StoreChannel:
        self._stack.enter_context(private.dul_polling(self.assoc, FAST_POLL))
        if self.assoc.is_requestor and self.assoc.is_established:
            # If it does not pause (the association is ending), the responses
            # are still read below; send_c_store would wait forever instead.
            self._stack.enter_context(private.reactor_paused(self.assoc))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start(self, item: Prepared) -> Outcome | None:
        """Send one prepared request; a fatal outcome if it could not be sent."""
        assert item.message is not None
        try:
            evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": item.message})
            private.send_fragments(self.assoc, item.fragments)
        except Exception as exc:
            return Outcome(FAILED, f"C-STORE not sent: {exc}", fatal=True)
        self._wait_until_sent()
        return None

    def _wait_until_sent(self, limit: float = 0.05) -> None:
        """Sleep until the DUL thread has taken the request off its queues.

        The caller goes on to prepare the next instance, pure Python that
        holds the GIL for about a millisecond; the DUL thread would wait for
        it (up to the 5 ms switch interval) before sending, so the round trip
        would start only after the preparation. Sleeping here hands it the
        GIL now. This one wait took C-MOVE from 230 to 350 instances/s.
        """
        deadline = time.monotonic() + limit
        while not private.sending_done(self.assoc):
            if time.monotonic() > deadline:
                return
            time.sleep(_HAND_OVER)

    def finish(self, item: Prepared) -> Outcome:
        """Wait for the response to :meth:`start`'s request and judge it."""
        rsp = self._response(item.message_id)
        if isinstance(rsp, Outcome):
            return rsp
        code = int(rsp.Status or 0)  # present: checked by is_valid_response
        category = code_to_category(code)
        if category == STATUS_SUCCESS:
            return Outcome(STATUS_SUCCESS, status=code)
        detail = f": {rsp.ErrorComment}" if getattr(rsp, "ErrorComment", None) else ""
        if category == STATUS_WARNING:
            return Outcome(STATUS_WARNING, f"C-STORE warning 0x{code:04X}{detail}", status=code)
        return Outcome(FAILED, f"C-STORE failed 0x{code:04X}{detail}", status=code)

    def _response(self, message_id: int) -> C_STORE | Outcome:
        """The C-STORE response, or a fatal outcome if none can come.

        Waits at most the DIMSE timeout but notices an abort or a closed
        connection within :data:`_ABORT_CHECK` seconds, instead of waiting
        out the timeout as ``send_c_store`` does.
        """
        assoc = self.assoc
        timeout = assoc.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _ABORT_CHECK
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0))
            try:
                _, rsp = private.next_response(assoc, wait)
            except queue.Empty:
                if assoc.acse.is_aborted() or not assoc.dul.is_alive():
                    return Outcome(FAILED, "association aborted by the peer", fatal=True)
                if deadline is not None and time.monotonic() >= deadline:
                    with contextlib.suppress(Exception):
                        assoc.abort()
                    return Outcome(FAILED, "no C-STORE response within DimseTimeout", fatal=True)
                continue
            if (
                isinstance(rsp, C_STORE)
                and rsp.is_valid_response
                and rsp.MessageIDBeingRespondedTo == message_id
            ):
                return rsp
            with contextlib.suppress(Exception):
                assoc.abort()
            return Outcome(FAILED, "unexpected answer to C-STORE; association aborted", fatal=True)
