"""The options every long-running command shares: ``--host`` and ``--port``."""

from __future__ import annotations

from typing import Annotated

import typer

from simpul.settings import Settings

HostOption = Annotated[
    str | None,
    typer.Option("--host", help="Address to listen on [default: SIMPUL_BIND_HOST, 127.0.0.1]"),
]
PortOption = Annotated[
    int | None,
    typer.Option("--port", min=1, max=65535, help="Port to listen on [default: its setting]"),
]


def listening(settings: Settings, port_field: str, host: str | None, port: int | None) -> Settings:
    """The settings with the command line's host and port, if given, in place."""
    update: dict[str, object] = {}
    if host:
        update["bind_host"] = host
    if port:
        update[port_field] = port
    return settings.model_copy(update=update) if update else settings
