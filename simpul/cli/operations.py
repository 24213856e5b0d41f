"""Operations commands: `simpul status` (the integration scorecard) and `simpul export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from simpul.cli.common import checked_settings, checked_topology, console, err

staff_app = typer.Typer(help="Staff master data (SIMPEG and BKN's register).", no_args_is_help=True)
payroll_app = typer.Typer(help="Payroll basis for BKD (TPP).", no_args_is_help=True)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the scorecard as JSON")] = False,
) -> None:
    """Which agencies are connected, how fresh their data is, and what fails (last 24 h)."""
    from sqlalchemy.exc import SQLAlchemyError

    from simpul.db import make_engine
    from sinks.reports.scorecard import STATUS_LABELS, age, build_scorecard, percent

    settings = checked_settings()
    topology = checked_topology(settings)
    try:
        card = build_scorecard(
            make_engine(settings.store.database_url),
            topology,
            connectors_dir=settings.paths.connectors_dir,
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
    from simpul.db import make_engine
    from sinks.reports.open_data import SUPPRESSED, ExportError, export_open_data

    settings = checked_settings()
    topology = checked_topology(settings)
    try:
        result = export_open_data(
            make_engine(settings.store.database_url),
            topology,
            period,
            out,
            schemas_dir=settings.paths.schemas_dir,
        )
    except ExportError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    table = Table("dataset", "rows", f"cells shown as {SUPPRESSED}", title=f"open data {period}")
    for slug, rows in result.rows.items():
        table.add_row(slug, str(rows), str(result.suppressed[slug]))
    console.print(table)
    console.print(f"wrote {len(result.files)} files to {result.directory}")


@staff_app.command("reconcile")
def staff_reconcile(
    national: Annotated[
        str, typer.Option(help="Agency code the national register (BKN SIASN) publishes under")
    ] = "bkn",
    local: Annotated[
        str | None,
        typer.Option(help="Agency of the local SIMPEG (default: the other hr.employee producer)"),
    ] = None,
    show_personal: Annotated[
        bool, typer.Option(help="Show NIPs and names in full (default: masked)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Staff whose local SIMPEG record differs from BKN's national one, field by field."""
    from simpul.db import make_engine
    from simpul.topology.subscriptions import mask
    from sinks.reports.staff_reconciliation import EVENT_TYPE, reconcile

    settings = checked_settings()
    topology = checked_topology(settings)
    producers = [
        a.code for a in topology.agencies if topology.event_type(EVENT_TYPE).may_produce(a.code)
    ]
    local = local or next((code for code in producers if code != national), None)
    for role, code in (("--national", national), ("--local", local)):
        if code not in producers:
            err.print(
                f"{role}: {code!r} does not produce {EVENT_TYPE} in {topology.city} "
                f"(producers: {', '.join(producers)})",
                markup=False,
                style="red",
                soft_wrap=True,
            )
            raise typer.Exit(2)
    assert local is not None
    report = reconcile(make_engine(settings.store.database_url), local, national)

    def shown(name: str, value: object) -> str:
        if value is None:
            return "-"
        if name in ("nip", "name") and not show_personal:
            return mask(str(value), 4, 3) if name == "nip" else mask(str(value), 1, 0)
        return str(value)

    if as_json:
        print(
            json.dumps(
                {
                    "local": local,
                    "national": national,
                    "compared": report.compared,
                    "matching": report.matching,
                    "differences": [
                        {
                            "nip": shown("nip", d.nip),
                            "field": d.field,
                            "local": shown(d.field, d.local),
                            "national": shown(d.field, d.national),
                        }
                        for d in report.differences
                    ],
                    "only_local": [shown("nip", n) for n in report.only_local],
                    "only_national": [shown("nip", n) for n in report.only_national],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    table = Table(
        "NIP", "field", f"SIMPEG ({local})", f"national ({national})", title="Staff to reconcile"
    )
    for d in report.differences:
        table.add_row(
            shown("nip", d.nip), d.field, shown(d.field, d.local), shown(d.field, d.national)
        )
    console.print(table)
    console.print(report.summary())


@payroll_app.command("control")
def payroll_control(
    period: Annotated[str, typer.Option(help="Month paid, YYYY-MM (e.g. 2026-11)")],
    out: Annotated[
        Path | None, typer.Option(help="Also write the per-unit totals to this CSV file")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the totals as JSON")] = False,
) -> None:
    """BKD's monthly TPP control total per unit (staff, payable, rupiah, account hash total)."""
    import csv
    import dataclasses

    from simpul.db import make_engine
    from sinks.reports.payroll import PayrollError, UnitTotal, rupiah
    from sinks.reports.payroll import payroll_control as build

    settings = checked_settings()
    topology = checked_topology(settings)
    try:
        report = build(make_engine(settings.store.database_url), topology, period)
    except PayrollError as error:
        err.print(str(error), markup=False, style="red", soft_wrap=True)
        raise typer.Exit(2) from None
    units = report.units
    if out is not None:
        with out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, [f.name for f in dataclasses.fields(UnitTotal)])
            writer.writeheader()
            writer.writerows(dataclasses.asdict(u) for u in units)
    if as_json:
        print(
            json.dumps(
                {
                    "period": period,
                    "basis": report.basis,
                    "total_amount": report.total_amount,
                    "units": [dataclasses.asdict(u) for u in units],
                },
                indent=2,
            )
        )
        return
    table = Table(
        "unit",
        "staff",
        "payable",
        "amount (Rp)",
        "account hash total",
        "no account",
        "no amount",
        title=f"TPP control totals {period} ({report.basis})",
    )
    for u in units:
        table.add_row(
            u.unit_code,
            str(u.staff),
            str(u.payable),
            rupiah(u.amount),
            f"{u.account_hash_total:012d}",
            str(u.no_account),
            str(u.no_amount),
        )
    console.print(table)
    console.print(
        f"{len(report.lines)} staff, Rp {rupiah(report.total_amount)} payable in {len(units)} units"
        + (f"; written to {out}" if out else "")
    )


def readiness(
    days: Annotated[int, typer.Option(min=1, max=366, help="Days of traffic to judge")] = 7,
    weeks: Annotated[int, typer.Option(min=1, max=104, help="Weeks of connected history")] = 12,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Per agency: connected or not, events/day, share rejected and why, fields missing or
    malformed, freshness against cadence; and "N of M agencies connected" week by week."""
    from simpul.db import make_engine
    from sinks.reports.readiness import build_readiness

    settings = checked_settings()
    topology = checked_topology(settings)
    report = build_readiness(
        make_engine(settings.store.database_url),
        topology,
        days=days,
        weeks=weeks,
        connectors_dir=settings.paths.connectors_dir,
    )
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        return
    table = Table(title=f"Data readiness: {report.city} (last {days} days)")
    for column in ("agency", "onboarded", "status", "events/day", "rejected", "top reasons"):
        table.add_column(
            column, justify="right" if column in ("events/day", "rejected") else "left"
        )
    table.add_column("fields missing / malformed", overflow="fold")
    table.add_column("freshness", justify="right")
    for a in report.agencies:
        fresh = a.freshness(report.generated_at)
        share = a.rejected_share
        table.add_row(
            a.code,
            "yes" if a.onboarded else "not yet",
            a.status,
            f"{a.events_per_day:.1f}",
            "-" if share is None else f"{share * 100:.1f} %",
            ", ".join(f"{c} ({n})" for c, n in a.top_reasons) or "-",
            ", ".join(f"{f.field} {f.missing}/{f.malformed}" for f in a.fields) or "-",
            "-" if fresh is None else f"{fresh:.2f}×{a.cadence}",
        )
    console.print(table)
    history = Table("week from", "connected", title="Agencies connected, week by week")
    for w in report.weeks:
        history.add_row(w.week_start.isoformat(), w.label)
    console.print(history)
