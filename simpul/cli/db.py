"""`simpul db`: the central store's migrations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from simpul.cli.common import checked_settings, console

if TYPE_CHECKING:
    from sqlalchemy import MetaData

db_app = typer.Typer(help="Central store migrations.", no_args_is_help=True)


def central_store_metadata() -> MetaData:
    """`simpul.db.metadata` with every table of the central store registered on it.

    Imported here, not in the core: the tables are defined beside the code that owns them
    (registry, sinks, connectors), and the CLI is the one package that may import them all.
    """
    from connectors import state
    from simpul.db import metadata
    from simpul.registry import store
    from sinks import audit, central_store, dead_letters

    # Importing each module registers its tables; every one must use the shared metadata.
    for module in (store, central_store, dead_letters, audit, state):
        assert module.metadata is metadata, module.__name__
    return metadata


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply the central store's migrations (SQLite or PostgreSQL)."""
    from simpul import dbmigrate

    settings = checked_settings()
    at = dbmigrate.upgrade(settings.store.database_url, revision)
    console.print(f"central store at revision [bold]{at}[/bold]")


@db_app.command("current")
def db_current() -> None:
    """Show the central store's migration revision."""
    from simpul import dbmigrate

    console.print(
        dbmigrate.current(checked_settings().store.database_url)
        or "(empty: run `simpul db upgrade`)"
    )
