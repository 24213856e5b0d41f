"""`simpul db`: the central store's migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from simpul.cli.common import checked_settings, console

db_app = typer.Typer(help="Central store migrations.", no_args_is_help=True)



@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply the central store's migrations (SQLite or PostgreSQL)."""
    from simpul import dbmigrate

    settings = checked_settings()
    at = dbmigrate.upgrade(settings.database_url, revision)
    console.print(f"central store at revision [bold]{at}[/bold]")


@db_app.command("current")
def db_current() -> None:
    """Show the central store's migration revision."""
    from simpul import dbmigrate

    console.print(
        dbmigrate.current(checked_settings().database_url) or "(empty: run `simpul db upgrade`)"
    )
