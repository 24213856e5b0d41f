"""The `simpul` command line: the one place that wires core, streams, connectors and sinks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from simpul.cli import connectors as cli_connectors
from simpul.cli.audit import audit_app
from simpul.cli.console.command import console_app
from simpul.cli.deliver import deliver
from simpul.cli.keys import agency_app
from simpul.cli.secrets import secrets_app
from simpul.cli.serving import HostOption, PortOption, listening
from simpul.settings import Settings, get_settings
from simpul.topology.model import Topology, TopologyError, load_topology

console = Console()
err = Console(stderr=True)

app = typer.Typer(
    help="Simpul: the integration bus between a city's agency (OPD) systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Kafka topics declared by the topology.", no_args_is_help=True)
db_app = typer.Typer(help="Central store migrations.", no_args_is_help=True)
schemas_app = typer.Typer(help="Avro schemas of the event types.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Dead letters: list, replay, and resume a type the limit paused.", no_args_is_help=True
)
topology_app = typer.Typer(help="The topology file.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
acls_app = typer.Typer(
    help="Broker users and ACLs on Apache Kafka, derived from the topology.", no_args_is_help=True
)
app.add_typer(acls_app, name="acls")
app.add_typer(db_app, name="db")
app.add_typer(schemas_app, name="schemas")
app.add_typer(dlq_app, name="dlq")
app.add_typer(topology_app, name="topology")
app.add_typer(agency_app, name="agency")
app.add_typer(secrets_app, name="secrets")
app.add_typer(cli_connectors.connectors_app, name="connectors")
app.add_typer(cli_connectors.ingress_app, name="ingress")
app.command()(cli_connectors.connect)

from simpul.cli import registry as cli_registry  # noqa: E402  (the sub-commands need `app` defined above)

app.command()(cli_registry.registry)
schemas_app.command("register")(cli_registry.schemas_register)
schemas_app.command("check")(cli_registry.schemas_check)
app.add_typer(audit_app, name="audit")
app.add_typer(console_app, name="console")
app.command()(deliver)


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as error:
        from simpul.topology.model import format_validation_error

        err.print(
            f"[red]settings are invalid (SIMPUL_* variables):[/red]\n"
            f"{format_validation_error(error)}"
        )
        raise typer.Exit(2) from None


def _topology(settings: Settings) -> Topology:
    try:
        return load_topology(settings.paths.topology_file)
    except TopologyError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def _event_type(topology: Topology, name: str):  # type: ignore[no-untyped-def]
    try:
        return topology.event_type(name)
    except KeyError as error:
        err.print(f"[red]{error.args[0]}[/red]")
        raise typer.Exit(2) from None


@app.command()
def broker(
    engine: Annotated[
        str,
        typer.Option(help="embedded (Tansu, memory only) or kafka (Apache Kafka, on disk)"),
    ] = "embedded",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on [default: SIMPUL_BROKER_PORT]")
    ] = None,
    nodes: Annotated[int, typer.Option(min=1, max=5, help="Kafka nodes (kafka only)")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Kafka log directories [default: SIMPUL_KAFKA_DATA_DIR]")
    ] = None,
) -> None:
    """Run a broker in the foreground until Ctrl-C or SIGTERM (then it stops cleanly, exit 0)."""
    import signal
    import subprocess

    from simpul.cli.services.broker import EMBEDDED_LOSES, BrokerError, broker_command, port_is_free

    settings = _settings()
    port = port or settings.broker.port
    if engine not in ("embedded", "kafka"):
        err.print(f"[red]--engine: {engine!r} is not one of: embedded, kafka[/red]")
        raise typer.Exit(2)
    if engine == "kafka":
        _run_kafka(settings, port, nodes, data_dir or settings.kafka.data_dir)
        return
    if nodes != 1:
        err.print("[red]--nodes: the embedded broker runs one node; use --engine kafka[/red]")
        raise typer.Exit(2)
    if not port_is_free(port):
        err.print(
            f"[red]port {port} is already in use[/red]: another broker may be running. "
            "Stop it, or pass --port."
        )
        raise typer.Exit(1)
    try:
        command = broker_command(port)
    except BrokerError as error:
        from rich.markup import escape

        err.print(f"[red]{escape(str(error))}[/red]")  # the hint's [embedded] is no markup
        raise typer.Exit(1) from None
    process = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())  # before anyone is told
    console.print(f"embedded broker on [bold]127.0.0.1:{port}[/bold] (Ctrl-C stops)")
    console.print(f"[yellow]{EMBEDDED_LOSES}[/yellow]")
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
    raise typer.Exit(0 if process.returncode in (0, -signal.SIGTERM) else process.returncode)


def _run_kafka(settings: Settings, port: int, nodes: int, data_dir: Path) -> None:
    import signal
    import threading

    from simpul.cli.services.broker import BrokerError
    from simpul.cli.services.kafka import KAFKA_VERSION, KafkaCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = KafkaCluster(data_dir, nodes, port=port, cache_dir=settings.kafka.cache_dir)
    try:
        console.print(f"Apache Kafka {KAFKA_VERSION}: resolving jars and starting {nodes} node(s)…")
        cluster.start()
    except BrokerError as error:
        cluster.kill()
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"Apache Kafka {KAFKA_VERSION} (KRaft, {nodes} node(s)) on [bold]{cluster.bootstrap}[/bold]"
        f", data in {data_dir} (kept across restarts). Ctrl-C or SIGTERM stops it."
    )
    console.print(
        f"Point Simpul at it: SIMPUL_BROKER_ENGINE=kafka SIMPUL_KAFKA_BOOTSTRAP={cluster.bootstrap}"
    )
    while not stop.wait(0.5):
        for node in cluster.members:
            if not node.running:
                err.print(f"[red]Kafka node {node.node_id} exited[/red]:\n{cluster.log_tail(node)}")
                cluster.stop()
                raise typer.Exit(1)
    cluster.stop()
    console.print("Apache Kafka stopped")


@acls_app.command("plan")
def acls_plan() -> None:
    """Show the users and ACLs the topology asks for (least privilege), without a broker."""
    from simpul.cli import acls

    settings = _settings()
    topology = _topology(settings)
    table = Table("user", "operations", "resource", "name", "pattern")
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for grant in acls.plan(topology, settings.worker.id):
        key = (grant.principal, grant.resource, grant.name, grant.pattern)
        grouped.setdefault(key, []).append(grant.operation)
    for (user, resource, name, pattern), operations in grouped.items():
        table.add_row(user, ",".join(operations), resource, name, pattern)
    console.print(table)


@acls_app.command("apply")
def acls_apply() -> None:
    """Create a SCRAM user per agency and per process, and their ACLs; safe to run again.

    Runs as the broker's admin user (SIMPUL_KAFKA_USERNAME/PASSWORD, SASL PLAIN); passwords
    are generated once into SIMPUL_KAFKA_USERS_FILE (mode 0600) and kept there."""
    from simpul.cli import acls
    from simpul.kafka_clients import kafka_python_options

    settings = _settings()
    if settings.kafka.security_protocol == "PLAINTEXT":
        err.print(
            "[red]SIMPUL_KAFKA_SECURITY_PROTOCOL is PLAINTEXT[/red]: ACLs need a secured Apache "
            "Kafka (SASL_PLAINTEXT or SASL_SSL) and its admin user in SIMPUL_KAFKA_USERNAME"
        )
        raise typer.Exit(2)
    topology = _topology(settings)
    passwords = acls.load_or_create_passwords(settings.kafka.users_file, topology)
    report = acls.apply(topology, kafka_python_options(settings), passwords, settings.worker.id)
    console.print(
        f"{report.users} users; ACLs: {report.acls_created} created, "
        f"{report.acls_existing} already there. Passwords: {settings.kafka.users_file}"
    )


@topics_app.command("apply")
def topics_apply() -> None:
    """Create the topology's topics (in, valid, dlq per event type); safe to run again."""
    from simpul.topics import apply_topics

    settings = _settings()
    changes = apply_topics(_topology(settings), settings)
    table = Table("topic", "partitions", "action")
    for change in changes:
        table.add_row(change.topic, str(change.partitions), change.action)
    console.print(table)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply the central store's migrations (SQLite or PostgreSQL)."""
    from simpul import dbmigrate

    settings = _settings()
    at = dbmigrate.upgrade(settings.store.database_url, revision)
    console.print(f"central store at revision [bold]{at}[/bold]")


