"""CLI for connectors: `simpul connect`, `simpul connectors ...` and `simpul ingress ...`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from simpul.cli.common import (
    HostOption,
    PortOption,
    checked_settings,
    checked_topology,
    console,
    err,
    listening,
)
from simpul.httpauth import auth_headers
from simpul.settings import Settings, get_settings

if TYPE_CHECKING:
    from connectors.state import ApiKeyStore
    from simpul.topology.connectors import ConnectorSpec
    from simpul.topology.model import Topology

connectors_app = typer.Typer(
    help="Watch and steer the connectors `simpul connect` runs (its REST API).",
    no_args_is_help=True,
)
ingress_app = typer.Typer(
    help="The HTTP ingress: run it, and manage the agencies' API keys.",
    invoke_without_command=True,
)
keys_app = typer.Typer(help="Per-agency API keys of the HTTP ingress.", no_args_is_help=True)
ingress_app.add_typer(keys_app, name="keys")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="REST API of `simpul connect` [default: 127.0.0.1:connect_port]"),
]


def declared_connectors(settings: Settings, topology: Topology) -> list[ConnectorSpec]:
    """Every declared connector, kinds resolved and options checked; exits 2 naming the field."""
    from connectors.base import resolve_all
    from simpul.topology.connectors import ConnectorConfigError, located_connectors

    try:
        located = located_connectors(topology, settings.paths.connectors_dir)
        specs = [spec for spec, _ in located]
        resolve_all(specs, [where for _, where in located])
    except ConnectorConfigError as error:
        err.print(str(error), markup=False, highlight=False, soft_wrap=True, style="red")
        raise typer.Exit(2) from None
    return specs


def connect(host: HostOption = None, port: PortOption = None) -> None:
    """Run every declared connector (topology + connectors_dir) with the REST API and /metrics
    on SIMPUL_CONNECT_PORT (Bearer token, see README Security)."""
    from connectors.api import serve
    from simpul.topology.connectors import ConnectorConfigError

    settings = listening(checked_settings(), "connect_port", host, port)
    topology = checked_topology(settings)
    specs = declared_connectors(settings, topology)
    console.print(
        f"{len(specs)} connectors; REST API on "
        f"[bold]http://{settings.http.bind_host}:{settings.connect.port}"
        "/connectors[/bold]"
    )
    try:
        statuses = serve(settings, topology)
    except ConnectorConfigError as error:
        err.print(str(error), markup=False, highlight=False, soft_wrap=True, style="red")
        raise typer.Exit(2) from None
    table = Table("connector", "state", "read", "published", "failed", title="stopped")
    for status in statuses:
        counts = status["metrics"]
        table.add_row(
            status["name"],
            status["tasks"][0]["state"],
            str(counts["records_read"]),
            str(counts["records_published"]),
            str(counts["records_failed"]),
        )
    console.print(table)


def _base(url: str | None) -> str:
    return (url or f"http://127.0.0.1:{get_settings().connect.port}").rstrip("/")


def _call(method: str, url: str) -> Any:
    import httpx

    try:
        response = httpx.request(method, url, timeout=30, headers=auth_headers(get_settings()))
    except httpx.HTTPError as error:
        err.print(f"[red]cannot reach {url}: {error}[/red] (is `simpul connect` running?)")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        err.print(f"[red]{response.status_code}: {message}[/red]")
        raise typer.Exit(1)
    return response.json() if response.content else None


@connectors_app.command("list")
def connectors_list(url: UrlOption = None) -> None:
    """List the connectors with their state and record counts."""
    statuses = _call("GET", f"{_base(url)}/connectors?expand=status")
    table = Table("connector", "state", "read", "published", "failed", "last success")
    for name, item in sorted(statuses.items()):
        status = item["status"]
        task = status["tasks"][0]
        counts = status.get("metrics", {})
        table.add_row(
            name,
            task["state"],
            str(counts.get("records_read", "")),
            str(counts.get("records_published", "")),
            str(counts.get("records_failed", "")),
            counts.get("last_success") or "-",
        )
    console.print(table)


@connectors_app.command("status")
def connectors_status(
    name: Annotated[str, typer.Argument(help="Connector name")], url: UrlOption = None
) -> None:
    """Show one connector's state, counts, and the reason when it FAILED."""
    import json

    console.print_json(json.dumps(_call("GET", f"{_base(url)}/connectors/{name}/status")))


