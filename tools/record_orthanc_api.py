#!/usr/bin/python3
"""Record the API of the installed Orthanc Python plugin, for the test fakes.

Run it with any Python (the host's, or inside a Debian root of
``tools/stacks.py``): it starts ``/usr/sbin/Orthanc`` with this same file as
the ``PythonScript``, probes the ``orthanc`` module from inside, and writes
``tests/data/orthanc_python_<version>_api.json``::

    tools/record_orthanc_api.py [--out FILE]

What is recorded, so that ``tests/fake_orthanc_module.py`` can refuse every
call the real plugin refuses:

- every name of the module, with its kind; classes with their methods, and
  enumerations with their real values;
- for each call the plugin makes (``PROBES``), which argument shapes the
  real function accepts: a shape is refused when the call raises TypeError
  while parsing its arguments, accepted otherwise (an OrthancException or a
  normal return both mean the arguments were understood). Methods of
  ``RestOutput`` are probed inside a REST callback, one request each, since
  an answer can be sent only once;
- Orthanc's and the Python plugin's versions (``/system``, ``/plugins/python``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback

#: Calls to probe: (target, [argument kinds...]). Kinds are made into values
#: by ``_value``; "RestOutput.X" targets run inside a REST callback.
PROBES: list[tuple[str, list[str]]] = [
    ("RestOutput.SendHttpStatus", ["int", "bytes"]),
    ("RestOutput.SendHttpStatus", ["int", "str"]),
    ("RestOutput.SendHttpStatus", ["int", "str", "int"]),
    ("RestOutput.SendHttpStatus", ["int", "bytes", "int"]),
    ("RestOutput.AnswerBuffer", ["bytes", "str"]),
    ("RestOutput.AnswerBuffer", ["str", "str"]),
    ("RestOutput.SetHttpHeader", ["str", "str"]),
    ("RestOutput.SendMethodNotAllowed", ["str"]),
    ("LogInfo", ["str"]),
    ("LogWarning", ["str"]),
    ("LogError", ["str"]),
    ("LogWarning", ["bytes"]),
    ("GetConfiguration", []),
    ("GetConfigurationPath", []),
    ("GetGlobalProperty", ["int", "str"]),
    ("SetGlobalProperty", ["int", "str"]),
    ("SetGlobalProperty", ["int", "bytes"]),
    ("RestApiGet", ["str"]),
    ("RestApiPost", ["str", "bytes"]),
    ("RestApiPost", ["str", "str"]),
    ("RestApiDelete", ["str"]),
    ("RestApiPut", ["str", "bytes"]),
    ("SetMetricsValue", ["str", "float", "MetricsType"]),
    ("SetMetricsValue", ["str", "float"]),
    ("BufferCompression", ["bytes", "CompressionType", "int"]),
    ("ExtendOrthancExplorer", ["str"]),
]

#: Callables handed to Orthanc, kept alive: plugins 4.3+ drop theirs at
#: finalization without the interpreter lock (see orthanc_dpp.orthanc.adapter).
_REGISTERED: list[object] = []

#: A global property number of our own for the probes (plugins use >= 1024).
PROBE_PROPERTY = 4999


def _value(kind: str, orthanc: object) -> object:
    if kind == "MetricsType":
        return orthanc.MetricsType.DEFAULT  # type: ignore[attr-defined]
    if kind == "CompressionType":
        return orthanc.CompressionType.ZLIB  # type: ignore[attr-defined]
    return {
        "int": 400,
        "float": 1.5,
        "str": "dpp-probe",
        "bytes": b'{"probe": true}',
    }[kind]


def _arguments(target: str, kinds: list[str], orthanc: object) -> list[object]:
    args = [_value(kind, orthanc) for kind in kinds]
    # Harmless targets for calls that reach Orthanc's REST API or database.
    if target.startswith("RestApi") and args:
        args[0] = "/tools/find" if target == "RestApiPost" else "/instances/dpp-probe-absent"
        if target == "RestApiGet":
            args[0] = "/system"
        if target == "RestApiPost" and len(args) > 1:
            body = '{"Level": "Instance", "Query": {}, "Limit": 1}'
            args[1] = body.encode() if kinds[1] == "bytes" else body
    if target.endswith("GlobalProperty") and args:
        args[0] = PROBE_PROPERTY
    if target == "BufferCompression" and len(args) > 2:
        args[2] = 0  # "uncompress": false (a byte-sized flag)
    if target == "SetMetricsValue" and args:
        args[0] = "dpp_api_probe"
    if target == "ExtendOrthancExplorer" and args:
        args[0] = "/* dpp-probe */"  # Orthanc Explorer runs it: a comment does nothing
    return args


def _try(function: object, args: list[object]) -> str:
    try:
        function(*args)  # type: ignore[operator]
    except TypeError as exc:
        return f"refused: {exc}"
    except Exception as exc:  # understood, then failed for another reason
        return f"accepted ({type(exc).__name__})"
    return "accepted"


# -- inside Orthanc ---------------------------------------------------------------


def _surface(orthanc: object) -> dict[str, object]:
    """Every public name of the module with its kind, methods and enum values."""
    surface: dict[str, object] = {}
    for name in sorted(dir(orthanc)):
        if name.startswith("_"):
            continue
        item = getattr(orthanc, name)
        if isinstance(item, type):
            if issubclass(item, BaseException):
                surface[name] = {"kind": "exception"}
                continue
            members = {m: getattr(item, m) for m in dir(item) if not m.startswith("_")}
            values = {m: v for m, v in members.items() if m.isupper() and not callable(v)}
            if values and len(values) == len(members):
                surface[name] = {
                    "kind": "enum",
                    "values": {m: int(v) for m, v in values.items()},
                    "value_type": type(next(iter(values.values()))).__name__,
                }
            else:
                surface[name] = {"kind": "class", "methods": sorted(members)}
        elif callable(item):
            surface[name] = {"kind": "function", "doc": (item.__doc__ or "").strip()[:500]}
        else:
            surface[name] = {"kind": type(item).__name__}
    return surface


def _inside_orthanc(orthanc: object) -> None:
    results: dict[str, str] = {}
    record: dict[str, object] = {"surface": _surface(orthanc), "probes": results}

    def key(target: str, kinds: list[str]) -> str:
        return f"{target}({', '.join(kinds)})"

    def probe_route(output: object, uri: str, **request: object) -> None:
        number = int(request["groups"][0])  # type: ignore[index]
        target, kinds = PROBES[number]
        if target.startswith("RestOutput."):
            method = getattr(output, target.split(".", 1)[1])
            results[key(target, kinds)] = _try(method, _arguments(target, kinds, orthanc))
        else:
            function = getattr(orthanc, target, None)
            results[key(target, kinds)] = (
                "absent" if function is None else _try(function, _arguments(target, kinds, orthanc))
            )
        with contextlib.suppress(Exception):  # make sure the request gets an answer
            output.AnswerBuffer(b"{}", "application/json")  # type: ignore[attr-defined]

    def record_route(output: object, uri: str, **request: object) -> None:
        try:
            record["system"] = json.loads(orthanc.RestApiGet("/system"))  # type: ignore[attr-defined]
            record["plugin"] = json.loads(orthanc.RestApiGet("/plugins/python"))  # type: ignore[attr-defined]
        except Exception:
            record["error"] = traceback.format_exc()
        record["python"] = sys.version.split()[0]
        output.AnswerBuffer(json.dumps(record).encode(), "application/json")  # type: ignore[attr-defined]

    _REGISTERED.extend([probe_route, record_route])
    orthanc.RegisterRestCallback("/api-record/probe/([0-9]+)", probe_route)  # type: ignore[attr-defined]
    orthanc.RegisterRestCallback("/api-record/result", record_route)  # type: ignore[attr-defined]


# -- the driver ---------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drive(out: str | None) -> int:
    import subprocess
    import urllib.request

    folder = tempfile.mkdtemp(prefix="orthanc-api-")
    port = _free_port()
    config = {
        "HttpPort": port,
        "DicomPort": _free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": f"{folder}/db",
        "IndexDirectory": f"{folder}/db",
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
        "PythonScript": os.path.abspath(__file__),
    }
    with open(f"{folder}/orthanc.json", "w") as handle:
        json.dump(config, handle)
    log = open(f"{folder}/orthanc.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["/usr/sbin/Orthanc", f"{folder}/orthanc.json"], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> bytes:
        with urllib.request.urlopen(base + path, timeout=30) as answer:
            return answer.read()

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get("/system")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"Orthanc did not start; see {folder}/orthanc.log") from None
                time.sleep(0.2)
        for number in range(len(PROBES)):
            # An accepted SendHttpStatus answers an error status.
            with contextlib.suppress(OSError):
                get(f"/api-record/probe/{number}")
        record = json.loads(get("/api-record/result"))
    finally:
        process.terminate()
        code = process.wait(60)
        log.close()
    record["exit_code_on_stop"] = code
    version = record["plugin"]["Version"]
    path = out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "..",
        "tests",
        "data",
        f"orthanc_python_{version}_api.json",
    )
    with open(path, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(
        f"Orthanc {record['system']['Version']}, Python plugin {version}, "
        f"Python {record['python']}: {len(record['surface'])} names, "
        f"{len(record['probes'])} probes -> {os.path.normpath(path)}"
    )
    return 0


try:
    import orthanc as _orthanc  # only inside Orthanc
except ImportError:
    _orthanc = None

if _orthanc is not None:
    _inside_orthanc(_orthanc)
elif __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(_drive(arguments[1] if arguments[:1] == ["--out"] else None))
