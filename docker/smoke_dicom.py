"""The DICOM and REST half of ``docker/smoke.sh``: echo, store, find, retrieve.

Run from a checkout (it draws its protocol from ``dpp_tools/samples.py``)
with an interpreter that has pydicom and pynetdicom, against containers
started by ``smoke.sh``. The protocol is stored through the first node and
found and retrieved through the last one, so with two nodes this checks
scale-out too. Every step prints one line; the first failure ends the run
with exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: dpp_tools is beside docker/

import pydicom  # noqa: E402
from pydicom import Dataset  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    CTDefinedProcedureProtocolStorage,
    DefinedProcedureProtocolInformationModelFind,
    Verification,
)

from dpp_tools.samples import make_protocol, to_bytes  # noqa: E402

FOUND_WITHIN_SECONDS = 10.0
# Our calling AE title: docker/compose.smoke.yaml declares it as a modality.
CALLING_AET = "DPP_SMOKE"


class SmokeFailure(Exception):
    """One step did not do what it should."""


@dataclass(frozen=True)
class Node:
    """One Orthanc container as seen from the host."""

    name: str
    host: str
    http_port: int
    dpp_port: int


def parse_node(text: str) -> Node:
    """``NAME=HOST:HTTP_PORT:DPP_PORT``"""
    name, _, rest = text.partition("=")
    host, http_port, dpp_port = rest.split(":")
    return Node(name, host, int(http_port), int(dpp_port))


class Client:
    def __init__(self, user: str, password: str, aet: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self.headers = {"Authorization": f"Basic {token}"}
        self.aet = aet

    def http_get(self, node: Node, path: str) -> bytes:
        url = f"http://{node.host}:{node.http_port}{path}"
        request = urllib.request.Request(url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read()

    def get_json(self, node: Node, path: str) -> Any:
        return json.loads(self.http_get(node, path))

    def associate(self, node: Node, *contexts: str) -> Any:
        ae = AE(ae_title=CALLING_AET)
        for context in contexts:
            ae.add_requested_context(context)
        # Raw pynetdicom: this runs in the image, where the tests' client is not installed.
        assoc = ae.associate(node.host, node.dpp_port, ae_title=self.aet)
        if not assoc.is_established:
            raise SmokeFailure(f"{node.name}: association with {self.aet} was not accepted")
        return assoc


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def _ask(
    client: Client, node: Node, context: str, request: str, send: Callable[[Any], Any]
) -> None:
    """Send one request on its own association; anything but Success fails the smoke test."""
    assoc = client.associate(node, context)
    try:
        status = send(assoc)
    finally:
        assoc.release()
    if status.get("Status") != 0x0000:
        raise SmokeFailure(f"{node.name}: {request} answered {status}")


def echo(client: Client, node: Node) -> None:
    _ask(client, node, Verification, "C-ECHO", lambda assoc: assoc.send_c_echo())
    step(f"C-ECHO {node.name} {node.host}:{node.dpp_port}: Success")


def store(client: Client, node: Node, ds: Dataset) -> None:
    _ask(
        client,
        node,
        CTDefinedProcedureProtocolStorage,
        "C-STORE",
        lambda assoc: assoc.send_c_store(ds),
    )
    step(f"C-STORE {ds.SOPInstanceUID} to {node.name}: Success")


def find_rest(client: Client, node: Node, uid: str) -> float:
    """Seconds until ``/dpp/protocols/{uid}`` answers on ``node``."""
    started = time.monotonic()
    while True:
        try:
            summary = client.get_json(node, f"/dpp/protocols/{uid}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        else:
            if summary.get("SOPInstanceUID") == uid:
                return time.monotonic() - started
        if time.monotonic() - started > FOUND_WITHIN_SECONDS:
            raise SmokeFailure(f"{node.name}: {uid} not found within {FOUND_WITHIN_SECONDS} s")
        time.sleep(0.1)


def find_dicom(client: Client, node: Node, ds: Dataset) -> None:
    """C-FIND on the DPP information model by Protocol Name; skipped if not offered yet."""
    # Verification keeps the association up even if FIND is refused.
    assoc = client.associate(node, Verification, DefinedProcedureProtocolInformationModelFind)
    offered = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    if str(DefinedProcedureProtocolInformationModelFind) not in offered:
        assoc.release()
        step(f"C-FIND {node.name}: skipped, the listener does not offer the DPP FIND model yet")
        return
    query = Dataset()
    query.ProtocolName = ds.ProtocolName
    query.SOPClassUID = ""
    query.SOPInstanceUID = ""
    matches: list[str] = []
    try:
        for status, identifier in assoc.send_c_find(
            query, DefinedProcedureProtocolInformationModelFind
        ):
            code = status.get("Status") if status else None
            if code in (0xFF00, 0xFF01) and identifier is not None:
                matches.append(str(identifier.get("SOPInstanceUID", "")))
            elif code != 0x0000:
                raise SmokeFailure(f"{node.name}: C-FIND answered {status}")
    finally:
        assoc.release()
    if ds.SOPInstanceUID not in matches:
        raise SmokeFailure(f"{node.name}: C-FIND by Protocol Name missed {ds.SOPInstanceUID}")
    step(f"C-FIND {node.name} by ProtocolName {ds.ProtocolName!r}: {len(matches)} match(es)")


def retrieve(client: Client, node: Node, ds: Dataset) -> None:
    data = client.http_get(node, f"/dpp/protocols/{ds.SOPInstanceUID}/file")
    back = pydicom.dcmread(io.BytesIO(data))
    sent = pydicom.dcmread(io.BytesIO(to_bytes(ds)))
    if back != sent:
        differing = [e.keyword or str(e.tag) for e in sent if back.get(e.tag) != e]
        raise SmokeFailure(f"{node.name}: retrieved file differs from the sent one: {differing}")
    step(f"retrieved {ds.SOPInstanceUID} from {node.name}: equal to what was sent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", action="append", type=parse_node, required=True)
    parser.add_argument("--user", default="orthanc")
    password = parser.add_mutually_exclusive_group(required=True)
    password.add_argument("--password")
    password.add_argument(
        "--password-file", type=Path, help="file holding the password (trailing newline dropped)"
    )
    parser.add_argument("--aet", default="ORTHANC_DPP")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    args = parser.parse_args(argv)
    if args.password_file is not None:
        args.password = args.password_file.read_text().rstrip("\n")
    client = Client(args.user, args.password, args.aet)
    first, last = args.node[0], args.node[-1]
    try:
        for node in args.node:
            status = client.get_json(node, "/dpp/status")
            state = status["Listener"]["State"]
            step(f"{node.name} /dpp/status: plugin {status['Version']}, listener {state}")
            echo(client, node)
        ds = make_protocol(args.seed, "CT")
        store(client, first, ds)
        seconds = find_rest(client, last, ds.SOPInstanceUID)
        step(f"found {ds.SOPInstanceUID} on {last.name} via REST after {seconds:.2f} s")
        find_dicom(client, last, ds)
        retrieve(client, last, ds)
    except (SmokeFailure, OSError, KeyError, ValueError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    step("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
