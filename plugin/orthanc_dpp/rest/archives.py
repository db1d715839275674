"""The REST routes that query, retrieve from and push to other nodes, and ``/dpp/jobs``.

``POST /dpp/modalities/{id}/find``, ``/retrieve`` and ``/store`` work on the
modalities of Orthanc's modality list, as Orthanc's own
``/modalities/{id}/query``, ``/move`` and ``/store`` do for images; the DICOM
work is in :mod:`orthanc_dpp.dicom.scu.query`, :mod:`orthanc_dpp.dicom.scu.retrieve`
and :mod:`orthanc_dpp.dicom.scu.push`. Errors are
JSON like every ``/dpp/`` answer: 404 for an unknown modality, 400 for a
bad request (naming the key), 502 when the remote archive cannot be
reached or refuses (with the DIMSE status and its name), 503 when too many
background jobs run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from orthanc_dpp.dicom.modalities import Modality, ModalityRegistry
from orthanc_dpp.dicom.outbound import Calling
from orthanc_dpp.dicom.scu import identifiers
from orthanc_dpp.dicom.scu import push as scu_push
from orthanc_dpp.dicom.scu import query as scu_query
from orthanc_dpp.dicom.scu import retrieve as scu_retrieve
from orthanc_dpp.dicom.scu.answers import RemoteError
from orthanc_dpp.dicom.scu.identifiers import BadKey
from orthanc_dpp.dicom.scu.jobs import Job, Jobs, TooManyJobs
from orthanc_dpp.dicom.scu.retrieve import Control, RetrieveResult
from orthanc_dpp.rest.http import Request, Response, error, json_response

log = logging.getLogger("orthanc_dpp.remote")

METHODS = ("C-GET", "C-MOVE")
RETRIEVE_MEMBERS: Final = {"SOPInstanceUIDs", "Method", "Destination", "Asynchronous"}
STORE_MEMBERS: Final = {"SOPInstanceUIDs", "Asynchronous"}


@dataclass(eq=False)
class RemoteArchives:
    """Handlers of the routes that reach other DPP archives, and of ``/dpp/jobs``.

    ``store`` is the plugin's normal store path for protocols received by
    C-GET; ``is_stored`` tells whether a SOP Instance UID is stored here;
    ``refresh`` re-reads Orthanc's modality list (a modality declared a
    moment ago is found without waiting for the periodic refresh);
    ``source`` holds the protocols a push sends (none: every UID is unknown).
    """

    caller: Calling
    modalities: ModalityRegistry
    store: scu_retrieve.Store
    is_stored: Callable[[str], bool]
    jobs: Jobs
    refresh: Callable[[], None] = field(default=lambda: None, kw_only=True)
    source: scu_push.ProtocolSource | None = field(default=None, kw_only=True)

    def _modality(self, name: str) -> Modality | None:
        for attempt in range(2):
            for modality in self.modalities.current.modalities:
                if modality.name == name:
                    return modality
            if attempt == 0:
                self.refresh()
        return None

    # POST /dpp/modalities/{id}/find
    def find(self, request: Request, name: str) -> Response:
        modality = self._modality(name)
        if modality is None:
            return error(404, f"no modality {name!r} in Orthanc's modality list")
        try:
            keys = _json_object(request.body, allow_empty=True)
            limit = _limit(keys.pop("Limit", scu_query.DEFAULT_LIMIT))
            identifier = identifiers.build_identifier(keys)
        except BadKey as exc:
            return error(400, f"bad query key {exc.key!r}: {exc.reason}", Key=exc.key)
        except ValueError as exc:
            return error(400, str(exc))
        try:
            result = scu_query.find(self.caller, modality, identifier, limit=limit)
        except RemoteError as exc:
            log.error("DPP C-FIND on %s failed: %s", modality.describe(), exc.reason)
            answers = exc.partial if isinstance(exc.partial, list) else []
            return error(502, exc.reason, **exc.as_json(), Answers=answers)
        log.info("DPP C-FIND on %s: %d answers", modality.describe(), len(result.answers))
        return json_response(
            200,
            {
                "Modality": name,
                "Count": len(result.answers),
                "Complete": result.complete,
                "Limit": limit,
                "Answers": result.answers,
            },
        )

    # POST /dpp/modalities/{id}/retrieve
    def retrieve(self, request: Request, name: str) -> Response:
        modality = self._modality(name)
        if modality is None:
            return error(404, f"no modality {name!r} in Orthanc's modality list")
        try:
            body = _json_object(request.body)
            uids, method, destination, asynchronous = self._retrieve_request(body)
        except ValueError as exc:
            return error(400, str(exc))
        description = {
            "Modality": name,
            "Method": method,
            "Destination": destination,
            "SOPInstanceUIDs": uids,
        }

        def work(control: Control) -> RetrieveResult:
            if method == "C-GET":
                return scu_retrieve.get(self.caller, modality, uids, self.store, control)
            return scu_retrieve.move(self.caller, modality, uids, destination or "", control)

        if asynchronous:
            try:
                job = self.jobs.submit(description, work)
            except TooManyJobs as exc:
                return error(503, f"no background retrieve started: {exc}")
            log.info("DPP %s from %s: job %s", method, modality.describe(), job.id)
            return json_response(200, {"ID": job.id, "Path": f"/dpp/jobs/{job.id}"})
        try:
            result = work(Control())
        except RemoteError as exc:
            log.error("DPP %s from %s failed: %s", method, modality.describe(), exc.reason)
            return error(502, exc.reason, **exc.as_json(), **_counters(exc.partial))
        log.info(
            "DPP %s from %s: %d completed, %d failed",
            method,
            modality.describe(),
            result.progress.completed,
            result.progress.failed,
        )
        return json_response(200, {**result.as_json(), **self._here(uids, destination)})

    def _retrieve_request(self, body: dict[str, Any]) -> tuple[list[str], str, str | None, bool]:
        uids = _uids(body, RETRIEVE_MEMBERS, scu_retrieve.MAXIMUM_UIDS)
        method = body.get("Method", "C-GET")
        if method not in METHODS:
            raise ValueError(f"Method must be {' or '.join(METHODS)}, got {method!r}")
        destination = body.get("Destination")
        if destination is not None:
            if method != "C-MOVE":
                raise ValueError("Destination is for Method C-MOVE only")
            if not isinstance(destination, str) or not identifiers.is_ae_title(destination):
                raise ValueError(f"Destination must be an AE title, got {destination!r}")
        elif method == "C-MOVE":
            destination = self.caller.ae_title  # this plugin's own listener
        return uids, method, destination, _asynchronous(body)

    # POST /dpp/modalities/{id}/store
    def store_to(self, request: Request, name: str) -> Response:
        """Push protocols stored here to the modality with C-STORE (:mod:`dicom.scu.push`)."""
        modality = self._modality(name)
        if modality is None:
            return error(404, f"no modality {name!r} in Orthanc's modality list")
        try:
            body = _json_object(request.body)
            uids = _uids(body, STORE_MEMBERS, scu_push.MAXIMUM_UIDS)
            asynchronous = _asynchronous(body)
        except ValueError as exc:
            return error(400, str(exc))
        source = self.source or _NOTHING_STORED

        def work(control: Control) -> scu_push.PushResult:
            result = scu_push.push(self.caller, modality, uids, source, control)
            log.info(
                "DPP C-STORE of %d protocols to %s: %d completed, %d failed%s",
                len(uids),
                modality.describe(),
                result.count("Success"),
                result.count("Failure"),
                f" ({result.unreachable})" if result.unreachable else "",
            )
            return result

        if asynchronous:
            description = {"Modality": name, "Method": "C-STORE", "SOPInstanceUIDs": uids}
            try:
                job = self.jobs.submit(description, work)
            except TooManyJobs as exc:
                return error(503, f"no background push started: {exc}")
            log.info("DPP C-STORE to %s: job %s", modality.describe(), job.id)
            return json_response(200, {"ID": job.id, "Path": f"/dpp/jobs/{job.id}"})
        result = work(Control())
        if result.unreachable is not None:
            return error(502, result.unreachable, **result.as_json())
        return json_response(200, result.as_json())

    def _here(self, uids: Sequence[str], destination: str | None) -> dict[str, Any]:
        """Which requested protocols this Orthanc now holds (when they were meant to come here)."""
        if destination is not None and destination != self.caller.ae_title:
            return {}
        missing = [uid for uid in uids if not self.is_stored(uid)]
        return {"StoredHere": len(uids) - len(missing), "MissingHere": missing}

    # GET /dpp/jobs
    def jobs_list(self, request: Request) -> Response:
        return json_response(200, [self._job_json(job) for job in self.jobs.all()])

    # GET /dpp/jobs/{id}
    def job(self, request: Request, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return error(404, f"no DPP job {job_id!r}")
        return json_response(200, self._job_json(job))

    # POST /dpp/jobs/{id}/cancel
    def job_cancel(self, request: Request, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return error(404, f"no DPP job {job_id!r}")
        job.control.cancel()
        return json_response(200, self._job_json(job))

    def _job_json(self, job: Job) -> dict[str, Any]:
        answer = job.as_json()
        if isinstance(job.result, RetrieveResult):
            answer["Result"].update(
                self._here(job.description["SOPInstanceUIDs"], job.description["Destination"])
            )
        return answer


def _json_object(body: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    if allow_empty and not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


def _uids(body: dict[str, Any], members: set[str], maximum: int) -> list[str]:
    """The body's SOPInstanceUIDs, without repeats; ValueError for an unknown member or bad UID."""
    unknown = sorted(set(body) - members)
    if unknown:
        known = ", ".join(sorted(members))
        raise ValueError(f"unknown member(s) {', '.join(unknown)} (known: {known})")
    uids = body.get("SOPInstanceUIDs")
    if not isinstance(uids, list) or not uids:
        raise ValueError("SOPInstanceUIDs must be a non-empty list of SOP Instance UIDs")
    if len(uids) > maximum:
        raise ValueError(f"at most {maximum} SOPInstanceUIDs per request, got {len(uids)}")
    for uid in uids:
        if not isinstance(uid, str) or not identifiers.is_uid(uid):
            raise ValueError(f"SOPInstanceUIDs: not a UID: {uid!r}")
    return list(dict.fromkeys(uids))


def _asynchronous(body: dict[str, Any]) -> bool:
    asynchronous = body.get("Asynchronous", False)
    if not isinstance(asynchronous, bool):
        raise ValueError("Asynchronous must be true or false")
    return asynchronous


class _NothingStored:
    """The source of a push when none was given: nothing is stored."""

    def resolve(
        self, uids: Sequence[str], storage_classes: frozenset[str]
    ) -> list[tuple[str, str | None]]:
        return [(uid, None) for uid in uids]

    def load(self, orthanc_id: str) -> Any:
        raise KeyError(orthanc_id)


_NOTHING_STORED: Final = _NothingStored()


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Limit must be a whole number, got {value!r}")
    if not 1 <= value <= scu_query.MAXIMUM_LIMIT:
        raise ValueError(f"Limit must be between 1 and {scu_query.MAXIMUM_LIMIT}, got {value}")
    return value


def _counters(partial: Any) -> dict[str, Any]:
    if isinstance(partial, scu_retrieve.Progress):
        return {"Completed": partial.completed, "Failed": partial.failed}
    return {}
