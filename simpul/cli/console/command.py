"""CLI for the web console: `simpul console` serves it, `simpul console users ...` manages
who may log in and with which role."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from simpul.cli.common import checked_settings, checked_topology, console, err
from simpul.settings import Settings

if TYPE_CHECKING:
    from simpul.cli.console.auth import UserStore

console_app = typer.Typer(
    help="The web console for operators, integration staff and the data protection officer.",
    invoke_without_command=True,
)
users_app = typer.Typer(help="Console users and their roles.", no_args_is_help=True)
console_app.add_typer(users_app, name="users")


def _users(settings: Settings) -> UserStore:
    from simpul.cli.console.auth import UserStore, users_path

    return UserStore(users_path(settings))


@console_app.callback()
def serve_console(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (only this machine by default)")
    ] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on [default: SIMPUL_CONSOLE_PORT]")
    ] = None,
) -> None:
    """Run the web console (agencies, connectors, subscriptions, dead letters, schemas,
    data protection); SIGTERM stops it with exit 0."""
    from simpul.cli.extras import exit_without_extra

    exit_without_extra("console", "simpul console")  # its users commands too
    if ctx.invoked_subcommand is not None:
        return
    from simpul import dbmigrate
    from simpul.cli.console.app import parse_health_urls, serve
    from simpul.cli.console.auth import UserError, session_secret

    settings = checked_settings()
    topology = checked_topology(settings)
    if dbmigrate.current(settings.store.database_url) is None:
        err.print("[red]the central store is not migrated[/red]: run `simpul db upgrade` first")
        raise typer.Exit(2)
    try:
        session_secret(settings)
        parse_health_urls(settings.console.health_urls)
    except (UserError, ValueError) as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    users = _users(settings).list()
    port = port or settings.console.port
    console.print(
        f"console on [bold]http://{host}:{port}/[/bold] for {topology.city} "
        f"({len(users)} users; times in {topology.timezone_abbreviation})"
    )
    if not users:
        err.print(
            "[yellow]no console user yet[/yellow]: "
            "`simpul console users add NAME --role operator|integrator|dpo`"
        )
    serve(settings, topology, host, port)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name, e.g. rahmat.kominfo")],
    role: Annotated[str, typer.Option(help="operator, integrator or dpo")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Add a console user; the password (asked twice, or read from stdin) is stored only as
    an argon2id hash in a file readable by this account alone (mode 0600)."""
    from simpul.cli.console.auth import UserError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        user = _users(checked_settings()).add(name, role, password)
    except UserError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"added {user.name} ({user.role})")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="Login name")]) -> None:
    """Remove a console user; their open sessions stop working at the next request."""
    from simpul.cli.console.auth import UserError

    try:
        _users(checked_settings()).remove(name)
    except UserError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(f"removed {name}")


@users_app.command("list")
def users_list() -> None:
    """List console users and their roles (never their password hashes)."""
    table = Table("name", "role", "language")
    for user in _users(checked_settings()).list():
        table.add_row(user.name, user.role, user.language)
    console.print(table)