@db_app.command("current")
def db_current() -> None:
    """Show the central store's migration revision."""
    from simpul import dbmigrate

    console.print(
        dbmigrate.current(_settings().store.database_url) or "(empty: run `simpul db upgrade`)"
    )


@topology_app.command("check")
def topology_check(
    path: Annotated[
        Path | None, typer.Argument(help="Topology file [default: SIMPUL_TOPOLOGY_FILE]")
    ] = None,
) -> None:
    """Validate a topology file; every error names the field and the reason."""
    try:
        topology = load_topology(path or _settings().paths.topology_file)
    except TopologyError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    from simpul.topology.subscriptions import SubscriptionError, SubscriptionPlan

    try:
        SubscriptionPlan.build(topology, _settings().paths.schemas_dir)
    except SubscriptionError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    connectors = cli_connectors.declared_connectors(_settings(), topology)
    console.print(
        f"{topology.city}: {len(topology.agencies)} agencies, "
        f"{len(topology.event_types)} event types, {len(topology.joins)} joins, "
        f"{len(topology.kelurahan)} kelurahan, {len(connectors)} connectors, "
        f"{len(topology.subscriptions)} subscriptions: OK"
    )


@app.command("init")
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
    target = out or _settings().paths.topology_file.parent / f"{stem}.yaml"
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


