"""The test suite's own layout stays extendable: shared code lives in ``tests/helpers`` (or a
``conftest.py`` fixture), a test module never imports another, and nothing edits ``sys.path``
(pytest's ``pythonpath`` setting puts ``tests/`` there once, for every runner)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def edits_sys_path(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):
            return True
    return False


def test_no_module_imports_a_test_module_or_edits_sys_path() -> None:
    test_modules = {p.stem for p in TESTS.glob("test_*.py")}
    importers, path_editors = [], []
    for path in sorted(TESTS.rglob("*.py")):
        if {name.split(".")[0] for name in imported_modules(path)} & test_modules:
            importers.append(str(path.relative_to(TESTS)))
        if edits_sys_path(path):
            path_editors.append(str(path.relative_to(TESTS)))
    assert importers == [], "these import a test module: move what they share to helpers/"
    assert path_editors == [], "these use sys.path: pytest's pythonpath setting covers it"


def test_the_helpers_hold_no_tests() -> None:
    """A test in ``helpers/`` would never run: pytest collects only ``test_*.py`` files."""
    for path in (TESTS / "helpers").glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        tests = [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test")
        ]
        assert not path.name.startswith("test_") and not tests, path.name
