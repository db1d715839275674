"""The ``/dpp`` route table: each URI with the callables that serve its methods.

A :class:`Route` names its handlers directly (``{"GET": api.protocol,
"DELETE": api.delete_protocol}``), so the methods a route serves, the
``Allow`` text of its 405 answer and the bodies it reads on POST are all
read off the table rather than written again in each handler. The adapter
registers every route in the order of the table and runs
:func:`orthanc_dpp.rest.csrf.check` with the route's body types before
:meth:`Route.answer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from orthanc_dpp.rest.activity import ActivityLog
from orthanc_dpp.rest.archives import RemoteArchives
from orthanc_dpp.rest.http import Request, Response, error, json_response, method_not_allowed
from orthanc_dpp.rest.protocols import DppRestApi, activity_answer, library_page_file

#: A route's handler: the request, then one string per group of the URI.
Handler = Callable[..., Response]

#: One character of a path segment, in the bytes Orthanc matches routes
#: against (the URI percent-decoded): any character but "/", in valid UTF-8.
#: The Python plugin cannot make a str of a segment that is not UTF-8
#: (``/dpp/protocols/%FF``): it answers 500 before any plugin code runs. A
#: route that does not match such a URI leaves it to Orthanc: 404 "Unknown
#: resource". Written with escapes, as the regular expression reads them.
_UTF8_CHARACTER = (
    r"(?:[\x01-\x2E\x30-\x7F]"
    r"|[\xC2-\xDF][\x80-\xBF]"
    r"|\xE0[\xA0-\xBF][\x80-\xBF]"
    r"|[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}"
    r"|\xED[\x80-\x9F][\x80-\xBF]"
    r"|\xF0[\x90-\xBF][\x80-\xBF]{2}"
    r"|[\xF1-\xF3][\x80-\xBF]{3}"
    r"|\xF4[\x80-\x8F][\x80-\xBF]{2})"
)
SEGMENT = f"({_UTF8_CHARACTER}+)"

STATUS: Final = "/dpp/status"
#: The library: its list, its export, and each protocol with its file and attributes.
PROTOCOLS: Final = "/dpp/protocols"
EXPORT: Final = "/dpp/export"
PROTOCOL: Final = f"/dpp/protocols/{SEGMENT}"
PROTOCOL_FILE: Final = f"/dpp/protocols/{SEGMENT}/file"
PROTOCOL_TREE: Final = f"/dpp/protocols/{SEGMENT}/tree"
#: A protocol's review: approving it, comparing it with another, its versions.
PROTOCOL_APPROVALS: Final = f"/dpp/protocols/{SEGMENT}/approvals"
PROTOCOL_DIFF: Final = f"/dpp/protocols/{SEGMENT}/diff/{SEGMENT}"
PROTOCOL_VERSIONS: Final = f"/dpp/protocols/{SEGMENT}/versions"
#: The plugin's recent log lines, and the library page's files.
ACTIVITY: Final = "/dpp/activity"
LIBRARY_PAGE: Final = f"/dpp/ui/({_UTF8_CHARACTER}*)"
#: Other nodes of Orthanc's modality list...
FIND: Final = f"/dpp/modalities/{SEGMENT}/find"
RETRIEVE: Final = f"/dpp/modalities/{SEGMENT}/retrieve"
STORE: Final = f"/dpp/modalities/{SEGMENT}/store"
#: ...and the background jobs that reach them.
JOBS: Final = "/dpp/jobs"
JOB: Final = f"/dpp/jobs/{SEGMENT}"
JOB_CANCEL: Final = f"/dpp/jobs/{SEGMENT}/cancel"

#: The bodies a route reads on POST (``csrf.body_type``).
UPLOAD_TYPES: Final = ("application/dicom", "multipart/related", "application/zip")
JSON_TYPES: Final = ("application/json",)


@dataclass(frozen=True)
class Route:
    """A URI regular expression and the handlers of the methods it serves.

    ``body_types`` are the media types the route reads on POST (empty: it
    reads no body). ``fallback`` answers every method not in ``methods``;
    without one, such a method is answered 405 with :attr:`allowed`.
    Orthanc hands a route every method (docs/design.md, fact 13).
    """

    uri: str
    methods: Mapping[str, Handler]
    body_types: tuple[str, ...] = ()
    fallback: Handler | None = field(default=None, kw_only=True)

    @property
    def allowed(self) -> str:
        """The methods served, as Orthanc's 405 answer lists them: ``"GET,DELETE"``."""
        return ",".join(self.methods)

    def accepted(self, method: str) -> tuple[str, ...]:
        """The body types ``csrf.check`` lets through for ``method``: only POST reads one."""
        return self.body_types if method == "POST" else ()

    def answer(self, request: Request, *groups: str) -> Response:
        """The handler's answer for ``request.method``, or 405 naming the methods served."""
        handler = self.methods.get(request.method, self.fallback)
        if handler is None:
            return method_not_allowed(self.allowed)
        return handler(request, *groups)


