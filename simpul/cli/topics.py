"""`simpul topics apply`: declare the topology's topics on the broker."""

from __future__ import annotations

import typer
from rich.table import Table

from simpul.cli.common import checked_settings, checked_topology, console

topics_app = typer.Typer(help="Kafka topics declared by the topology.", no_args_is_help=True)


@topics_app.command("apply")
def topics_apply() -> None:
    """Create the topology's topics (in, valid, dlq per event type); safe to run again."""
    from simpul.topics import apply_topics

    settings = checked_settings()
    changes = apply_topics(checked_topology(settings), settings)
    table = Table("topic", "partitions", "action")
    for change in changes:
        table.add_row(change.topic, str(change.partitions), change.action)
    console.print(table)
