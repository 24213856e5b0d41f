"""`simpul agency keys`: the signing keys of agencies and Simpul gateways."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import typer
from rich.table import Table

from simpul.cli.common import checked_settings, checked_topology, console, err
from simpul.settings import Settings
from simpul.signing import GATEWAYS, KeyError_, Kind, kind_of
from simpul.topology.model import Topology

agency_app = typer.Typer(help="Agencies: their signing keys.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Ed25519 keys that sign events: public halves beside the topology, private halves "
    "in SIMPUL_KEYS_DIR.",
    no_args_is_help=True,
)
agency_app.add_typer(keys_app, name="keys")


def installation_owners(topology: Topology) -> list[tuple[str, Kind]]:
    """Everyone who signs on this installation: each agency system and each gateway."""
    owners: list[tuple[str, Kind]] = [(a.code, "agency") for a in topology.agencies if not a.system]
    return owners + [(name, "gateway") for name in GATEWAYS]


def _context() -> tuple[Settings, Topology]:
    settings = checked_settings()
    return settings, checked_topology(settings)


def _kind(topology: Topology, owner: str) -> Kind:
    try:
        return kind_of(owner, [a.code for a in topology.agencies])
    except KeyError_ as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def parse_duration(text: str) -> dt.timedelta:
    """``30m``, ``24h``, ``7d``: a rotation overlap."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 24h or 7d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
    return dt.timedelta(**{unit: int(match[1])})


@keys_app.command("create")
def keys_create(
    owner: Annotated[
        str | None,
        typer.Argument(help="Agency code, or a gateway: " + ", ".join(GATEWAYS)),
    ] = None,
    all_: Annotated[
        bool,
        typer.Option("--all", help="A key for every agency and gateway that has none usable"),
    ] = False,
    attests: Annotated[
        str | None,
        typer.Option(help="Gateways only: comma-separated agency codes it may sign for, or *"),
    ] = None,
) -> None:
    """Make a key pair: the private key into SIMPUL_KEYS_DIR (0600), the public key into the
    public keys file (commit that file)."""
    from simpul.signing import create_key, ensure_keys

    settings, topology = _context()
    public, keys_dir = settings.public_keys_path, settings.paths.keys_dir
    if all_:
        made = ensure_keys(public, keys_dir, installation_owners(topology))
        for entry in made:
            console.print(f"created {entry.key_id} ({entry.kind} {entry.owner})")
        console.print(f"{len(made)} key(s) created; public keys in {public}")
        return
    if owner is None:
        err.print("[red]owner: name an agency or gateway, or pass --all[/red]")
        raise typer.Exit(2)
    kind = _kind(topology, owner)
    chosen = [a.strip() for a in attests.split(",") if a.strip()] if attests else None
    entry = create_key(public, keys_dir, owner, kind, chosen)
    console.print(f"created {entry.key_id} ({kind} {owner}); public key in {public}")


@keys_app.command("rotate")
def keys_rotate(
    owner: Annotated[str, typer.Argument(help="Agency code or gateway")],
    overlap: Annotated[
        str, typer.Option(help="How long the old key stays valid beside the new one")
    ] = "24h",
) -> None:
    """A new key for OWNER; its old keys stay valid for --overlap, then are refused."""
    from simpul.signing import rotate_key

    settings, topology = _context()
    kind = _kind(topology, owner)
    new, ended = rotate_key(
        settings.public_keys_path, settings.paths.keys_dir, owner, kind, parse_duration(overlap)
    )
    console.print(f"created {new.key_id} ({kind} {owner})")
    for entry in ended:
        console.print(f"{entry.key_id} stays valid until {entry.valid_until:%Y-%m-%d %H:%M} UTC")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id to refuse from now on")],
) -> None:
    """Refuse KEY_ID at once (a leaked key); deletes its private key if it is here."""
    from simpul.signing import revoke_key

    settings, _ = _context()
    try:
        entry = revoke_key(settings.public_keys_path, settings.paths.keys_dir, key_id)
    except KeyError_ as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"revoked {entry.key_id} ({entry.kind} {entry.owner})")


@keys_app.command("list")
def keys_list() -> None:
    """Every key of the public keys file, its owner and whether it is accepted now."""
    from simpul.signing import private_key_path, read_public_keys

    settings, _ = _context()
    now = dt.datetime.now(dt.UTC)
    entries = read_public_keys(settings.public_keys_path)
    table = Table(title=f"{len(entries)} key(s) in {settings.public_keys_path}")
    for column in ("key id", "owner", "kind", "attests", "state", "valid until", "private"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.key_id,
            e.owner,
            e.kind,
            ",".join(e.attests),
            e.state(now),
            f"{e.valid_until:%Y-%m-%d %H:%M}" if e.valid_until else "",
            "here" if private_key_path(settings.paths.keys_dir, e.key_id).exists() else "",
        )
    console.print(table)
