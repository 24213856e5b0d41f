"""What every command module shares: the consoles, settings and topology checked at start
(exit 2 naming the field), and the ``--host``/``--port`` options of long-running commands."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from simpul.settings import Settings, get_settings
from simpul.topology.model import (
    EventType,
    Topology,
    TopologyError,
    format_validation_error,
    load_topology,
)

console = Console()
err = Console(stderr=True)

HostOption = Annotated[
    str | None,
    typer.Option("--host", help="Address to listen on [default: SIMPUL_BIND_HOST, 127.0.0.1]"),
]
PortOption = Annotated[
    int | None,
    typer.Option("--port", min=1, max=65535, help="Port to listen on [default: its setting]"),
]


def checked_settings() -> Settings:
    """The settings, or exit 2 naming each invalid ``SIMPUL_*`` variable."""
    try:
        return get_settings()
    except ValidationError as error:
        err.print(
            f"[red]settings are invalid (SIMPUL_* variables):[/red]\n"
            f"{format_validation_error(error)}"
        )
        raise typer.Exit(2) from None


def checked_topology(settings: Settings) -> Topology:
    """The settings' topology file, loaded and checked, or exit 2 with its errors."""
    try:
        return load_topology(settings.paths.topology_file)
    except TopologyError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def checked_event_type(topology: Topology, name: str) -> EventType:
    """The topology's event type ``name``, or exit 2 saying it is unknown."""
    try:
        return topology.event_type(name)
    except KeyError as error:
        err.print(f"[red]{error.args[0]}[/red]")
        raise typer.Exit(2) from None


def listening(settings: Settings, port_field: str, host: str | None, port: int | None) -> Settings:
    """The settings with the command line's host and port, if given, in place."""
    update: dict[str, object] = {}
    if host:
        update["bind_host"] = host
    if port:
        update[port_field] = port
    return settings.model_copy(update=update) if update else settings
