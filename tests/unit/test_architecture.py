"""The layering of docs/architecture.md, and the citations of docs/, hold in the code.

The module table of docs/architecture.md is parsed here, so the document and
the imports cannot drift apart: a new import, a new module or a changed
layer fails until the table says so. Imports are read with ``ast`` from
every ``import`` statement of a file, including those inside functions.
Rows for modules not in this checkout are allowed (a module being added on
another branch); a module without a row is not.

Citations such as "docs/design.md, fact 7" in code, tests, tools and
documents must name an existing file and an existing numbered fact, so that
a clone holds everything its comments cite.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugin"
PACKAGE = PLUGIN / "orthanc_dpp"
DOCS = REPO / "docs"
ARCHITECTURE = DOCS / "architecture.md"

#: Modules allowed to import Orthanc's ``orthanc`` module.
ORTHANC_USERS = {"dpp_plugin.py", "orthanc_dpp/adapter.py"}

#: Where citations of docs/ are looked for (relative to the repository).
CITING = ("plugin", "tests", "bench", "docker", "tools", "docs", "README.md", "Makefile")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".json", ".yaml", ".yml", ".txt", ".toml", ".cfg"}
TEXT_NAMES = {"Dockerfile", "Makefile"}
SKIPPED_DIRECTORIES = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "results",  # bench/results: git-ignored measurements
}
#: Names that belong to material outside the repository; spelled in pieces so
#: that this file does not contain them itself.
FOREIGN = ("../" + "shared", "DESIGN" + ".md", "DPP-REFERENCE" + ".md")

#: Documents whose numbered facts ("1. **...**") may be cited by number.
FACT_DOCUMENTS = {"design.md"}


# -- the code -------------------------------------------------------------------------


def module_files() -> dict[str, Path]:
    """Every module of the plugin, by its path relative to plugin/."""
    files = {"dpp_plugin.py": PLUGIN / "dpp_plugin.py"}
    for path in sorted(PACKAGE.glob("*.py")):
        files[f"orthanc_dpp/{path.name}"] = path
    return files


def module_name(key: str) -> str:
    """'orthanc_dpp/find.py' -> 'find', as the table's Imports column names modules."""
    return Path(key).stem


@dataclass(frozen=True)
class Imports:
    project: frozenset[str]  # module names, '__init__' for the package itself
    uses_orthanc: bool  # imports the orthanc module, or handles it by that name


def read_imports(path: Path) -> Imports:
    tree = ast.parse(path.read_text(), filename=str(path))
    project: set[str] = set()
    uses_orthanc = False

    def project_module(dotted: str) -> str | None:
        parts = dotted.split(".")
        if parts[0] != "orthanc_dpp":
            return None
        return parts[1] if len(parts) > 1 else "__init__"

    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.arg):
            uses_orthanc |= (node.id if isinstance(node, ast.Name) else node.arg) == "orthanc"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                uses_orthanc |= alias.name.split(".")[0] == "orthanc"
                name = project_module(alias.name)
                if name:
                    project.add(name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only possible inside the package
                base = "orthanc_dpp" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            uses_orthanc |= base.split(".")[0] == "orthanc"
            name = project_module(base)
            if name is None:
                continue
            if name != "__init__":
                project.add(name)
                continue
            for alias in node.names:  # from orthanc_dpp import x: a module or a name
                is_module = (PACKAGE / f"{alias.name}.py").exists()
                project.add(alias.name if is_module else "__init__")
    return Imports(frozenset(project), uses_orthanc)


@pytest.fixture(scope="module")
def imports() -> dict[str, Imports]:
    return {key: read_imports(path) for key, path in module_files().items()}


# -- the document ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    layer: int
    module: str  # relative to plugin/
    imports: frozenset[str]


_CODE = re.compile(r"`([^`]+)`")


def table_rows(text: str) -> dict[str, Row]:
    """The rows of the table under '## Modules' (Layer | Module | Owns | Imports)."""
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, Row] = {}
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Layer", "Module", "Owns", "Imports"], header
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"a row of docs/architecture.md has {len(cells)} cells: {line}"
        layer, module, _, listed = cells
        names = _CODE.findall(module)
        assert len(names) == 1, f"Module cell must name one file in backquotes: {module}"
        if listed == "none":
            documented: set[str] = set()
        else:
            documented = set(_CODE.findall(listed))
            rebuilt = ", ".join(f"`{name}`" for name in sorted(documented))
            assert listed == rebuilt, (
                f"Imports of {names[0]}: write them sorted, comma-separated, in backquotes "
                f"(or 'none'): {rebuilt}"
            )
        assert names[0] not in rows, f"{names[0]} has two rows"
        rows[names[0]] = Row(int(layer), names[0], frozenset(documented))
    return rows


