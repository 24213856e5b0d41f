"""The plan of docs/architecture.md, checked: which room may import which, and no circles.

Every import of every module in simpul/, streams/, sinks/ and connectors/ is read with `ast`
(function-level imports too, and a module named in a string for `importlib`; imports under
`if TYPE_CHECKING:` are types only, never run, and are left out).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent.parent
FOLDERS = ("simpul", "streams", "sinks", "connectors")

# Known breaks of the plan: none are left (issue 16 removed the last). Nothing may be added
# here without a reason that the code cannot be written otherwise.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()
# A circle whose modules all lie in one of these rooms is tolerated: none.
KNOWN_CIRCLE_ROOMS: set[str] = set()


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    file: str
    line: int
    how: str  # the statement, for the failure message


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "migrations" not in path.parts or path.name != "env.py"
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except what only a type checker reads."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for other in node.orelse:
                yield other
                yield from _nodes(other)
            continue
        yield node
        yield from _nodes(node)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The local module an import name is, or lies in (a.b.Class -> a.b)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _nodes(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        elif (  # a module named for importlib.import_module("x.y")
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "." in node.value
            and node.value in modules
        ):
            names = [node.value]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                line = getattr(node, "lineno", 0)
                yield Import(module, target, rel, line, lines[line - 1].strip())


def room(module: str) -> str:
    """simpul (the core), simpul.cli, streams, sinks or connectors."""
    # `python -m simpul` is the command line's entry, so its room.
    if module in ("simpul.cli", "simpul.__main__") or module.startswith("simpul.cli."):
        return "simpul.cli"
    return module.split(".")[0]


# room -> the rooms it may import (besides itself). docs/architecture.md draws the same.
ALLOWED: dict[str, set[str]] = {
    "simpul": set(),
    "sinks": {"simpul"},
    "connectors": {"simpul"},
    "streams": {"simpul", "sinks"},
    "simpul.cli": {"simpul", "streams", "sinks", "connectors"},
}


@functools.cache
def every_import() -> list[Import]:
    modules = all_modules()
    return [found for m, path in modules.items() for found in imports_of(m, path, modules)]


def test_no_room_imports_a_room_it_must_not() -> None:
    broken = [
        f"{i.file}:{i.line}: {i.source} ({room(i.source)}) imports {i.target} "
        f"({room(i.target)}): `{i.how}`"
        for i in every_import()
        if room(i.target) != room(i.source)
        and room(i.target) not in ALLOWED[room(i.source)]
        and (i.source, i.target) not in KNOWN_EXCEPTIONS
    ]
    assert broken == [], "forbidden by docs/architecture.md:\n" + "\n".join(broken)


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _module_circles() -> tuple[list[list[str]], dict[tuple[str, str], Import]]:
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], Import] = {}
    for i in every_import():
        if (i.source, i.target) not in KNOWN_EXCEPTIONS:
            edges.setdefault(i.source, set()).add(i.target)
            where.setdefault((i.source, i.target), i)
    return _circles(edges), where


def _known(circle: list[str]) -> bool:
    return any(all(room(m) == known for m in circle) for known in KNOWN_CIRCLE_ROOMS)


def test_no_circle_between_modules() -> None:
    circles, where = _module_circles()
    broken = []
    for circle in circles:
        if _known(circle):
            continue
        members = set(circle)
        lines = [
            f"  {i.file}:{i.line}: `{i.how}`"
            for (source, target), i in sorted(where.items())
            if source in members and target in members
        ]
        broken.append(
            f"circle of {len(circle)} modules: " + ", ".join(circle) + "\n" + "\n".join(lines)
        )
    assert broken == [], "\n".join(broken)


def test_the_checker_sees_function_level_and_string_imports_but_not_type_checking(
    tmp_path: Path,
) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from streams.worker import Worker\n"
        "def late():\n"
        "    from sinks.audit import AuditLog\n"
        "NAMES = ('connectors.state',)\n"
    )
    modules = {**all_modules(), "simpul.probe": source}
    seen = {(i.target, i.line) for i in imports_of("simpul.probe", source, modules)}
    assert seen == {("sinks.audit", 5), ("connectors.state", 6)}
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_known_exceptions_are_still_needed() -> None:
    """So the list only shrinks: an exception that no import needs any more must go."""
    present = {(i.source, i.target) for i in every_import()}
    assert present >= KNOWN_EXCEPTIONS, KNOWN_EXCEPTIONS - present
    circles, _ = _module_circles()
    still = {known for known in KNOWN_CIRCLE_ROOMS for c in circles if _known(c)}
    assert still == KNOWN_CIRCLE_ROOMS, KNOWN_CIRCLE_ROOMS - still


# --- packaging: what the code imports is declared ---


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}

    extras = {e: names(r) for e, r in project["optional-dependencies"].items()}
    return names(project["dependencies"]), extras


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared() -> None:
    """Each third-party import of the shipped folders is a dependency or in an extra."""
    core, extras = _declared()
    declared = {_normal(n) for n in core.union(*extras.values())}
    providers = importlib.metadata.packages_distributions()
    undeclared = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    tops = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    if top in sys.stdlib_module_names or top in FOLDERS or top == "__future__":
                        continue
                    dists = {_normal(d) for d in providers.get(top, [top])}
                    if not dists & declared:
                        undeclared.add(f"{path.relative_to(ROOT)}: {top} ({', '.join(dists)})")
    assert sorted(undeclared) == []


def test_each_extra_names_the_modules_its_hint_checks() -> None:
    """simpul/cli/extras.py's hint checks the modules pyproject's extra installs."""
    from simpul.cli.extras import EXTRAS

    _, extras = _declared()
    providers = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        installs = {_normal(d) for m in modules for d in providers.get(m, [m])}
        assert installs == {_normal(n) for n in extras[extra]}, extra


def test_a_command_whose_extra_is_missing_says_how_to_install_it() -> None:
    """Without jinja2 (the console extra), `simpul console` is one line and exit 1."""
    blocked = (
        "import sys; sys.modules['jinja2'] = None; sys.argv = ['simpul', 'console']; "
        "from simpul.cli.main import main; main()"
    )
    run = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == ("simpul console needs jinja2: pip install 'simpul[console]'")