def protocol_routes(api: DppRestApi) -> list[Route]:
    """The routes of the protocol library, the activity and the library page."""
    return [
        Route(STATUS, {"GET": api.status}),
        Route(PROTOCOLS, {"GET": api.protocols, "POST": api.upload}, UPLOAD_TYPES),
        Route(PROTOCOL, {"GET": api.protocol, "DELETE": api.delete_protocol}),
        Route(PROTOCOL_FILE, {"GET": api.protocol_file}),
        Route(PROTOCOL_TREE, {"GET": api.protocol_tree}),
        Route(PROTOCOL_APPROVALS, {"POST": api.approve}, JSON_TYPES),
        Route(PROTOCOL_DIFF, {"GET": api.protocol_diff}),
        Route(PROTOCOL_VERSIONS, {"GET": api.protocol_versions}),
        Route(EXPORT, {"GET": api.export}),
        Route(ACTIVITY, {"GET": api.recent_activity}),
        Route(LIBRARY_PAGE, {"GET": api.library_page}),
    ]


def remote_routes(remote: RemoteArchives) -> list[Route]:
    """The routes to other DPP archives and the background jobs."""
    return [
        Route(FIND, {"POST": remote.find}, JSON_TYPES),
        Route(RETRIEVE, {"POST": remote.retrieve}, JSON_TYPES),
        Route(STORE, {"POST": remote.store_to}, JSON_TYPES),
        Route(JOBS, {"GET": remote.jobs_list}),
        Route(JOB, {"GET": remote.job}),
        Route(JOB_CANCEL, {"POST": remote.job_cancel}),
    ]


def dpp_routes(api: DppRestApi, remote: RemoteArchives) -> list[Route]:
    """Every route, in the order they are registered with Orthanc."""
    return [*protocol_routes(api), *remote_routes(remote)]


def invalid_configuration(
    errors: list[str], activity: ActivityLog, status: Callable[[], dict[str, Any]]
) -> list[Route]:
    """The routes while the configuration is invalid: the same URIs and body types.

    Everything answers 503 with the errors, whatever the method, but the
    status (any method: the report that says what is wrong), the activity
    and the library page, which show the errors.
    """

    def unavailable(request: Request, *groups: str) -> Response:
        return error(503, "DPP plugin configuration is invalid", Errors=errors)

    def refused(uri: str, body_types: tuple[str, ...] = ()) -> Route:
        return Route(uri, {}, body_types, fallback=unavailable)

    return [
        Route(STATUS, {}, fallback=lambda request: json_response(200, status())),
        refused(PROTOCOLS, UPLOAD_TYPES),
        refused(PROTOCOL),
        refused(PROTOCOL_FILE),
        refused(PROTOCOL_TREE),
        refused(PROTOCOL_APPROVALS, JSON_TYPES),
        refused(PROTOCOL_DIFF),
        refused(PROTOCOL_VERSIONS),
        refused(EXPORT),
        Route(ACTIVITY, {"GET": lambda request: activity_answer(activity)}),
        Route(LIBRARY_PAGE, {"GET": library_page_file}),
        refused(FIND, JSON_TYPES),
        refused(RETRIEVE, JSON_TYPES),
        refused(STORE, JSON_TYPES),
        refused(JOBS),
        refused(JOB),
        refused(JOB_CANCEL),
    ]
