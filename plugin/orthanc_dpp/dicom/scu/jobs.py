"""Background retrieves and pushes with progress: the plugin's own jobs, ``/dpp/jobs``.

Orthanc's job engine is not open to Python plugins up to 7.1: the
``orthanc`` module has a ``Job`` class with ``SubmitJob`` but no function
that creates one from Python (tests/data/orthanc_python_*_api.json). So an
asynchronous retrieve runs here, on a thread of its own, and is followed
through ``GET /dpp/jobs/{id}``; it does not appear in Orthanc's ``/jobs``.

Bounded: at most :data:`MAXIMUM_RUNNING` jobs at once, the last
:data:`KEEP_FINISHED` finished ones kept; :meth:`Jobs.stop` aborts every
running job and waits a bounded time for its thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orthanc_dpp.dicom.scu.answers import RemoteError
from orthanc_dpp.dicom.scu.retrieve import Control
from orthanc_dpp.model import dimse_status

log = logging.getLogger("orthanc_dpp.jobs")

MAXIMUM_RUNNING = 4
KEEP_FINISHED = 100
STOP_WAIT = 5.0  # seconds per job thread at stop

PENDING, RUNNING = "Pending", "Running"
SUCCESS, FAILURE, CANCELED = "Success", "Failure", "Canceled"


class JobResult(Protocol):
    """What a job's work returns: a retrieve's result, or a push's (``push.PushResult``)."""

    @property
    def code(self) -> int:
        """The DIMSE status the job ended with (Success, Cancel, or a failure)."""
        ...

    def as_json(self) -> dict[str, Any]: ...


class TooManyJobs(Exception):
    """:data:`MAXIMUM_RUNNING` jobs are running already."""


@dataclass
class Job:
    """One background retrieve or push; its answer is what ``GET /dpp/jobs/{id}`` shows."""

    id: str
    description: dict[str, Any]
    control: Control = field(default_factory=Control)
    state: str = PENDING
    result: JobResult | None = None
    error: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = field(default=None, repr=False)
    order: int = 0

    def as_json(self, extra: Callable[[Job], dict[str, Any]] | None = None) -> dict[str, Any]:
        progress = self.control.progress
        done = progress.completed + progress.failed + progress.warning
        if self.state in (SUCCESS, FAILURE, CANCELED):
            percent = 100
        elif progress.requested:
            percent = min(99, 100 * done // progress.requested)
        else:
            percent = 0
        answer: dict[str, Any] = {
            "ID": self.id,
            "State": self.state,
            "Progress": percent,
            **self.description,
            "Requested": progress.requested,
            "Completed": progress.completed,
            "Failed": progress.failed,
            "Warning": progress.warning,
            "Remaining": progress.remaining,
            "CreationTime": _iso(self.created),
            "CompletionTime": _iso(self.finished) if self.finished else None,
        }
        if self.result is not None:
            answer["Result"] = self.result.as_json()
        if self.error is not None:
            answer["Error"] = self.error
        if extra is not None:
            answer.update(extra(self))
        return answer


def _iso(moment: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(moment))


class Jobs:
    """The table of background jobs."""

    def __init__(self, *, maximum_running: int = MAXIMUM_RUNNING) -> None:
        self.maximum_running = maximum_running
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._stopped = False

    def submit(self, description: dict[str, Any], work: Callable[[Control], JobResult]) -> Job:
        """Start ``work`` on a thread of its own; raise :class:`TooManyJobs` when full."""
        with self._lock:
            if self._stopped:
                raise TooManyJobs("the plugin is stopping")
            running = sum(1 for job in self._jobs.values() if job.state in (PENDING, RUNNING))
            if running >= self.maximum_running:
                raise TooManyJobs(f"{running} jobs are running (at most {self.maximum_running})")
            job = Job(str(uuid.uuid4()), description, order=next(self._counter))
            self._jobs[job.id] = job
            self._forget_old()
            job.thread = threading.Thread(
                target=self._run, args=(job, work), name=f"dpp-job-{job.order}", daemon=True
            )
        job.thread.start()
        return job

    def _run(self, job: Job, work: Callable[[Control], JobResult]) -> None:
        job.state = RUNNING
        try:
            job.result = work(job.control)
        except RemoteError as exc:
            job.error = {"Error": exc.reason, **exc.as_json()}
            job.state = FAILURE
        except Exception as exc:
            log.exception("DPP job %s failed", job.id)
            job.error = {"Error": f"internal error: {exc}"}
            job.state = FAILURE
        else:
            # Orthanc's own retrieve jobs fail when a sub-operation failed; so do these.
            outcomes = {dimse_status.SUCCESS: SUCCESS, dimse_status.CANCEL: CANCELED}
            job.state = outcomes.get(job.result.code, FAILURE)
        finally:
            job.finished = time.time()
            log.info("DPP job %s: %s", job.id, job.state)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state not in (PENDING, RUNNING)]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def stop(self) -> None:
        """Abort every running job and wait for its thread (at most STOP_WAIT s each)."""
        with self._lock:
            self._stopped = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.control.abort()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(STOP_WAIT)
