"""Entry script of the Orthanc DPP plugin: point Orthanc's ``PythonScript`` here.

It only makes the plugin's package and its dependencies importable, then
hands over to ``orthanc_dpp.orthanc.adapter``. Any failure is logged and swallowed:
an exception escaping this script stops Orthanc altogether.
"""

import glob
import json
import os
import sys
import traceback

import orthanc

HERE = os.path.dirname(os.path.abspath(__file__))


def _python_path() -> list[str]:
    """Directories to put on ``sys.path``, first match wins.

    ``DefinedProcedureProtocol.PythonPath`` from the configuration (relative
    entries are taken from the configuration file's folder), then this
    checkout's ``.venv`` made by ``make run``.
    """
    configuration = json.loads(orthanc.GetConfiguration())
    section = configuration.get("DefinedProcedureProtocol", {})
    configured = section.get("PythonPath", []) if isinstance(section, dict) else []
    if isinstance(configured, str):
        configured = [configured]
    base = os.path.abspath(orthanc.GetConfigurationPath() or ".")
    if not os.path.isdir(base):
        base = os.path.dirname(base)
    paths = [os.path.join(base, p) for p in configured if isinstance(p, str)]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths += glob.glob(os.path.join(HERE, "..", ".venv", "lib", version, "site-packages"))
    return [os.path.normpath(p) for p in paths]


def _load() -> None:
    for path in reversed([HERE, *_python_path()]):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
    from orthanc_dpp.orthanc import adapter

    adapter.install(orthanc)


try:
    _load()
except Exception:
    orthanc.LogError(
        "DPP: plugin not loaded, Orthanc continues without it:\n" + traceback.format_exc()
    )
