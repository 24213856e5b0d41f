"""`simpul registry`, `simpul schemas register` and `simpul schemas check`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from simpul.registry import compatibility
from simpul.settings import Settings
from simpul.topology.model import EventType, Topology

if TYPE_CHECKING:
    from simpul.registry.client import RegistryClient

schemas_app = typer.Typer(help="Avro schemas of the event types.", no_args_is_help=True)


def registry(host: HostOption = None, port: PortOption = None) -> None:
    """Run the Confluent-compatible schema registry over the central store (on
    SIMPUL_BIND_HOST:SIMPUL_REGISTRY_PORT)."""
    from simpul import dbmigrate
    from simpul.registry.api import serve
    from simpul.registry.client import admin_token, token_path

    settings = listening(checked_settings(), "registry_port", host, port)
    if dbmigrate.current(settings.store.database_url) is None:
        err.print("[red]the central store is not migrated[/red]: run `simpul db upgrade` first")
        raise typer.Exit(2)
    admin_token(settings, create=True)
    where = (
        "SIMPUL_REGISTRY_ADMIN_TOKEN"
        if settings.registry.admin_token
        else str(token_path(settings))
    )
    console.print(
        "schema registry on "
        f"[bold]http://{settings.http.bind_host}:{settings.registry.port}[/bold]; "
        f"admin token in {where}; "
        f"reads {'need the token' if settings.registry.read_auth else 'are open'}"
    )
    serve(settings)


@schemas_app.command("register")
def schemas_register(
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Write to the central store instead of the registry (no compatibility check)",
        ),
    ] = False,
) -> None:
    """Register every event type's .avsc under `simpul.in.<type>-value` through the registry."""
    from simpul.registry.client import RegistryClient, RegistryRequestError, RegistryUnavailable

    settings = checked_settings()
    topology = checked_topology(settings)
    if direct or not settings.registry.url:
        from simpul.db import make_engine
        from simpul.registry.store import SchemaStore, register_all

        ids = register_all(
            SchemaStore(make_engine(settings.store.database_url)),
            topology,
            settings.paths.schemas_dir,
        )
        where = "central store (direct)"
    else:
        try:
            with RegistryClient.from_settings(settings) as client:
                ids = register_http(client, topology, settings.paths.schemas_dir)
        except RegistryRequestError as error:
            err.print(f"[red]registry refused the schema[/red]: {error.message}")
            raise typer.Exit(1) from None
        except RegistryUnavailable as error:
            err.print(f"[red]{error}[/red]: start `simpul registry`, or pass --direct")
            raise typer.Exit(1) from None
        where = settings.registry.url
    table = Table("event type", "subject", "schema id", title=f"registered in {where}")
    for name, schema_id in ids.items():
        table.add_row(name, topology.event_type(name).subject, str(schema_id))
    console.print(table)


def register_http(client: RegistryClient, topology: Topology, schemas_dir: Path) -> dict[str, int]:
    """Register every event type's schema through `simpul registry`; name → schema id."""
    return {
        event_type.name: client.register(
            event_type.subject,
            (schemas_dir / event_type.schema_file).read_text(encoding="utf-8"),
        )
        for event_type in topology.event_types
    }


# --- schemas check ---------------------------------------------------------------------------


@dataclass
class FileCheck:
    """The outcome for one .avsc file."""

    event_type: EventType
    path: Path
    against: str
    mode: str
    problems: list[str] = field(default_factory=list)


def _readers(topology: Topology, event_type: EventType) -> str:
    """Who reads the type's topics, for "whom it breaks"."""
    names = []
    # Subscriptions arrive with the topology's subscriber section; read it loosely here so
    # this works whatever its exact field names are.
    for sub in getattr(topology, "subscriptions", None) or []:
        types = getattr(sub, "event_types", None) or getattr(sub, "types", None) or []
        if event_type.name in types:
            who = getattr(sub, "subscriber", None) or getattr(sub, "agency", None)
            names.append(str(who or getattr(sub, "name", "?")))
    subscribers = f"; subscribers: {', '.join(sorted(set(names)))}" if names else ""
    return (
        f"readers of {event_type.topic('in')} (the Simpul worker) and "
        f"{event_type.topic('valid')} (central store table {event_type.entity}, joins"
        f"{subscribers})"
    )


