"""The layering of docs/architecture.md, and the citations of docs/, hold in the code.

The module table of docs/architecture.md is parsed here, so the document and
the imports cannot drift apart: a new import, a new module or a changed
layer fails until the table says so. Imports are read with ``ast`` from
every ``import`` statement of a file, including those inside functions.
Rows for modules not in this checkout are allowed (a module being added on
another branch); a module without a row is not.

Modules are found with ``rglob`` and named with dots below the package
(``model.record``), so subpackages need no change here. Two ratchets hold
lists of today's offenders that may only shrink: modules over 600 lines, and
module-level mutable state (``global``, containers not annotated ``Final``,
locks, function caches). A new offender fails, and so does a listed one that
no longer offends.

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

#: Modules that import Orthanc's ``orthanc`` module (each must, and no other may)...
ORTHANC_USERS = {"dpp_plugin.py", "orthanc_dpp/orthanc/adapter.py"}
#: ...besides the modules of this subpackage, the Orthanc glue once the package has folders.
ORTHANC_PACKAGE = "orthanc_dpp/orthanc/"

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
    """Every module of the plugin, subpackages included, by its path relative to plugin/."""
    files = {"dpp_plugin.py": PLUGIN / "dpp_plugin.py"}
    for path in sorted(PACKAGE.rglob("*.py")):
        files[path.relative_to(PLUGIN).as_posix()] = path
    return files


def module_name(key: str) -> str:
    """The name the table's Imports column gives a module, dotted below the package.

    'orthanc_dpp/config.py' -> 'config', 'orthanc_dpp/model/record.py' -> 'model.record',
    'orthanc_dpp/model/__init__.py' -> 'model'; the package itself is '__init__'.
    """
    parts = list(Path(key).with_suffix("").parts)
    if parts[0] != "orthanc_dpp":
        return ".".join(parts)
    parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def is_module(dotted: str, package: Path = PACKAGE) -> bool:
    """Whether 'model.record' names a module or a subpackage of orthanc_dpp."""
    path = package.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@dataclass(frozen=True)
class Imports:
    project: frozenset[str]  # module names, '__init__' for the package itself
    uses_orthanc: bool  # imports the orthanc module, or handles it by that name


def read_imports(path: Path, package: Path = PACKAGE) -> Imports:
    tree = ast.parse(path.read_text(), filename=str(path))
    project: set[str] = set()
    uses_orthanc = False
    # The package a relative import starts from: the file's own, or the top one for
    # a file outside the package (the samples of the tests below).
    if path.is_relative_to(package):
        here = ["orthanc_dpp", *path.relative_to(package).parent.parts]
    else:
        here = ["orthanc_dpp"]

    def project_module(dotted: str) -> str | None:
        """'orthanc_dpp.model.record.Record' -> 'model.record': the longest module prefix."""
        parts = dotted.split(".")
        if parts[0] != "orthanc_dpp":
            return None
        for end in range(len(parts), 1, -1):
            if is_module(".".join(parts[1:end]), package):
                return ".".join(parts[1:end])
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
                start = here[: len(here) - node.level + 1]
                base = ".".join([*start, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            uses_orthanc |= base.split(".")[0] == "orthanc"
            name = project_module(base)
            if name is None:
                continue
            if base != "orthanc_dpp" and name != base.removeprefix("orthanc_dpp."):
                project.add(name)  # from a module (or below it): that module
                continue
            for alias in node.names:  # from a package import x: a module or a name
                inner = f"{name}.{alias.name}" if name != "__init__" else alias.name
                project.add(inner if is_module(inner, package) else name)
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


def may_use_orthanc(key: str) -> bool:
    return key in ORTHANC_USERS or key.startswith(ORTHANC_PACKAGE)


def test_only_the_adapter_and_the_entry_script_import_orthanc(
    imports: dict[str, Imports],
) -> None:
    users = {key for key, found in imports.items() if found.uses_orthanc}
    intruders = {key for key in users if not may_use_orthanc(key)}
    assert not intruders, f"only the Orthanc glue may talk to Orthanc: {intruders}"
    # the glue named above still does (the detection works, and the list is current)
    assert ORTHANC_USERS & set(imports) <= users, ORTHANC_USERS - users
    assert "dpp_plugin.py" in users


def test_orthanc_users_are_recognised_by_name_or_folder() -> None:
    assert may_use_orthanc("orthanc_dpp/orthanc/adapter.py") and may_use_orthanc("dpp_plugin.py")
    assert may_use_orthanc("orthanc_dpp/orthanc/entry.py")
    assert not may_use_orthanc("orthanc_dpp/rest/orthanc.py")
    assert not may_use_orthanc("orthanc_dpp/dicom/scp/listener.py")


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


# -- packages -------------------------------------------------------------------------------


def unit_of(name: str) -> str:
    """The row of the Packages table a module belongs to: 'dicom.scp.get' -> 'dicom.scp'.

    A module of a subpackage belongs to it ('model.record' -> 'model'); one
    of dicom's subpackages to that subpackage; a top-level module is its own
    row ('config').
    """
    parts = name.split(".")
    if parts[0] == "dicom" and len(parts) > 1 and parts[1] in ("scp", "scu"):
        return ".".join(parts[:2])
    return parts[0]


def package_rows(text: str) -> dict[str, frozenset[str]]:
    """The table under '## Packages' (Package | Owns | May import), by unit name."""
    section = text.split("\n## Packages\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Package", "Owns", "May import"], header
    rows: dict[str, frozenset[str]] = {}
    for line in lines[2:]:
        package, _, allowed = (cell.strip() for cell in line.strip().strip("|").split("|"))
        (name,) = _CODE.findall(package)
        unit = name.removesuffix("/").removesuffix(".py").replace("/", ".")
        rows[unit] = frozenset() if allowed == "none" else frozenset(_CODE.findall(allowed))
    return rows


@pytest.fixture(scope="module")
def packages() -> dict[str, frozenset[str]]:
    return package_rows(ARCHITECTURE.read_text())


def crossings(imports: dict[str, Imports]) -> dict[tuple[str, str], set[str]]:
    """Imports from one unit to another (the package's own __init__ aside), with examples."""
    found: dict[tuple[str, str], set[str]] = {}
    for key, seen in imports.items():
        name = module_name(key)
        for target in seen.project - {"__init__"}:
            if unit_of(target) != unit_of(name):
                found.setdefault((unit_of(name), unit_of(target)), set()).add(f"{name} -> {target}")
    return found


def test_every_package_and_top_module_has_a_row(packages: dict[str, frozenset[str]]) -> None:
    units = {unit_of(module_name(key)) for key in module_files()} - {"__init__", "dpp_plugin"}
    assert units == set(packages), f"Packages table: {sorted(units ^ set(packages))}"


def test_imports_between_packages_are_allowed_ones(
    imports: dict[str, Imports], packages: dict[str, frozenset[str]]
) -> None:
    wrong = [
        f"{sorted(examples)[0]}: {source} may not import {target}"
        for (source, target), examples in sorted(crossings(imports).items())
        if source != "dpp_plugin" and target not in packages.get(source, frozenset())
    ]
    assert not wrong, "docs/architecture.md, Packages:\n" + "\n".join(wrong)
    assert crossings(imports)[("dpp_plugin", "orthanc")] == {"dpp_plugin -> orthanc.adapter"}


def test_the_packages_form_no_cycle(packages: dict[str, frozenset[str]]) -> None:
    cycle = find_cycle({unit: set(allowed) for unit, allowed in packages.items()})
    assert cycle is None, "the Packages table allows a cycle: " + " -> ".join(cycle or [])


def test_each_package_docstring_says_what_the_table_says(
    packages: dict[str, frozenset[str]],
) -> None:
    """Every subpackage's __init__ owns something and may import the table's packages."""
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent == PACKAGE:
            continue
        unit = ".".join(init.parent.relative_to(PACKAGE).parts)
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Owns:" in doc, f"{init.relative_to(REPO)}: no 'Owns:' in its docstring"
        said = (
            doc.split("May import:", 1)[1].split(";")[0].split(".\n")[0]
            if ("May import:" in doc)
            else ""
        )
        named = set(re.findall(r"[a-z][a-z.]*[a-z]", said)) - {"nothing", "else", "of", "the"}
        named -= {"package"}
        assert named == set(packages[unit]), (
            f"{init.relative_to(REPO)} says it may import {sorted(named)}, "
            f"docs/architecture.md says {sorted(packages[unit])}"
        )


def test_unit_of_names_the_row_of_a_module() -> None:
    assert unit_of("dicom.scp.get") == "dicom.scp"
    assert unit_of("dicom.access") == "dicom"
    assert unit_of("model.record") == "model"
    assert unit_of("config") == "config"
    text = (
        "# T\n\n## Packages\n\n| Package | Owns | May import |\n|---|---|---|\n"
        "| `dicom/scp/` | SCP. | `dicom`, `model` |\n| `model/` | M. | none |\n\n## Next\n"
    )
    assert package_rows(text) == {"dicom.scp": {"dicom", "model"}, "model": frozenset()}
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


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
    assert not read_imports(PACKAGE / "model" / "query.py").uses_orthanc
    handed = tmp_path / "handed.py"
    handed.write_text("def install(orthanc):\n    return 1\n")
    assert read_imports(handed).uses_orthanc
    source.write_text(
        "import orthanc\n"
        "from orthanc_dpp import __version__, config\n"
        "from orthanc_dpp.model.key_table import KeyRow\n"
        "import orthanc_dpp.model.sop\n"
        "def later():\n"
        "    from .model.query import compile_query\n"
        "    from .model import record\n"
    )
    found = read_imports(source)
    assert found.uses_orthanc
    assert found.project == {
        "__init__",
        "config",
        "model.key_table",
        "model.sop",
        "model.query",
        "model.record",
    }


def test_read_imports_names_modules_of_subpackages_by_dotted_names(tmp_path: Path) -> None:
    package = tmp_path / "orthanc_dpp"
    for name in ("__init__", "sop", "model/__init__", "model/record", "dicom/__init__"):
        (package / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (package / f"{name}.py").write_text("")
    (package / "dicom" / "scp").mkdir()
    (package / "dicom" / "scp" / "__init__.py").write_text("")
    source = package / "dicom" / "scp" / "find.py"
    source.write_text(
        "from orthanc_dpp.model.record import Record\n"
        "from orthanc_dpp.model import Thing\n"
        "from ...model import record\n"
        "from ... import sop, __version__\n"
        "from .. import scp\n"
        "import orthanc_dpp.model.record\n"
    )
    assert read_imports(source, package).project == {
        "model.record",
        "model",
        "sop",
        "__init__",
        "dicom.scp",
    }
    assert module_name("orthanc_dpp/model/record.py") == "model.record"
    assert module_name("orthanc_dpp/model/__init__.py") == "model"
    assert module_name("orthanc_dpp/__init__.py") == "__init__"
    assert module_name("orthanc_dpp/dicom/scp/find_matches.py") == "dicom.scp.find_matches"
    assert module_name("dpp_plugin.py") == "dpp_plugin"


# -- ratchets: lists of today's offenders that may only shrink ----------------------------


def ratchet_problems(found: set[str], allowed: set[str], what: str) -> list[str]:
    """New offenders, and allow-list entries that no longer offend (remove them)."""
    new = [f"{name}: {what}" for name in sorted(found - allowed)]
    stale = [
        f"{name} no longer offends: take it off the allow-list" for name in sorted(allowed - found)
    ]
    return new + stale


def test_a_ratchet_fails_on_new_offenders_and_on_stale_entries() -> None:
    assert ratchet_problems({"a", "b"}, {"a", "b"}, "bad") == []
    assert ratchet_problems({"a", "c"}, {"a"}, "bad") == ["c: bad"]
    assert ratchet_problems({"a"}, {"a", "b"}, "bad") == [
        "b no longer offends: take it off the allow-list"
    ]


#: Where no module may grow past MAXIMUM_LINES (relative to the repository).
SOURCE_ROOTS = ("plugin", "dpp_tools", "bench", "tools", "docker")
#: The sample generator: PS3.4 protocols written out as data.
SOURCE_EXCEPTIONS = {"dpp_tools/samples.py"}
MAXIMUM_LINES = 600
#: Modules allowed over MAXIMUM_LINES: none any more (the ratchet still fails
#: on an entry that no longer offends, should one ever be added for a while).
LONG_MODULES: frozenset[str] = frozenset()


def source_modules() -> list[Path]:
    """The modules held to MAXIMUM_LINES: the shipped and tool code, and the tests' helpers."""
    files = [path for root in SOURCE_ROOTS for path in sorted((REPO / root).rglob("*.py"))]
    helpers = sorted((REPO / "tests").rglob("*.py"))
    files += [path for path in helpers if not path.name.startswith("test_")]
    return [
        path
        for path in files
        if path.relative_to(REPO).as_posix() not in SOURCE_EXCEPTIONS
        and not SKIPPED_DIRECTORIES.intersection(path.relative_to(REPO).parts)
    ]


def long_modules(paths: list[Path]) -> set[str]:
    return {
        path.relative_to(REPO).as_posix()
        for path in paths
        if len(path.read_text().splitlines()) > MAXIMUM_LINES
    }


def test_no_source_module_over_600_lines() -> None:
    modules = source_modules()
    assert REPO / "tests" / "peers.py" in modules and REPO / "bench" / "dimse.py" in modules
    problems = ratchet_problems(long_modules(modules), LONG_MODULES, f"over {MAXIMUM_LINES} lines")
    assert not problems, "\n".join(problems)


def test_the_line_count_sees_long_modules(tmp_path: Path) -> None:
    assert long_modules([REPO / "dpp_tools" / "samples.py"]) == {"dpp_tools/samples.py"}
    assert long_modules([REPO / "dpp_tools" / "__init__.py"]) == set()
    assert REPO / "dpp_tools" / "samples.py" not in source_modules()


#: Calls whose result is state that lives as long as the process.
MUTABLE_FACTORIES = {
    "dict",
    "list",
    "set",
    "OrderedDict",
    "defaultdict",
    "deque",
    "Counter",
    "WeakValueDictionary",
    "WeakKeyDictionary",
    "local",  # threading.local
    "Lock",
    "RLock",
}
#: Decorators that keep a cache in the function.
CACHING_DECORATORS = {"lru_cache", "cache"}
#: Today's module-level state, as 'module.name'; moving each into an object takes it off.
MODULE_STATE = {
    "orthanc.adapter._REGISTERED",  # the callbacks Orthanc holds, kept alive (a documented seam)
    "storage.encoded._dictionary_vr",  # pydicom's dictionary, cached (a documented seam)
    "dicom.pynetdicom_private._route_lock",  # the one process-wide patch (a documented seam)
    "storage.part10._WARNINGS_CAUGHT",  # guards the process-wide warnings state (a seam)
}


def _called_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_final(annotation: ast.expr | None) -> bool:
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    return _called_name(annotation) == "Final" if annotation is not None else False


def _is_mutable(value: ast.expr | None) -> bool:
    mutable = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
    if isinstance(value, mutable):
        return True
    return isinstance(value, ast.Call) and _called_name(value.func) in MUTABLE_FACTORIES


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run at import: the module's, and those of its top-level if/try/with."""
    statements: list[ast.stmt] = []
    for node in body:
        statements.append(node)
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                statements += _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                statements += _top_level(handler.body)
    return statements


def module_state(path: Path) -> set[str]:
    """Names of module-level mutable state: changed through ``global``, a mutable
    container or lock not annotated ``Final``, or a function cache."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    for node in _top_level(tree.body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if _is_mutable(node.value) and not _is_final(node.annotation):
                names.add(node.target.id)
        elif isinstance(node, ast.Assign) and _is_mutable(node.value):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            _called_name(d) in CACHING_DECORATORS for d in node.decorator_list
        ):
            names.add(node.name)
    return names


def test_no_module_level_mutable_state() -> None:
    found = {
        f"{module_name(key)}.{name}"
        for key, path in module_files().items()
        for name in module_state(path)
    }
    problems = ratchet_problems(found, MODULE_STATE, "module-level mutable state")
    assert not problems, "\n".join(problems)


def test_module_state_is_recognised(tmp_path: Path) -> None:
    source = tmp_path / "state.py"
    source.write_text(
        "import functools, threading, weakref\n"
        "from collections import OrderedDict\n"
        "from typing import Final\n"
        "TABLE: Final = {1: 2}\n"
        "NAMES: Final[list[str]] = ['a']\n"
        "FROZEN = frozenset({1})\n"
        "count = 0\n"
        "seen: dict[int, int] = {}\n"
        "order = OrderedDict()\n"
        "if True:\n"
        "    kept = weakref.WeakValueDictionary()\n"
        "here = threading.local()\n"
        "lock = threading.Lock()\n"
        "@functools.lru_cache(maxsize=2)\n"
        "def cached(x):\n"
        "    return x\n"
        "def bump():\n"
        "    global count\n"
        "    count += 1\n"
        "    local = {}\n"
        "    return local\n"
    )
    assert module_state(source) == {"count", "seen", "order", "kept", "here", "lock", "cached"}


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
    assert PACKAGE / "storage" / "feed.py" in files and DOCS / "design.md" in files
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
