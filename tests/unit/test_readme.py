"""README.md stays an entry page, and no link of the documentation leads nowhere.

README holds what a newcomer needs first and links the rest, in ``docs/``; it
is kept short so that it is read. Sections move between files, so every
relative link (and every ``#anchor`` into a Markdown file) is checked to
resolve, as GitHub renders them.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.doc_examples import DOCS, README, REPO, headings

MAXIMUM_README_LINES = 600

#: ``[text](target)`` and ``![alt](target)``; the target ends at a space or ")".
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, title, _ in headings(document.read_text()):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """The link targets of Markdown ``text``, outside code blocks and inline code."""
    found = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            found += _LINK.findall(_INLINE_CODE.sub("", line))
    return found


def broken_links(document: Path) -> list[str]:
    """The relative links of ``document`` to no file, or to no heading of a Markdown file."""
    problems = []
    for target in links(document.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            problems.append(f"{document.name}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{document.name}: {target}: no such heading in {linked.name}")
    return problems


def test_readme_is_at_most_600_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAXIMUM_README_LINES, f"README.md has {lines} lines: move a section to docs/"


def test_readme_links_every_document_in_docs() -> None:
    targets = {(REPO / t.partition("#")[0]).resolve() for t in links(README.read_text())}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in targets]
    assert not missing, f"README.md does not link docs/{missing}"


def test_every_relative_link_resolves() -> None:
    problems = [problem for document in documents() for problem in broken_links(document)]
    assert not problems, "\n".join(problems)


def test_the_link_checker_finds_missing_files_and_headings(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    other = tmp_path / "notes" / "other.md"
    other.write_text("# Other\n\n## GET /dpp/jobs/{id}\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Here, and `there`\n\n"
        "[ok](notes/other.md) [ok](notes/other.md#get-dppjobsid) [ok](#here-and-there)\n"
        "[ok](notes/other.md#same-1) ![ok](notes/other.md) [ok](https://example.org/none)\n"
        "`[ignored](nowhere.md)`\n\n```sh\n# not a heading\n[ignored](nowhere.md)\n```\n"
    )
    assert broken_links(page) == []
    page.write_text(
        "[a](notes/none.md) [b](notes/other.md#same-2) [c](#nowhere)\n[d](notes/other.md#other-1)\n"
    )
    assert broken_links(page) == [
        "page.md: notes/none.md: no such file",
        "page.md: notes/other.md#same-2: no such heading in other.md",
        "page.md: #nowhere: no such heading in page.md",
        "page.md: notes/other.md#other-1: no such heading in other.md",
    ]


def test_slugs_are_githubs() -> None:
    assert slug("GET /dpp/protocols/{uid}/file") == "get-dppprotocolsuidfile"
    assert slug("Who may do what") == "who-may-do-what"
    assert slug("GET /dpp/jobs, GET /dpp/jobs/{id}, POST /dpp/jobs/{id}/cancel") == (
        "get-dppjobs-get-dppjobsid-post-dppjobsidcancel"
    )
    assert slug("2.3.1 Verification (C-ECHO)") == "231-verification-c-echo"