@connectors_app.command("pause")
def connectors_pause(
    name: Annotated[str, typer.Argument(help="Connector name")], url: UrlOption = None
) -> None:
    """Pause a connector: it stops reading and keeps its position."""
    _call("PUT", f"{_base(url)}/connectors/{name}/pause")
    console.print(f"{name}: pause requested")


@connectors_app.command("resume")
def connectors_resume(
    name: Annotated[str, typer.Argument(help="Connector name")], url: UrlOption = None
) -> None:
    """Resume a paused connector from its position."""
    _call("PUT", f"{_base(url)}/connectors/{name}/resume")
    console.print(f"{name}: resume requested")


@connectors_app.command("restart")
def connectors_restart(
    name: Annotated[str, typer.Argument(help="Connector name")], url: UrlOption = None
) -> None:
    """Restart a connector's task from its durable position (after fixing what failed it)."""
    _call("POST", f"{_base(url)}/connectors/{name}/restart")
    console.print(f"{name}: restarted")


@ingress_app.callback()
def ingress(ctx: typer.Context, host: HostOption = None, port: PortOption = None) -> None:
    """Run the HTTP ingress (POST /v1/events/{type}) on SIMPUL_INGRESS_PORT; OpenAPI at /docs."""
    if ctx.invoked_subcommand is not None:
        return
    from connectors.ingress.app import serve

    settings = listening(checked_settings(), "ingress_port", host, port)
    topology = checked_topology(settings)
    console.print(
        f"HTTP ingress on [bold]http://{settings.http.bind_host}:{settings.ingress.port}[/bold] "
        "(OpenAPI: /docs)"
    )
    serve(settings, topology)


def _key_store(settings: Settings) -> ApiKeyStore:
    from connectors.state import ApiKeyStore
    from simpul.db import make_engine

    return ApiKeyStore(make_engine(settings.store.database_url))


@keys_app.command("create")
def keys_create(
    agency: Annotated[str, typer.Argument(help="Agency code from the topology, e.g. dpmptsp")],
    label: Annotated[str | None, typer.Option(help="A note: which system uses it")] = None,
) -> None:
    """Create an API key for an agency; the key is printed once and stored only hashed."""
    settings = checked_settings()
    topology = checked_topology(settings)
    if agency not in topology.agencies_by_code:
        err.print(f"[red]agency: unknown agency {agency!r}[/red]")
        raise typer.Exit(2)
    key, plain = _key_store(settings).create(agency, label)
    err.print(f"API key {key.id} for {agency} (shown once; store it in the agency's system):")
    print(plain)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id, or the key's first 12 characters")],
) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    revoked = _key_store(checked_settings()).revoke(key)
    if not revoked:
        err.print(f"[red]no active key {key!r}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {revoked} key(s)")


@keys_app.command("list")
def keys_list(
    agency: Annotated[str | None, typer.Option(help="Only this agency's keys")] = None,
) -> None:
    """List API keys (id, agency, prefix, created, revoked); never the keys themselves."""
    table = Table("id", "agency", "prefix", "label", "created", "revoked")
    for item in _key_store(checked_settings()).list(agency):
        table.add_row(
            str(item.id),
            item.agency,
            item.prefix,
            item.label or "",
            f"{item.created_at:%Y-%m-%d %H:%M}",
            f"{item.revoked_at:%Y-%m-%d %H:%M}" if item.revoked_at else "",
        )
    console.print(table)
