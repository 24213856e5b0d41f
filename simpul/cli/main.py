"""The `simpul` command line: assembles the command groups into one typer app.

Each group lives in its own module of `simpul.cli`; what they share (consoles, the checked
settings and topology, ``--host``/``--port``) is `simpul.cli.common`. This module imports
them and nothing imports it, so the modules form a tree.
"""

from __future__ import annotations

import sys

import typer

from simpul.cli import connectors, operations, registry, topology
from simpul.cli.acls import acls_app
from simpul.cli.audit import audit_app
from simpul.cli.broker import broker
from simpul.cli.console.command import console_app
from simpul.cli.db import db_app
from simpul.cli.deliver import deliver
from simpul.cli.demo import demo
from simpul.cli.dlq import dlq_app
from simpul.cli.keys import agency_app
from simpul.cli.secrets import secrets_app
from simpul.cli.simulate import simulate_command
from simpul.cli.topics import topics_app
from simpul.cli.workers import joins, worker

app = typer.Typer(
    help="Simpul: the integration bus between a city's agency (OPD) systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(topics_app, name="topics")
app.add_typer(acls_app, name="acls")
app.add_typer(db_app, name="db")
app.add_typer(registry.schemas_app, name="schemas")
app.add_typer(dlq_app, name="dlq")
app.add_typer(topology.topology_app, name="topology")
app.add_typer(agency_app, name="agency")
app.add_typer(secrets_app, name="secrets")
app.add_typer(connectors.connectors_app, name="connectors")
app.add_typer(connectors.ingress_app, name="ingress")
app.command()(connectors.connect)
app.command()(registry.registry)
app.add_typer(audit_app, name="audit")
app.add_typer(console_app, name="console")
app.command()(deliver)
app.command()(broker)
app.command("init")(topology.init)
app.command()(worker)
app.command()(joins)
app.command("simulate")(simulate_command)
app.command()(demo)
app.command()(operations.status)
app.command()(operations.readiness)
app.command()(operations.export)
app.add_typer(operations.staff_app, name="staff")
app.add_typer(operations.payroll_app, name="payroll")


def main() -> None:
    from simpul.identifiers import mask_log_records

    mask_log_records()  # no raw NIK/NIP in any process's log
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
