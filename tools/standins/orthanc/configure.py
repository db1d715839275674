"""Configuration of the stand-in Orthanc image, run by its /docker-entrypoint.sh.

Reproduces, from the Orthanc team's documentation of their image, the parts
docker/Dockerfile and docker/compose.yaml rely on:

- every ``/etc/orthanc/*.json``, in name order, merged section by section;
- ``ORTHANC_JSON``: one more JSON object merged over them;
- ``ORTHANC__A__B_C=value``: the key ``A.BC`` (each ``_``-separated word
  capitalised, ``__`` for nesting), the value read as JSON when it parses,
  else as a string;
- ``NAME_SECRET=file`` (``NAME`` one of the above): as if ``NAME`` held the
  content of ``/run/secrets/file`` (trailing newlines dropped);
- ``ORTHANC_PASSWORD``: the password of an HTTP user ``orthanc``;
- a plugin is loaded when its section is configured (Python: ``PythonScript``
  or ``Python``; PostgreSQL: ``PostgreSQL``);
- with authentication and remote access on, no registered user is refused.

Anything wrong ends the start with one line naming the cause, on standard
error, and exit status 1. Standard library only (the image's python3).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

CONFIGURATION_FOLDER = "/etc/orthanc"
SECRETS = Path("/run/secrets")
PLUGINS = Path("/usr/share/orthanc/plugins")
#: The image's own defaults, under everything else.
DEFAULTS: dict[str, Any] = {
    "Name": "Orthanc inside Docker",
    "StorageDirectory": "/var/lib/orthanc/db",
    "RemoteAccessAllowed": True,
    "AuthenticationEnabled": True,
}
#: Plugin file names, loaded when one of the keys is configured.
PLUGIN_SECTIONS = {
    ("PythonScript", "Python"): ["libOrthancPython.so"],
    ("PostgreSQL",): ["libOrthancPostgreSQLIndex.so", "libOrthancPostgreSQLStorage.so"],
}


class Refused(Exception):
    """The configuration cannot start Orthanc; the message says why."""


def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Sections (JSON objects) merge key by key; any other value replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


#: Section names that the capitalisation rule cannot spell: the image's
#: documentation configures the PostgreSQL plugins as ORTHANC__POSTGRESQL__*.
SPELLED = {"POSTGRESQL": "PostgreSQL"}


def key_of(word_group: str) -> str:
    """``DEFINED_PROCEDURE_PROTOCOL`` -> ``DefinedProcedureProtocol``."""
    if word_group in SPELLED:
        return SPELLED[word_group]
    return "".join(word[:1].upper() + word[1:].lower() for word in word_group.split("_"))


def value_of(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_secret(variable: str, name: str) -> str:
    path = SECRETS / name
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise Refused(f"{variable}={name}: cannot read {path}: {exc.strerror}") from exc


def environment_values(env: dict[str, str]) -> dict[str, str]:
    """Our variables, every ``NAME_SECRET`` replaced by ``NAME`` and its secret."""
    ours = {k: v for k, v in env.items() if k.startswith("ORTHANC")}
    values = {k: v for k, v in ours.items() if not k.endswith("_SECRET")}
    for variable, name in ours.items():
        if variable.endswith("_SECRET"):
            values[variable.removesuffix("_SECRET")] = read_secret(variable, name)
    return values


def configuration(env: dict[str, str], folder: str | None = None) -> dict[str, Any]:
    """The merged configuration, plugins included."""
    merged: dict[str, Any] = json.loads(json.dumps(DEFAULTS))
    for path in sorted(glob.glob(os.path.join(folder or CONFIGURATION_FOLDER, "*.json"))):
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Refused(f"{path} is not a readable JSON file: {exc}") from exc
        if not isinstance(loaded, dict):
            raise Refused(f"{path} does not hold a JSON object")
        merge(merged, loaded)
    values = environment_values(env)
    if "ORTHANC_JSON" in values:
        try:
            root = json.loads(values["ORTHANC_JSON"])
        except ValueError as exc:
            raise Refused(f"ORTHANC_JSON is not JSON: {exc}") from exc
        if not isinstance(root, dict):
            raise Refused("ORTHANC_JSON does not hold a JSON object")
        merge(merged, root)
    for variable in sorted(values):
        if not variable.startswith("ORTHANC__"):
            continue
        path = [key_of(part) for part in variable.removeprefix("ORTHANC__").split("__")]
        if not all(path):
            raise Refused(f"{variable}: empty name part")
        nested: dict[str, Any] = {}
        inner = nested
        for key in path[:-1]:
            inner = inner.setdefault(key, {})
        inner[path[-1]] = value_of(values[variable])
        merge(merged, nested)
    if values.get("ORTHANC_PASSWORD"):
        merge(merged, {"RegisteredUsers": {"orthanc": values["ORTHANC_PASSWORD"]}})
    if (
        merged.get("AuthenticationEnabled") is not False
        and merged.get("RemoteAccessAllowed") is not False
        and not merged.get("RegisteredUsers")
    ):
        raise Refused(
            "authentication and remote access are on but no user is registered: "
            "set ORTHANC_PASSWORD or RegisteredUsers"
        )
    plugins = list(merged.get("Plugins") or [])
    for keys, files in PLUGIN_SECTIONS.items():
        if any(key in merged for key in keys):
            plugins += [str(PLUGINS / name) for name in files]
    merged["Plugins"] = plugins
    return merged


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "/tmp/orthanc.json")
    try:
        merged = configuration(dict(os.environ))
    except Refused as exc:
        print(f"docker-entrypoint: not starting Orthanc: {exc}", file=sys.stderr)
        return 1
    target.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    target.chmod(0o600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
