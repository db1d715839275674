"""README's compose set-up, running: two Orthanc nodes of the image on one PostgreSQL.

In file order: health, user, REST credentials, the protocol page, DICOM
across the nodes, then a restart and a compose down/up that the stored
protocol must survive.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dpp_tools.samples import make_protocol, to_bytes
from orthanc_dpp.model.key_table import DPP_MODEL
from orthanc_dpp.model.sop import STORAGE_CLASSES, TRANSFER_SYNTAXES
from tests import dicom_client
from tests.doc_examples import docker_documentation
from tests.docker.conftest import (
    CLIENT_AET,
    Node,
    Stack,
    container_logs,
    health,
    health_output,
    http,
    inspect,
    run,
)
from tests.orthanc_server import free_port
from tests.waiting import eventually

FOUND_WITHIN = 60.0


def same(received: Dataset, sent: Dataset) -> bool:
    """Equal element for element to what was sent (as a Part 10 file)."""
    return received == pydicom.dcmread(io.BytesIO(to_bytes(sent)))


def associate(node: Node, *contexts: str, **kwargs: Any) -> Association:
    """An association with ``node``'s DPP listener, through the tests' one requester."""
    return dicom_client.associate(
        "127.0.0.1",
        node.dpp_port,
        node.aet,
        calling_aet=CLIENT_AET,
        contexts=contexts,
        **kwargs,
    )


def c_find(node: Node, uid: str) -> list[Dataset]:
    query = Dataset()
    query.SOPInstanceUID = uid
    query.ProtocolName = ""
    assoc = associate(node, DPP_MODEL.find)
    try:
        answers = [
            ds
            for status, ds in assoc.send_c_find(query, DPP_MODEL.find)
            if status is not None and int(status.Status) in (0xFF00, 0xFF01) and ds is not None
        ]
    finally:
        assoc.release()
    return answers


def c_get(node: Node, uid: str) -> list[Dataset]:
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    storage = sorted(DPP_MODEL.storage_classes)
    assoc = associate(
        node,
        DPP_MODEL.get,
        transfer_syntaxes=[ExplicitVRLittleEndian],
        scp_role_for=storage,
        handlers=[(evt.EVT_C_STORE, on_store)],
    )
    identifier = Dataset()
    identifier.SOPInstanceUID = uid
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(identifier, DPP_MODEL.get) if s]
    assoc.release()
    assert statuses and statuses[-1] == 0x0000, f"C-GET statuses {statuses}"
    return received


def c_move(node: Node, uid: str, port: int) -> list[Dataset]:
    """C-MOVE to ourselves: our storage SCP is the declared modality DPP_TEST."""
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    scp = AE(ae_title=CLIENT_AET)
    for sop_class in STORAGE_CLASSES:
        scp.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        assoc = associate(node, DPP_MODEL.move)
        identifier = Dataset()
        identifier.SOPInstanceUID = uid
        statuses = [
            int(s.Status) for s, _ in assoc.send_c_move(identifier, CLIENT_AET, DPP_MODEL.move) if s
        ]
        assoc.release()
    finally:
        server.shutdown()
    assert statuses and statuses[-1] == 0x0000, f"C-MOVE statuses {statuses}"
    return received


@pytest.fixture(scope="module")
def protocol() -> Dataset:
    return make_protocol(25, "CT")


@pytest.fixture(scope="module")
def stored(stack: Stack, protocol: Dataset) -> Iterator[Dataset]:
    """The protocol, C-STOREd through node A."""
    assoc = associate(stack.nodes["A"], Verification, *STORAGE_CLASSES)
    try:
        status = assoc.send_c_store(protocol)
    finally:
        assoc.release()
    assert int(status.Status) == 0x0000, status
    yield protocol


def library_has(stack: Stack, node: Node, protocol: Dataset) -> None:
    """REST and C-FIND on ``node`` both know the protocol (waiting for the index)."""
    uid = protocol.SOPInstanceUID
    assert eventually(
        lambda: http(node, f"/dpp/protocols/{uid}", stack.password)[0] == 200, FOUND_WITHIN, 0.5
    ), f"{node.service}: /dpp/protocols/{uid} not found"
    assert eventually(lambda: len(c_find(node, uid)) == 1, FOUND_WITHIN, 0.5)


# -- the containers -----------------------------------------------------------------


def test_both_nodes_are_healthy_through_the_images_healthcheck(stack: Stack) -> None:
    for node in stack.nodes.values():
        container = stack.container(node.service)
        assert inspect(container, "{{.State.Health.Status}}") == "healthy"
        assert health_output(container) == f"healthy: DPP listener running on port {node.dpp_port}"
        # The check is the image's own (docker/Dockerfile), not one of compose's.
        test = json.loads(inspect(container, "{{json .Config.Healthcheck.Test}}"))
        assert test == ["CMD", "python3", "/usr/share/orthanc-dpp/healthcheck.py"]


def test_orthanc_runs_as_uid_999(stack: Stack) -> None:
    for node in stack.nodes.values():
        container = stack.container(node.service)
        assert inspect(container, "{{.Config.User}}") == "999:999"
        process = run("docker", "exec", container, "cat", "/proc/1/status", "/proc/1/comm")
        assert re.search(r"^Uid:\s+999\s+999\s+999\s+999$", process, re.M), process
        assert re.search(r"^Gid:\s+999\s+999\s+999\s+999$", process, re.M), process
        assert process.rstrip().endswith("Orthanc"), process


def test_rest_needs_the_password_from_the_secret_file(stack: Stack) -> None:
    node = stack.nodes["A"]
    status, body, _ = http(node, "/dpp/status", stack.password)
    assert status == 200 and json.loads(body)["Listener"]["State"] == "running"
    assert http(node, "/dpp/status", None)[0] == 401
    assert http(node, "/dpp/status", stack.password + "x")[0] == 401
    # The password is nowhere in the container's configuration (docker inspect).
    environment = inspect(stack.container(node.service), "{{json .Config.Env}}")
    assert stack.password not in environment


def test_readmes_link_to_the_protocol_page_works(stack: Stack) -> None:
    """The image's default UI (Orthanc Explorer 2) cannot show our button: README links the page."""
    links = re.findall(r"http://localhost:8042(/dpp/ui/\S*?)(?=[\s`>)])", docker_documentation())
    assert links, "README's Docker section has no link to the protocol page"
    for node in stack.nodes.values():
        for path in set(links):
            status, body, kind = http(node, path, stack.password)
            assert status == 200 and kind.startswith("text/html"), (path, status, kind)
            assert b"Defined Procedure Protocol library" in body
            assert http(node, path, None)[0] == 401
        # Orthanc Explorer, still in the image, carries the button to the page.
        status, body, _ = http(node, "/plugins/explorer.js", stack.password)
        assert status == 200 and b"Defined Procedure Protocol library" in body


