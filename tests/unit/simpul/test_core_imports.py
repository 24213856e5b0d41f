"""The core imports none of the rooms built on it: only its CLI package wires them together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
OUTER = ("streams", "sinks", "connectors", "simpul.cli")
#: `python -m simpul` starts the CLI: the one door from the core into its face.
ENTRY = ROOT / "simpul" / "__main__.py"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_core_imports_no_streams_sinks_connectors_or_cli() -> None:
    core = [
        p
        for p in (ROOT / "simpul").rglob("*.py")
        if "cli" not in p.relative_to(ROOT / "simpul").parts[:1] and p != ENTRY
    ]
    assert len(core) > 20  # the walk found the core
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in core
        for line, name in imported_modules(path)
        if any(name == outer or name.startswith(outer + ".") for outer in OUTER)
    ]
    assert broken == []


def test_the_rule_catches_a_core_module_importing_a_sink(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from sinks.audit import verify\n", encoding="utf-8")
    assert imported_modules(module) == [(2, "sinks.audit")]


def test_cli_modules_do_not_import_the_app_assembly() -> None:
    cli = [p for p in (ROOT / "simpul" / "cli").rglob("*.py") if p.name != "main.py"]
    importers = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in cli
        for line, name in imported_modules(path)
        if name == "simpul.cli.main"
    ]
    assert importers == []
