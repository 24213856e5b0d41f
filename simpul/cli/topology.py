"""`simpul topology check` and `simpul init`: check a topology file, or write one for a city."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simpul.cli.common import checked_settings, console, err
from simpul.cli.connectors import declared_connectors
from simpul.topology.model import TopologyError, load_topology

topology_app = typer.Typer(help="The topology file.", no_args_is_help=True)


@topology_app.command("check")
def topology_check(
    path: Annotated[
        Path | None, typer.Argument(help="Topology file [default: SIMPUL_TOPOLOGY_FILE]")
    ] = None,
) -> None:
    """Validate a topology file; every error names the field and the reason."""
    try:
        topology = load_topology(path or checked_settings().paths.topology_file)
    except TopologyError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    from streams.fanout.plan import SubscriptionError, SubscriptionPlan

    try:
        SubscriptionPlan.build(topology, checked_settings().paths.schemas_dir)
    except SubscriptionError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    connectors = declared_connectors(checked_settings(), topology)
    console.print(
        f"{topology.city}: {len(topology.agencies)} agencies, "
        f"{len(topology.event_types)} event types, {len(topology.joins)} joins, "
        f"{len(topology.kelurahan)} kelurahan, {len(connectors)} connectors, "
        f"{len(topology.subscriptions)} subscriptions: OK"
    )


def init(
    code: Annotated[str, typer.Argument(help="Kemendagri code of a kabupaten/kota: 53.71, 3471")],
    out: Annotated[
        Path | None, typer.Option(help="File to write (default topology/<city>.yaml)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file")] = False,
) -> None:
    """Write a working topology for any kabupaten/kota from Kemendagri's code list (offline):
    the usual OPD, one office per kelurahan/desa, event types, joins, subscriptions, connectors."""
    from simpul.cli.init import init_topology
    from simpul.wilayah import UnknownRegion

    try:
        stem, text = init_topology(code)
    except UnknownRegion as error:
        err.print(str(error), markup=False, style="red", soft_wrap=True)
        raise typer.Exit(2) from None
    target = out or checked_settings().paths.topology_file.parent / f"{stem}.yaml"
    if target.exists() and not force:
        err.print(f"{target} exists; pass --force to overwrite it", markup=False, style="red")
        raise typer.Exit(1)
    target.write_text(text, encoding="utf-8")
    try:
        topology = load_topology(target)
    except TopologyError as error:
        err.print(str(error), markup=False, style="red")
        raise typer.Exit(1) from None
    console.print(
        f"{target}: {topology.city}, {len(topology.kelurahan)} kelurahan/desa, "
        f"{len(topology.agencies)} agencies, {len(topology.connectors)} connector stubs; "
        f"check it with `simpul topology check {target}`"
    )
