"""Operations commands: `simpul status` (the integration scorecard) and `simpul export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the scorecard as JSON")] = False,
) -> None:
    """Which agencies are connected, how fresh their data is, and what fails (last 24 h)."""
    from sqlalchemy.exc import SQLAlchemyError

    from simpul.cli import _settings, _topology, console, err
    from simpul.db import make_engine
    from sinks.scorecard import STATUS_LABELS, age, build_scorecard, percent

    settings = _settings()
    topology = _topology(settings)
    try:
        card = build_scorecard(
            make_engine(settings.database_url), topology, connectors_dir=settings.connectors_dir
        )
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", error)).splitlines()[0]
        err.print(f"[red]cannot read the central store ({reason}); run `simpul db upgrade`?[/red]")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(card.as_dict(), ensure_ascii=False, indent=2))
        return
    colours = {"connected": "green", "stale": "red", "never": "red", "receives-only": "dim"}
    # A terminal narrower than the full table gets agency codes and short headings, so that
    # every cell stays readable on one line.
    wide = console.width >= 160
    table = Table(title=f"Simpul integration status: {card.city} (counts: last 24 h)")
    for column in ("agency", "status", "cadence", "last event", "events"):
        table.add_column(column, no_wrap=column != "agency" or not wide)
    table.add_column("dead letters" if wide else "DLQ", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)
    table.add_column(
        "connectors / subscriptions" if wide else "conn/subs", overflow="fold", min_width=9
    )
    for a in card.agencies:
        colour = colours[a.status]
        table.add_row(
            f"{a.name}\n[dim]{a.code}[/dim]" if wide else a.code,
            f"[{colour}]{STATUS_LABELS[a.status]}[/{colour}]",
            a.cadence if a.publishes else "-",
            age(a.last_event_at, card.generated_at),
            str(a.events_24h),
            f"{a.dead_letters_24h} ({percent(a.dead_letter_rate)})",
            f"{a.errors_24h} ({percent(a.error_rate)})",
            "\n".join([*a.connectors, *(f"→ {s}" for s in a.subscriptions)]) or "-"
            if wide
            else f"{len(a.connectors)}/{len(a.subscriptions)}",
        )
    console.print(table)
    if not wide:
        console.print("[dim]names, connectors and subscriptions: a wider terminal or --json[/dim]")
    colour = "green" if card.connected_count == len(card.expected) else "yellow"
    console.print(f"[bold {colour}]{card.summary}[/bold {colour}]")


def export(
    period: Annotated[str, typer.Option(help="Month to export, YYYY-MM (e.g. 2026-11)")],
    out: Annotated[Path, typer.Option(help="Directory for the CSV and metadata files")],
) -> None:
    """Write aggregated, non-personal open datasets (Satu Data Indonesia) as CSV + JSON."""
    from simpul.cli import _settings, _topology, console, err
    from simpul.db import make_engine
    from sinks.open_data import SUPPRESSED, ExportError, export_open_data

    settings = _settings()
    topology = _topology(settings)
    try:
        result = export_open_data(make_engine(settings.database_url), topology, period, out)
    except ExportError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    table = Table("dataset", "rows", f"cells shown as {SUPPRESSED}", title=f"open data {period}")
    for slug, rows in result.rows.items():
        table.add_row(slug, str(rows), str(result.suppressed[slug]))
    console.print(table)
    console.print(f"wrote {len(result.files)} files to {result.directory}")