# -- DICOM across the nodes ---------------------------------------------------------


def test_store_on_one_node_then_find_get_move_on_the_other(stack: Stack, stored: Dataset) -> None:
    node = stack.nodes["B"]
    uid = stored.SOPInstanceUID
    assert eventually(lambda: len(c_find(node, uid)) == 1, FOUND_WITHIN, 0.5), "C-FIND on B"
    (found,) = c_find(node, uid)
    assert found.ProtocolName == stored.ProtocolName
    (got,) = c_get(node, uid)
    assert same(got, stored), "C-GET from B differs from what was stored on A"
    (moved,) = c_move(node, uid, stack.move_port)
    assert same(moved, stored), "C-MOVE from B differs from what was stored on A"
    status, body, _ = http(node, f"/dpp/protocols/{uid}/file", stack.password)
    assert status == 200 and same(pydicom.dcmread(io.BytesIO(body)), stored)


# -- what the library survives --------------------------------------------------------


def test_library_survives_a_container_restart(stack: Stack, stored: Dataset) -> None:
    container = stack.container("orthanc-a")
    run("docker", "restart", container)
    stack.wait_listening(stack.nodes["A"])
    library_has(stack, stack.nodes["A"], stored)
    stack.wait_healthy("orthanc-a")
    assert inspect(container, "{{.RestartCount}}") == "0"  # restarted by us, not crashed


def test_library_survives_compose_down_and_up(stack: Stack, stored: Dataset) -> None:
    stack.compose("down")  # containers gone, the PostgreSQL volume kept
    assert not stack.compose("ps", "--all", "--quiet").strip()
    stack.compose("up", "--detach")
    for node in stack.nodes.values():
        stack.wait_listening(node)
        library_has(stack, node, stored)
    # The database was not initialised again: the volume kept it.
    assert "initialising" not in stack.compose("logs", "postgres")
    stack.wait_healthy()


def test_a_bad_environment_setting_is_logged_and_unhealthy_not_a_crash_loop(
    stack: Stack, image: str
) -> None:
    """A plugin key wrong in the environment: Orthanc stays up, says why, Docker says unhealthy."""
    name = "orthanc-dpp-test-bad-setting"
    run("docker", "rm", "--force", name, check=False)
    run(
        "docker", "run", "--detach", "--name", name, "--network", "host",
        "--restart", "unless-stopped",
        # The image's own check, run more often so that the test need not wait minutes.
        "--health-interval", "2s", "--health-retries", "2", "--health-start-period", "0s",
        "--volume", f"{stack.password_file}:/run/secrets/orthanc-password:ro",
        "--env", "ORTHANC_PASSWORD_FILE=/run/secrets/orthanc-password",
        "--env", f"ORTHANC__HTTP_PORT={free_port()}",
        "--env", 'ORTHANC__HTTP_BIND_ADDRESSES=["127.0.0.1"]',
        "--env", "ORTHANC__DICOM_SERVER_ENABLED=false",
        "--env", "ORTHANC__DEFINED_PROCEDURE_PROTOCOL__BIND_ADDRESS=127.0.0.1",
        "--env", "ORTHANC__DEFINED_PROCEDURE_PROTOCOL__PORT=eleven",
        image,
    )  # fmt: skip
    try:
        unhealthy = eventually(lambda: health(name) == "unhealthy", 120, 1)
        logs = container_logs(name)
        assert unhealthy, f"{health(name)}: {health_output(name)}\n{logs[-3000:]}"
        line = re.search(r"Configuration error, DPP listener not started: .*", logs)
        assert line and "Port" in line.group(0), logs[-3000:]
        assert health_output(name).startswith("unhealthy: DPP listener is"), health_output(name)
        # Up all along: no crash, no restart.
        assert inspect(name, "{{.State.Running}}") == "true"
        assert inspect(name, "{{.RestartCount}}") == "0"
    finally:
        run("docker", "rm", "--force", name, check=False)