def _whom(topology: Topology, event_type: EventType, problem: compatibility.Incompatibility) -> str:
    producers = ", ".join(event_type.producers)
    readers = _readers(topology, event_type)
    if problem.direction == "backward":
        return (
            f"breaks {readers} once they upgrade: events already written (by {producers}), "
            "stored and replayed from dead letters no longer decode"
        )
    old = f"version {problem.version}" if problem.version else "the committed schema"
    return (
        f"breaks {readers} still on {old}: they cannot read what "
        f"{producers} would write with this file"
    )


def _git_head_text(path: Path) -> tuple[str | None, str]:
    """The file as committed at HEAD (None: not in HEAD, or no git), and why."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=path.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        relative = path.resolve().relative_to(Path(top).resolve())
        shown = subprocess.run(
            ["git", "show", f"HEAD:{relative.as_posix()}"],
            cwd=top,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None, "not in a git work tree"
    if shown.returncode != 0:
        return None, "new file (not in HEAD)"
    return shown.stdout, "HEAD"


def check_schemas(
    settings: Settings, topology: Topology, *, use_registry: bool = True
) -> tuple[str, list[FileCheck]]:
    """Compare every .avsc with the registry's versions (or HEAD's file); (source, checks)."""
    import httpx

    from simpul.registry.client import RegistryClient, RegistryRequestError, RegistryUnavailable

    client: RegistryClient | None = None
    source = "git HEAD (no registry answered), mode BACKWARD"
    if use_registry and settings.registry.url:
        client = RegistryClient(
            settings.registry.url,
            timeout_s=min(settings.registry.timeout_s, 3.0),
            retry_s=0,
            latest_ttl_s=0,
        )
        try:
            client.request("GET", "/config")
            source = f"registry {settings.registry.url}"
        except (RegistryUnavailable, RegistryRequestError, httpx.HTTPError, ValueError):
            # Nothing, or not a registry, answers there: fall back to git.
            client.close()
            client = None
    checks = []
    try:
        for event_type in topology.event_types:
            path = settings.paths.schemas_dir / event_type.schema_file
            result = FileCheck(event_type, path, "", "BACKWARD")
            checks.append(result)
            try:
                text = path.read_text(encoding="utf-8")
                compatibility.parse(text)
            except (OSError, compatibility.InvalidSchema) as error:
                result.against = "-"
                result.problems.append(f"{path.name}: {error}")
                continue
            if client is not None:
                versions = client.subject_versions(event_type.subject)
                result.mode = client.compatibility(event_type.subject)
                result.against = (
                    f"registry versions {versions[0]['version']}..{versions[-1]['version']}"
                    if versions
                    else "registry (new subject)"
                )
                existing = [(int(v["version"]), str(v["schema"])) for v in versions]
            else:
                old, why = _git_head_text(path)
                result.against = why
                existing = [(0, old)] if old is not None else []
            try:
                problems = compatibility.check(text, existing, result.mode)
            except compatibility.InvalidSchema as error:
                result.problems.append(f"the committed/registered schema is invalid: {error}")
                continue
            for problem in problems:
                result.problems.append(
                    f"{problem.explain()}; {_whom(topology, event_type, problem)}"
                )
    finally:
        if client is not None:
            client.close()
    return source, checks


@schemas_app.command("check")
def schemas_check(
    git: Annotated[
        bool, typer.Option("--git", help="Compare with HEAD's files even if a registry answers")
    ] = False,
) -> None:
    """Fail (exit 1) when a changed .avsc breaks its subject's compatibility mode.

    Compares with the registered versions when the registry answers, else with the last
    commit's files under BACKWARD, and says which file, which field, what breaks and whom.
    """
    settings = checked_settings()
    topology = checked_topology(settings)
    source, checks = check_schemas(settings, topology, use_registry=not git)
    failed = [c for c in checks if c.problems]
    table = Table("file", "subject", "mode", "compared with", "result", title=f"against {source}")
    for c in checks:
        table.add_row(
            c.path.name,
            c.event_type.subject,
            c.mode,
            c.against,
            "[red]BREAKS[/red]" if c.problems else "[green]ok[/green]",
        )
    console.print(table)
    for c in failed:
        err.print(f"[red bold]{c.path}[/red bold] ({c.event_type.subject}, {c.mode}):")
        for problem in c.problems:
            err.print(f"  - {problem}")
    if failed:
        err.print(
            f"[red]{len(failed)} schema file(s) break compatibility.[/red] Add defaults to new "
            "fields, keep removed fields' defaults, use aliases for renames, or publish a new "
            "event type version (a new .avsc and subject)."
        )
        raise typer.Exit(1)
