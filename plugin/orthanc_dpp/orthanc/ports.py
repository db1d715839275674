"""The small interfaces through which the lower layers reach Orthanc.

:class:`OrthancRestApi` is :class:`orthanc_dpp.storage.library.OrthancApi` over the
in-process REST API; :class:`GlobalPropertySnapshots` is
:class:`orthanc_dpp.model.snapshot.SnapshotStore` in a global property.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

from orthanc_dpp.model import snapshot
from orthanc_dpp.storage.library import OrthancError


def orthanc_error(method: str, uri: str, exc: BaseException) -> OrthancError:
    """``orthanc.OrthancException`` as :class:`OrthancError`, with Orthanc's error code.

    The Python plugin raises it with the arguments (code, description), as
    in ``(14, 'Cannot write to file')``; the code is what tells a full disk
    or a lost database from a bad file.
    """
    code = description = None
    if len(exc.args) == 2 and isinstance(exc.args[0], int) and isinstance(exc.args[1], str):
        code, description = int(exc.args[0]), exc.args[1]
    return OrthancError(method, uri, str(exc), code, description)


class OrthancRestApi:
    """:class:`orthanc_dpp.storage.library.OrthancApi` over the in-process REST API."""

    def __init__(self, orthanc: ModuleType) -> None:
        self.orthanc = orthanc
        self._posting = threading.local()  # .instances: this thread is in post("/instances")

    def posting_instances(self) -> bool:
        """True while this thread is inside this object's ``POST /instances``.

        Orthanc runs its received-instance hook on the thread that stores, so
        the hook can tell a file the library has just normalized (nothing to
        do, no need to read it again) from one arriving by Orthanc's routes.
        """
        return getattr(self._posting, "instances", False)

    def _call(self, method: str, uri: str, *args: Any) -> Any:
        function = getattr(self.orthanc, f"RestApi{method.title()}")
        try:
            return function(uri, *args)
        except self.orthanc.OrthancException as exc:
            raise orthanc_error(method, uri, exc) from exc

    def get(self, uri: str) -> bytes:
        return self._call("GET", uri)

    def stored_file(self, orthanc_id: str) -> bytes:
        """An instance's stored file, as ``GET /instances/{id}/file`` answers it.

        Through ``GetDicomForInstance`` where the plugin has it (the index's
        start-up reads every file: this skips Orthanc's HTTP layer).
        """
        read = getattr(self.orthanc, "GetDicomForInstance", None)
        if read is None:
            return self.get(f"/instances/{orthanc_id}/file")
        try:
            return bytes(read(orthanc_id))
        except self.orthanc.OrthancException as exc:
            raise orthanc_error("GET", f"/instances/{orthanc_id}/file", exc) from exc

    def post(self, uri: str, body: bytes) -> bytes:
        if uri != "/instances":
            return self._call("POST", uri, body)
        self._posting.instances = True
        try:
            return self._call("POST", uri, body)
        finally:
            self._posting.instances = False

    def put(self, uri: str, body: bytes) -> None:
        self._call("PUT", uri, body)

    def delete(self, uri: str) -> None:
        self._call("DELETE", uri)


class GlobalPropertySnapshots:
    """:class:`orthanc_dpp.model.snapshot.SnapshotStore` in an Orthanc global property.

    Global properties live in Orthanc's database, so every node sharing a
    PostgreSQL database starts from the same snapshot.
    """

    def __init__(self, orthanc: ModuleType, number: int = snapshot.PROPERTY) -> None:
        self.orthanc = orthanc
        self.number = number  # the global property (the usage has one of its own)

    def read(self) -> str:
        return self.orthanc.GetGlobalProperty(self.number, "")

    def write(self, text: str) -> None:
        self.orthanc.SetGlobalProperty(self.number, text)