@pytest.fixture(scope="module")
def rows() -> dict[str, Row]:
    return table_rows(ARCHITECTURE.read_text())


# -- layering ---------------------------------------------------------------------------


def test_only_the_adapter_and_the_entry_script_import_orthanc(
    imports: dict[str, Imports],
) -> None:
    users = {key for key, found in imports.items() if found.uses_orthanc}
    assert users == ORTHANC_USERS, f"only adapter.py may talk to Orthanc: {users - ORTHANC_USERS}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycles(imports: dict[str, Imports]) -> None:
    graph = {module_name(key): set(found.project) for key, found in imports.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_row_in_the_architecture(rows: dict[str, Row]) -> None:
    missing = sorted(set(module_files()) - set(rows))
    assert not missing, f"docs/architecture.md, Modules: no row for {missing}"


def test_imports_are_the_documented_ones(imports: dict[str, Imports], rows: dict[str, Row]) -> None:
    existing = {module_name(key) for key in module_files()}
    wrong = []
    for key, found in imports.items():
        if key not in rows:
            continue  # reported by test_every_module_has_a_row_in_the_architecture
        documented = rows[key].imports & existing  # rows may name modules of other branches
        if found.project != documented:
            wrong.append(
                f"{key}: imports {sorted(found.project)}, docs/architecture.md lists "
                f"{sorted(documented)}"
            )
    assert not wrong, "\n".join(wrong)


def test_imports_go_to_the_same_layer_or_below(rows: dict[str, Row]) -> None:
    layer = {module_name(row.module): row.layer for row in rows.values()}
    upward = [
        f"{row.module} (layer {row.layer}) imports {target} (layer {layer[target]})"
        for row in rows.values()
        for target in sorted(row.imports)
        if target in layer and layer[target] < row.layer
    ]
    unknown = [
        f"{row.module} imports {target}, which has no row"
        for row in rows.values()
        for target in sorted(row.imports)
        if target not in layer
    ]
    assert not upward + unknown, "\n".join(upward + unknown)


def test_the_table_parser_reads_the_layers_and_imports() -> None:
    text = (
        "# T\n\n## Modules\n\n| Layer | Module | Owns | Imports |\n|---|---|---|---|\n"
        "| 2 | `orthanc_dpp/a.py` | A thing. | `b`, `c` |\n"
        "| 5 | `orthanc_dpp/b.py` | B. | none |\n\n## Next\n| 1 | `x.py` | - | none |\n"
    )
    assert table_rows(text) == {
        "orthanc_dpp/a.py": Row(2, "orthanc_dpp/a.py", frozenset({"b", "c"})),
        "orthanc_dpp/b.py": Row(5, "orthanc_dpp/b.py", frozenset()),
    }
    with pytest.raises(AssertionError, match="sorted"):
        table_rows(text.replace("`b`, `c`", "`c`, `b`"))


def test_read_imports_sees_every_form(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    assert not read_imports(PACKAGE / "find.py").uses_orthanc
    handed = tmp_path / "handed.py"
    handed.write_text("def install(orthanc):\n    return 1\n")
    assert read_imports(handed).uses_orthanc
    source.write_text(
        "import orthanc\n"
        "from orthanc_dpp import __version__, status\n"
        "from orthanc_dpp.keys import KeyRow\n"
        "import orthanc_dpp.sop\n"
        "def later():\n"
        "    from .match import compile_query\n"
        "    from . import record\n"
    )
    found = read_imports(source)
    assert found.uses_orthanc
    assert found.project == {"__init__", "status", "keys", "sop", "match", "record"}


# -- citations ----------------------------------------------------------------------------


def text_files() -> list[Path]:
    files: list[Path] = []
    for name in CITING:
        root = REPO / name
        if root.is_file():
            files.append(root)
            continue
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(REPO).parts
            if any(part in SKIPPED_DIRECTORIES for part in relative):
                continue
            if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
                files.append(path)
    return files


def facts(document: Path) -> set[int]:
    """Numbers of the facts of a document: list items of the form '12. **...'."""
    return {int(n) for n in re.findall(r"^(\d+)\. \*\*", document.read_text(), re.MULTILINE)}


def headings(document: Path) -> set[str]:
    return set(re.findall(r"^#+ (.+?)\s*$", document.read_text(), re.MULTILINE))


# "docs/design.md", optionally followed by ", fact 7" or ', "A heading"'; a line
# break with a comment marker may sit between the parts.
_CITATION = re.compile(
    r"(?<![\w/.-])docs/(?P<file>[A-Za-z0-9_.-]*[A-Za-z0-9_-])"
    r"(?:,\s*(?:#\s*)?(?:fact\s+(?P<fact>\d+)|\"(?P<section>[^\"\n]+)\"))?"
)
_BARE_FACT = re.compile(r"\bfacts?\s+\d+")


def citation_problems(text: str) -> list[str]:
    problems = []
    cited_spans: list[tuple[int, int]] = []
    for match in _CITATION.finditer(text):
        cited_spans.append(match.span())
        document = DOCS / match["file"]
        where = match.group(0)
        if not document.is_file():
            problems.append(f"{where}: no such file in docs/")
            continue
        if match["fact"]:
            if match["file"] not in FACT_DOCUMENTS:
                problems.append(f"{where}: only {sorted(FACT_DOCUMENTS)} number facts")
            elif int(match["fact"]) not in facts(document):
                problems.append(f"{where}: docs/{match['file']} has no fact {match['fact']}")
        titles = headings(document)
        if match["section"] and not any(t.startswith(match["section"]) for t in titles):
            problems.append(f"{where}: docs/{match['file']} has no such heading")
    for match in _BARE_FACT.finditer(text):
        if not any(start <= match.start() < end for start, end in cited_spans):
            problems.append(
                f"'{match.group(0)}' without the document: write 'docs/design.md, fact N'"
            )
    for name in FOREIGN:
        if name in text:
            problems.append(f"mentions {name}, which is not part of the repository")
    return problems


def test_citation_checker_catches_bad_citations() -> None:
    assert citation_problems("see docs/design.md, fact 3 and docs/orthanc-versions.md") == []
    assert citation_problems('docs/design.md, "The protocol index"') == []
    assert citation_problems("(docs/design.md,\n    # fact 14)") == []
    assert citation_problems("docs/design.md, fact 999")[0].endswith("has no fact 999")
    assert citation_problems("docs/nothing.md")[0].endswith("no such file in docs/")
    assert citation_problems('docs/design.md, "No such part"')[0].endswith("no such heading")
    assert "without the document" in citation_problems("as measured (fact 3)")[0]
    assert citation_problems("see " + FOREIGN[1])[0].startswith("mentions")


def test_every_citation_points_into_the_repository() -> None:
    files = text_files()
    assert PACKAGE / "feed.py" in files and DOCS / "design.md" in files
    problems = [
        f"{path.relative_to(REPO)}: {problem}"
        for path in files
        if path != Path(__file__).resolve()
        for problem in citation_problems(path.read_text(errors="replace"))
    ]
    assert not problems, "\n".join(problems)


def test_the_design_facts_are_numbered_without_gaps() -> None:
    numbers = sorted(facts(DOCS / "design.md"))
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, numbers
