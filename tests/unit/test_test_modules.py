"""No test module imports another test module, and tests/unit mirrors the package.

Shared fixtures live in ``conftest.py`` files and shared helpers in helper
modules (``tests/*.py``): a test module that imports another one also
collects its fixtures and runs its module-level code, and moving or splitting
the imported module breaks the importer. Every ``tests/**/*.py`` is parsed
(never imported), so a module that cannot be imported here is checked too.

The unit tests of a module of ``orthanc_dpp/dicom/scp/`` live in
``tests/unit/dicom/scp/``, and so on for every subpackage; the tests of the
top-level modules and the checks of the repository (documents, layout)
stay in ``tests/unit/`` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"  # where the planted sources of the tests below pretend to be

#: (importing file, imported test module) pairs still allowed: none. Kept so that the
#: check below stays honest if one must ever be tolerated for a while.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path, repo: Path = REPO) -> str:
    """The dotted name of a file below the repository root (``tests.unit.test_x``)."""
    parts = path.relative_to(repo).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_test_module(name: str) -> bool:
    """pytest collects ``test_*`` modules; everything else below tests/ is a helper."""
    return name.rsplit(".", 1)[-1].startswith("test_")


def imported_modules(path: Path, source: str, repo: Path = REPO) -> set[str]:
    """Every module ``source`` imports, relative imports resolved against ``path``'s package.

    ``from package import name`` counts as importing ``package.name`` too, since
    ``name`` may be a module (``from tests.unit import test_x``).
    """
    package = module_name(path, repo).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
            else:
                parts = (node.module or "").split(".")
            module = ".".join(parts)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def imported_test_modules(path: Path, source: str, repo: Path = REPO) -> set[str]:
    """The test modules among what ``source`` (the file at ``path``) imports."""
    return {name for name in imported_modules(path, source, repo) if is_test_module(name)}


def offenders(repo: Path = REPO) -> set[tuple[str, str]]:
    """(file, test module) for every import of a test module in ``repo``'s tests/."""
    return {
        (path.relative_to(repo).as_posix(), name)
        for path in sorted((repo / "tests").rglob("*.py"))
        for name in imported_test_modules(path, path.read_text(encoding="utf-8"), repo)
    }


def test_no_test_module_imports_another() -> None:
    found = offenders()
    assert found - ALLOWED == set(), "import shared code from tests/*.py or conftest.py"
    # The allow-list names only imports that still exist: it can only shrink.
    assert ALLOWED - found == set()


def test_every_way_of_importing_a_test_module_is_found() -> None:
    path = TESTS / "unit" / "test_planted.py"
    planted = {
        "import tests.unit.test_match": "tests.unit.test_match",
        "import tests.integration.test_tls as tls": "tests.integration.test_tls",
        "from tests.unit.test_match import build": "tests.unit.test_match",
        "from tests.unit import test_scp": "tests.unit.test_scp",
        "from tests.integration import conftest, test_limits": "tests.integration.test_limits",
        "from .test_find import make_index": "tests.unit.test_find",
        "from . import test_retrieve": "tests.unit.test_retrieve",
        "from ..integration.test_tls import make_ca": "tests.integration.test_tls",
        "def f():\n    from tests.unit.test_config import x": "tests.unit.test_config",
    }
    for source, module in planted.items():
        assert imported_test_modules(path, source) == {module}, source


def test_helper_imports_are_not_test_modules() -> None:
    path = TESTS / "unit" / "test_planted.py"
    allowed = (
        "from tests.datasets import build\n"
        "from tests.scp_harness import Harness\n"
        "import pytest\n"
        "from orthanc_dpp import status\n"
    )
    assert imported_test_modules(path, allowed) == set()


def test_a_planted_import_is_an_offender(tmp_path: Path) -> None:
    """The whole check, on a small tree where one test module imports another."""
    planted = tmp_path / "tests" / "unit"
    planted.mkdir(parents=True)
    (planted / "test_a.py").write_text("from tests.unit.test_b import helper\n")
    (planted / "test_b.py").write_text("def helper() -> None: ...\n")
    assert offenders(tmp_path) == {("tests/unit/test_a.py", "tests.unit.test_b")}


UNIT = REPO / "tests" / "unit"
PACKAGE = REPO / "plugin" / "orthanc_dpp"


def folders(root: Path) -> set[str]:
    """The folders below ``root`` that hold Python files, as relative paths."""
    return {
        path.parent.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if path.parent != root and "__pycache__" not in path.parts
    }


def test_unit_test_folders_mirror_the_package() -> None:
    tested = folders(UNIT)
    assert tested == folders(PACKAGE), "tests/unit/ and plugin/orthanc_dpp/ differ in folders"
    for folder in sorted(tested):
        assert (UNIT / folder / "__init__.py").is_file(), f"tests/unit/{folder}: no __init__.py"
        assert list((UNIT / folder).glob("test_*.py")), f"tests/unit/{folder}: no tests"
