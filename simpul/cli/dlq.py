"""`simpul dlq`: list and replay dead letters, resume a type the limit paused."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from simpul.cli.common import checked_event_type, checked_settings, checked_topology, console

dlq_app = typer.Typer(
    help="Dead letters: list, replay, and resume a type the limit paused.", no_args_is_help=True
)


@dlq_app.command("list")
def dlq_list(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. permit.issued")],
    limit: Annotated[int, typer.Option(help="Show at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Show the dead letters of an event type with their stage and reason."""
    import json

    from simpul.deadletter import list_dead_letters

    settings = checked_settings()
    etype = checked_event_type(checked_topology(settings), event_type)
    letters = list_dead_letters(settings, etype)
    if as_json:
        for letter in letters[:limit]:
            print(
                json.dumps(
                    {
                        "partition": letter.partition,
                        "offset": letter.offset,
                        "ce_id": letter.ce_id,
                        "source": letter.source,
                        "stage": letter.stage,
                        "code": letter.code,
                        "reason": letter.reason,
                    },
                    ensure_ascii=False,
                )
            )
        return
    table = Table(title=f"{len(letters)} dead letters in {etype.topic('dlq')}")
    table.add_column("p/offset", no_wrap=True)
    table.add_column("ce_id", max_width=12, no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("reason", ratio=1, overflow="fold")
    for letter in letters[:limit]:
        table.add_row(
            f"{letter.partition}/{letter.offset}",
            letter.ce_id or "-",
            (letter.source or "-").removeprefix("/agency/"),
            letter.stage,
            letter.reason,
        )
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. permit.issued")],
    ce_id: Annotated[str | None, typer.Option(help="Replay only this event")] = None,
    reason: Annotated[str | None, typer.Option(help="Replay only this reason code")] = None,
) -> None:
    """Send dead letters back through validation (after fixing their cause)."""
    from simpul.deadletter import replay_dead_letters

    settings = checked_settings()
    etype = checked_event_type(checked_topology(settings), event_type)
    replayed, skipped = replay_dead_letters(settings, etype, ce_id=ce_id, code=reason)
    console.print(
        f"replayed {replayed} dead letters to {etype.topic('in')}"
        + (f" ({skipped} skipped by the filter)" if skipped else "")
    )


@dlq_app.command("resume")
def dlq_resume(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. permit.issued")],
    worker: Annotated[
        str | None, typer.Option(help="Worker base URL; default: this host's worker web port")
    ] = None,
) -> None:
    """Resume a type the dead-letter limit paused (SIMPUL_DLQ_LIMIT_PAUSE), before its cool-down."""
    import httpx

    from simpul.httpauth import auth_headers

    settings = checked_settings()
    etype = checked_event_type(checked_topology(settings), event_type)
    url = (worker or f"http://127.0.0.1:{settings.worker.web_port}").rstrip("/")
    try:
        response = httpx.post(
            f"{url}/dlq-limit",
            json={"type": etype.name},
            headers=auth_headers(settings),
            timeout=10,
        )
    except httpx.HTTPError as error:
        console.print(f"[red]worker at {url} did not answer: {error}[/red]")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        console.print(f"[red]{response.json().get('error', response.text)}[/red]")
        raise typer.Exit(1)
    console.print(f"resumed {etype.name}; the worker reads it again from where it paused")
