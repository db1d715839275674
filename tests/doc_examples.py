"""Reading the documentation the tests hold to the code: sections, tables, curl examples.

README.md, CONFORMANCE.md and ``docs/*.md`` promise things a test checks: every
configuration key and metric has its row, every REST route its ``curl`` example,
answered as shown. The tests find those promises by file and heading, so that
moving a section between files changes one path here and no assertion. The
sample files and UIDs the REST examples name live here too, as both the REST
reference and the remote-archive examples use them.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from dpp_tools.samples import make_non_dpp, make_protocol, to_bytes
from tests.datasets import kvp_constraint

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

#: Where ``make run`` serves Orthanc's REST API (./orthanc.json).
MAKE_RUN_URL = "http://127.0.0.1:8043"

#: The sample files' SOP Instance UIDs, as the examples' answers show them.
CT_UID = "2.25.119546327322774435051676743357352962937"
XA_UID = "2.25.198965325642171815000894312853115304275"
APPROVAL_UID = "2.25.19217924375929687950232765645835280542"
#: ``ct-protocol-next.dcm``: the next version of the CT protocol.
NEXT_UID = "2.25.271828182845904523536028747135266249"

_HEADING = re.compile(r"(#+) (.+?)\s*$")


def headings(text: str) -> list[tuple[int, str, int]]:
    """(level, title, line number) of each Markdown heading, code blocks left out.

    Shell comments in fenced blocks start with "# " too: they are not headings.
    """
    found = []
    fenced = False
    for number, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := _HEADING.fullmatch(line)):
            found.append((len(match.group(1)), match.group(2), number))
    return found


def doc_section(path: Path, title: str, *, nested: bool = True) -> str:
    """The text under the one heading ``title`` of ``path`` (heading line excluded).

    It ends at the next heading of the same level or above, or with
    ``nested=False`` at the next heading of any level (the section's own text
    without its subsections).
    """
    text = path.read_text()
    lines = text.splitlines()
    found = headings(text)
    matches = [(level, number) for level, heading, number in found if heading == title]
    assert len(matches) == 1, f"{path.name} has {len(matches)} headings {title!r}"
    ((level, start),) = matches
    ends = [n for lv, _, n in found if n > start and (lv <= level or not nested)]
    return "\n".join(lines[start + 1 : ends[0] if ends else len(lines)])


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in ``text``: rows of cells, header and rule left out."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if current:
            found.append([row for row in current[2:]])
            current = []
    return found


def docker_documentation() -> str:
    """README's Docker quick start, then docs/docker.md: the Docker text in reading order."""
    return doc_section(README, "Docker") + "\n" + (DOCS / "docker.md").read_text()


def strip_json_comments(text: str) -> str:
    """Orthanc's configuration allows // and /* */ comments; json does not."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'^\s*//.*$|(?<=[,{\[\s])//[^"\n]*$', "", text, flags=re.M)


# -- curl examples ------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A ``sh`` block of one curl command and the answer the prose after it shows."""

    command: str
    status: int
    answer: Any | None  # the JSON the document shows, if any
    no_body: bool  # the document says the answer has no body

    @property
    def args(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def url(self) -> str:
        return next(a for a in self.args if a.startswith(MAKE_RUN_URL))

    @property
    def method(self) -> str:
        args = self.args
        if "-X" in args:
            return args[args.index("-X") + 1]
        sends = {"-F", "--data-binary", "-d", "--data"}
        return "POST" if sends & set(args) else "GET"


def curl_examples(text: str) -> list[Example]:
    """The examples of ``text``, in order.

    Each is a ``sh`` block holding one curl command, followed by "Answer: HTTP
    nnn" and, when it shows one, a ``json`` block with the answer (or part of it).
    """
    fences = list(re.finditer(r"```(\w*)\n(.*?)```", text, re.S))
    found = []
    for number, fence in enumerate(fences):
        if fence.group(1) != "sh":
            continue
        command = fence.group(2).strip()
        assert "\n" not in command and command.startswith("curl "), command
        following = fences[number + 1] if number + 1 < len(fences) else None
        prose = text[fence.end() : following.start() if following else len(text)]
        status = re.search(r"Answer: HTTP (\d{3})", prose)
        assert status, f"no 'Answer: HTTP nnn' after {command}"
        answer = None
        if following is not None and following.group(1) == "json":
            answer = json.loads(following.group(2))
        found.append(Example(command, int(status.group(1)), answer, "no body" in prose))
    return found


def differences(shown: Any, actual: Any, varies: set[str], where: str = "answer") -> list[str]:
    """Where ``actual`` differs from what the document shows.

    The document may leave fields out; of the fields in ``varies`` (machine or
    run dependent) only the presence is checked.
    """
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        found = []
        for key, value in shown.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing")
            elif key not in varies:
                found += differences(value, actual[key], varies, f"{where}.{key}")
        return found
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(actual) != len(shown):
            return [f"{where}: expected {len(shown)} items, got {actual!r}"]
        found = []
        for number, (item, real) in enumerate(zip(shown, actual, strict=True)):
            found += differences(item, real, varies, f"{where}[{number}]")
        return found
    return [] if shown == actual else [f"{where}: README shows {shown!r}, got {actual!r}"]


def write_samples(folder: Path) -> None:
    """The files the REST examples name."""

    def save(ds: pydicom.Dataset, uid: str, name: str) -> None:
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        (folder / name).write_bytes(to_bytes(ds))

    save(make_protocol(1, "CT"), CT_UID, "ct-protocol.dcm")
    changed = make_protocol(1, "CT")
    changed.ProtocolName = f"{changed.ProtocolName} v2"
    save(changed, CT_UID, "ct-protocol-v2.dcm")
    # The next version: its own UID, naming the CT protocol as its
    # predecessor, 10 kV more in its first acquisition element (100 kV).
    following = make_protocol(1, "CT")
    following.PredecessorProtocolSequence[0].ReferencedSOPInstanceUID = CT_UID
    kvp_constraint(following).ConstraintValueSequence[0].SelectorDSValue = "110"
    save(following, NEXT_UID, "ct-protocol-next.dcm")
    save(make_protocol(2, "XA"), XA_UID, "xa-protocol.dcm")
    save(make_protocol(1, "APPROVAL"), APPROVAL_UID, "approval.dcm")
    (folder / "ct-image.dcm").write_bytes(to_bytes(make_non_dpp(1)))
    with (folder / "huge.dcm").open("wb") as huge:
        huge.truncate(64 * 1024 * 1024 + 1)  # "larger than 64 MiB": MaximumUploadSize