@app.command()
def worker(host: HostOption = None, port: PortOption = None) -> None:
    """Run the stream worker: authenticate, validate, dedup, store, forward; /health, /status
    and /metrics on SIMPUL_WORKER_WEB_PORT (Bearer token, see README Security)."""
    from simpul.topology.subscriptions import SubscriptionError, SubscriptionPlan
    from streams.worker import run_worker

    settings = listening(_settings(), "worker_web_port", host, port)
    topology = _topology(settings)
    try:
        SubscriptionPlan.build(topology, settings.paths.schemas_dir)
    except SubscriptionError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    run_worker(settings, topology)


@app.command()
def joins(host: HostOption = None, port: PortOption = None) -> None:
    """Run the joins: derived events (docs/joins.md) from simpul.valid.*; /metrics, /health
    on SIMPUL_JOINS_WEB_PORT."""
    from streams.joins.service import run_joins

    settings = listening(_settings(), "joins_web_port", host, port)
    run_joins(settings, _topology(settings))


@app.command()
def simulate(
    rate: Annotated[float, typer.Option(min=0.1, help="Events per second")] = 50.0,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds to run")] = 10.0,
    duplicates: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share re-sent with the same ce_id")
    ] = 0.05,
    invalid: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share deliberately invalid")
    ] = 0.02,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same city)")] = 7271,
) -> None:
    """Publish realistic generated events from every onboarded agency of the topology's city."""
    report = run_simulation(
        _settings(), rate=rate, duration=duration, duplicates=duplicates, invalid=invalid, seed=seed
    )
    table = Table("event type", "published", "duplicates", "invalid", title="simulated")
    for name in sorted(set(report.published) | set(report.invalid) | set(report.duplicates)):
        table.add_row(
            name,
            str(report.published[name]),
            str(report.duplicates[name]),
            str(report.invalid[name]),
        )
    console.print(table)


def run_simulation(
    settings: Settings,
    *,
    rate: float,
    duration: float,
    duplicates: float,
    invalid: float,
    seed: int,
    quiet: bool = False,
):  # type: ignore[no-untyped-def]
    from simpul.catalog import EventCatalog
    from simpul.cli.simulate import PaluData
    from simpul.cli.simulate import simulate as run
    from simpul.publisher import PublisherPool
    from simpul.registry.client import make_resolver

    topology = _topology(settings)
    catalog = EventCatalog(topology, make_resolver(settings))
    data = PaluData(topology, seed=seed)
    with (
        PublisherPool(settings, catalog) as publishers,
        Progress(
            TextColumn("publishing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        ) as progress,
    ):
        task = progress.add_task("publish", total=int(rate * duration))
        report = run(
            publishers,
            data,
            rate=rate,
            duration=duration,
            duplicates=duplicates,
            invalid=invalid,
            on_tick=lambda done, _: progress.update(task, completed=done),
        )
    return report


@dlq_app.command("list")
def dlq_list(
    event_type: Annotated[str, typer.Argument(help="Event type, e.g. permit.issued")],
    limit: Annotated[int, typer.Option(help="Show at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Show the dead letters of an event type with their stage and reason."""
    import json

    from simpul.deadletter import list_dead_letters

    settings = _settings()
    etype = _event_type(_topology(settings), event_type)
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

    settings = _settings()
    etype = _event_type(_topology(settings), event_type)
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

    settings = _settings()
    etype = _event_type(_topology(settings), event_type)
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


@app.command()
def demo(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of simulated traffic")] = 30.0,
    rate: Annotated[float, typer.Option(min=1, help="Events per second")] = 100.0,
    city: Annotated[
        str | None,
        typer.Option(help="Run topology/<city>.yaml: palu, kupang, malang, batu, yogyakarta"),
    ] = None,
) -> None:
    """Start broker, topics, store and worker; simulate all agencies; print what arrived; stop."""
    from simpul.cli.demo import city_topology, run_demo

    try:
        city_topology(city, _settings().paths.topology_file)
    except FileNotFoundError as error:
        err.print(str(error), markup=False, style="red", soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_demo(console, duration=duration, rate=rate, city=city))


from simpul.cli.operations import (  # noqa: E402
    export,
    payroll_control,
    readiness,
    staff_reconcile,
    status,
)

app.command()(status)
app.command()(readiness)
app.command()(export)
staff_app = typer.Typer(help="Staff master data (SIMPEG and BKN's register).", no_args_is_help=True)
app.add_typer(staff_app, name="staff")
staff_app.command("reconcile")(staff_reconcile)
payroll_app = typer.Typer(help="Payroll basis for BKD (TPP).", no_args_is_help=True)
app.add_typer(payroll_app, name="payroll")
payroll_app.command("control")(payroll_control)


def main() -> None:
    from simpul.identifiers import mask_log_records

    mask_log_records()  # no raw NIK/NIP in any process's log
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
