"""`simpul audit`: verify the delivery audit chain; answer "who received my data"."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from simpul.cli.common import checked_settings, console, err

audit_app = typer.Typer(
    help="Delivery audit log: who received which personal data, when and why.",
    no_args_is_help=True,
)


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk every writer's hash chain; exit 1 naming each changed or deleted row."""
    from simpul.db import make_engine
    from sinks.audit import verify

    started = time.perf_counter()
    settings = checked_settings()
    report = verify(
        make_engine(settings.store.database_url), settings.audit_secret(), settings.audit.heads_file
    )
    took = time.perf_counter() - started
    if report.problems:
        for problem in report.problems:
            err.print(f"[red]TAMPERED[/red] {problem}")
        err.print(
            f"[red]{len(report.problems)} problem(s)[/red] in {report.chains} chain(s), "
            f"{report.rows} rows ({took:.1f}s)"
        )
        raise typer.Exit(1)
    console.print(
        f"[green]OK[/green]: {report.rows} rows in {report.chains} chain(s) verified ({took:.1f}s)"
    )


@audit_app.command("subject")
def audit_subject(
    identifier: Annotated[str, typer.Argument(help="The person's NIK (16 digits) or NIP (18)")],
    limit: Annotated[int, typer.Option(help="Show at most this many deliveries")] = 200,
) -> None:
    """Who received this person's data, when and for what purpose (newest first)."""
    from simpul.db import make_engine
    from simpul.identifiers import check_nik, check_nip
    from sinks.audit import receipts_for

    reason = check_nip(identifier) if len(identifier) == 18 else check_nik(identifier)
    if reason:
        err.print(f"[red]identifier: {reason}[/red]")
        raise typer.Exit(2)
    settings = checked_settings()
    started = time.perf_counter()
    receipts = receipts_for(
        make_engine(settings.store.database_url), settings.audit_secret(), identifier, limit
    )
    took = time.perf_counter() - started
    masked = identifier[:4] + "•" * (len(identifier) - 8) + identifier[-4:]
    table = Table(title=f"{len(receipts)} deliveries of data about {masked} ({took * 1000:.0f} ms)")
    for column in ("when (UTC)", "agency", "subscription", "purpose", "event", "fields", "via"):
        table.add_column(column, overflow="fold")
    for r in receipts:
        table.add_row(
            r.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.agency,
            r.subscription,
            r.purpose,
            f"{r.event_type}\n{r.ce_id}",
            ", ".join(r.fields),
            f"{r.channel}: {r.outcome}",
        )
    console.print(table)


@audit_app.command("event")
def audit_event(
    ce_id: Annotated[str, typer.Argument(help="The stored event's ce_id")],
) -> None:
    """Who signed a stored event (key, agency, gateway); its signature is verified again
    from the stored bytes. Exit 1 when it does not verify, 2 when there is no such event."""
    from simpul.db import make_engine
    from simpul.signing import KeyRing
    from sinks.reports.evidence import verify_stored_event

    settings = checked_settings()
    evidence = verify_stored_event(
        make_engine(settings.store.database_url), KeyRing(settings.public_keys_path), ce_id
    )
    if evidence is None:
        err.print(f"[red]ce_id: no stored event {ce_id!r}[/red]")
        raise typer.Exit(2)
    table = Table(title=f"event {evidence.ce_id}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for name, value in (
        ("type", evidence.type),
        ("source", evidence.source),
        ("received (UTC)", f"{evidence.received_at:%Y-%m-%d %H:%M:%S}"),
        ("key id", evidence.key_id or "-"),
        ("signed by", evidence.signer or "-"),
        ("gateway", evidence.gateway or "- (signed by the agency itself)"),
        ("key now", evidence.key_state_now or "-"),
        ("signature", evidence.signature or "-"),
    ):
        table.add_row(name, value)
    console.print(table)
    if not evidence.verified:
        for problem in evidence.problems:
            err.print(f"[red]NOT VERIFIED[/red] {problem}")
        raise typer.Exit(1)
    console.print("[green]signature verified[/green] over the stored headers, key and value")
