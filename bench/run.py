"""`make bench`: Simpul's full path against a bare Faust agent, on the embedded broker.

One run, one machine: every figure is reported with its ratio to the bare-Faust baseline
measured in the same run, because absolute numbers move with the machine's load.
Results are printed and written to bench/results/<time>.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from statistics import quantiles

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpul import dbmigrate  # noqa: E402
from simpul.broker import EmbeddedBroker, free_port  # noqa: E402
from simpul.db import make_engine  # noqa: E402
from simpul.envelope import Envelope  # noqa: E402
from simpul.registry import SchemaResolver, SchemaStore, register_all  # noqa: E402
from simpul.settings import Settings  # noqa: E402
from simpul.simulate import PaluData  # noqa: E402
from simpul.topics import apply_topics  # noqa: E402
from simpul.topology import load_topology  # noqa: E402
from tests.helpers import install_test_keys, sign  # noqa: E402

install_test_keys(ROOT / "topology" / "palu.yaml")  # signing keys; the workers inherit them

N = int(os.environ.get("BENCH_EVENTS", "100000"))
TYPE = "social.recipient.updated"
TOPIC = f"simpul.in.{TYPE}"
PG_ADMIN = os.environ.get("SIMPUL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORK = Path(tempfile.mkdtemp(prefix="simpul-bench-"))
TOPOLOGY = load_topology(ROOT / "topology" / "palu.yaml")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def preload(bootstrap: str, schema_db: str) -> float:
    """Produce N distinct valid events with librdkafka (the fastest client here)."""
    from confluent_kafka import Producer

    store = SchemaStore(make_engine(schema_db))
    schema = SchemaResolver(store).latest(TOPOLOGY.event_type(TYPE).subject)
    data = PaluData(TOPOLOGY, seed=11, residents_count=20_000)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "enable.idempotence": False,
            "queue.buffering.max.messages": 200_000,
        }
    )
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    started = time.perf_counter()
    for i in range(N):
        when = base + dt.timedelta(milliseconds=i)
        payload = data.payload(TYPE, when)
        envelope = Envelope(type=TYPE, source="/agency/dinsos", time=when)
        key, value = payload["nik"].encode(), schema.encode(payload)
        headers = sign("dinsos", envelope.to_headers(), key, value)  # the worker verifies
        while True:
            try:
                producer.produce(TOPIC, key=key, value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return N / (time.perf_counter() - started)


def new_pg_database() -> str:
    name = f"simpul_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def prepared_store(kind: str) -> str:
    if kind == "postgresql":
        url = new_pg_database()
    else:
        url = f"sqlite:///{WORK / f'{uuid.uuid4().hex}.db'}"
    dbmigrate.upgrade(url)
    register_all(SchemaStore(make_engine(url)), TOPOLOGY, ROOT / "schemas")
    return url


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_worker(bootstrap: str, url: str, group: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "SIMPUL_KAFKA_BOOTSTRAP": bootstrap,
        "SIMPUL_DATABASE_URL": url,
        "SIMPUL_WORKER_WEB_PORT": str(port),
        "SIMPUL_WORKER_ID": group,
        "SIMPUL_SESSION_TIMEOUT_S": "3",
        "SIMPUL_REBALANCE_TIMEOUT_S": "3",
        "SIMPUL_LOG_LEVEL": "warning",
        "SIMPUL_DATA_DIR": str(WORK),
        # Ids straight from the central store: this measures the pipeline, not the registry
        # (once cached, both paths cost the same per message).
        "SIMPUL_REGISTRY_URL": "",
    }
    log = open(WORK / f"{group}-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "simpul", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return process, port


def stored_count(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.scalar(text("select count(*) from event_log")) or 0


def full_path(bootstrap: str, kind: str, workers: int) -> dict[str, float]:
    url = prepared_store(kind)
    engine = make_engine(url)
    group = f"bench-{kind}-{workers}-{uuid.uuid4().hex[:4]}"
    procs = [start_worker(bootstrap, url, group) for _ in range(workers)]
    first_at = cpu_first = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        count = stored_count(engine)
        if count and first_at is None:
            first_at, cpu_first = time.perf_counter(), sum(cpu_seconds(p.pid) for p, _ in procs)
            first_count = count
        if count >= N:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - first_at  # type: ignore[operator]
    cpu = sum(cpu_seconds(p.pid) for p, _ in procs) - cpu_first  # type: ignore[operator]
    rss = max(rss_mb(p.pid) for p, _ in procs)
    for p, _ in procs:
        p.send_signal(signal.SIGTERM)
    for p, _ in procs:
        p.wait(60)
    engine.dispose()
    if kind == "postgresql":
        drop_pg_database(url)
    flowing = N - first_count  # type: ignore[possibly-undefined]
    return {
        "events_per_s": flowing / seconds,
        "seconds": seconds,
        "cpu_seconds_per_100k": cpu * 100_000 / flowing,
        "rss_mb_max": rss,
    }


def latency_and_restart(bootstrap: str) -> dict[str, float]:
    """p50/p99 publish-to-stored at a steady 1 000 events/s, then restart-to-processing."""
    from simpul.catalog import EventCatalog
    from simpul.publisher import Publisher

    url = prepared_store("postgresql")
    engine = make_engine(url)
    group = f"bench-latency-{uuid.uuid4().hex[:4]}"
    # Start after the pre-loaded backlog: a fresh group would read it from the beginning.
    apply_group_at_end(bootstrap, f"{group}.ingest")
    process, port = start_worker(bootstrap, url, group)
    wait_assigned(port)
    settings = Settings(kafka_bootstrap=bootstrap, database_url=url)
    catalog = EventCatalog(TOPOLOGY, SchemaResolver(SchemaStore(engine)))
    publisher = Publisher("dinsos", settings=settings, catalog=catalog)
    data = PaluData(TOPOLOGY, seed=5)
    rate, seconds = 1000, 15
    run_started = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for i in range(rate * seconds):
        due = started + i / rate
        if (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        publisher.publish(TYPE, data.payload(TYPE, dt.datetime.now(dt.UTC)))
    publisher.flush()
    deadline = time.monotonic() + 60
    while stored_count(engine) < rate * seconds and time.monotonic() < deadline:
        time.sleep(0.2)
    with engine.connect() as conn:
        rows = conn.execute(
            text("select published_at, stored_at from event_log where published_at >= :t"),
            {"t": run_started},
        ).all()
    latencies = sorted((s - p).total_seconds() for p, s in rows)
    cuts = quantiles(latencies, n=100)
    # Restart: SIGTERM, start again, measure until an event published after the start is stored.
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    restarted = time.perf_counter()
    process, port = start_worker(bootstrap, url, group)
    marker_ids: list[str] = []
    deadline = time.monotonic() + 60
    restart_seconds = float("nan")
    while time.monotonic() < deadline:
        marker = str(uuid.uuid4())
        marker_ids.append(marker)
        publisher.publish(TYPE, data.payload(TYPE, dt.datetime.now(dt.UTC)), id=marker)
        publisher.flush()
        with engine.connect() as conn:
            found = conn.scalar(
                text("select count(*) from event_log where ce_id = any(:ids)"), {"ids": marker_ids}
            )
        if found:
            restart_seconds = time.perf_counter() - restarted
            break
        time.sleep(0.1)
    rss = rss_mb(process.pid)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    publisher.close()
    engine.dispose()
    drop_pg_database(url)
    return {
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "events": len(latencies),
        "restart_to_processing_s": restart_seconds,
        "rss_mb_after_restart": rss,
    }


def apply_group_at_end(bootstrap: str, group: str) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    offsets = {}
    for event_type in TOPOLOGY.event_types:
        topic = event_type.topic("in")
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            offsets[tp] = OffsetAndMetadata(consumer.position(tp), "", -1)
    # Tansu's end offset can read low (first offset of the last batch); the few records left
    # before it are stored too and count as latency samples only if published in this run.
    consumer.commit(offsets)
    consumer.close()


def wait_assigned(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if json.loads(r.read()).get("assigned_partitions", 0) > 0:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("worker got no partitions")


def main() -> None:
    with EmbeddedBroker(free_port(), WORK / "broker.log") as broker:
        apply_topics(TOPOLOGY, broker.bootstrap)
        schema_db = prepared_store("sqlite")
        say(f"pre-loading {N} events into {TOPIC}")
        produce_rate = preload(broker.bootstrap, schema_db)
        say(f"pre-loaded at {produce_rate:,.0f} events/s")
        result_file = WORK / "baseline.json"
        say("baseline: bare Faust agent doing nothing")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "faust_baseline.py"),
                broker.bootstrap,
                TOPIC,
                str(N),
                str(result_file),
            ],
            timeout=900,
            check=True,
        )
        baseline = json.loads(result_file.read_text())
        say(f"baseline {baseline['events_per_s']:,.0f} events/s")
        runs: dict[str, dict[str, float]] = {}
        for kind, workers in (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("sqlite", 2)):
            name = f"simpul full path → {kind}, {workers} worker{'s' if workers > 1 else ''}"
            say(name)
            runs[name] = full_path(broker.bootstrap, kind, workers)
            say(f"  {runs[name]['events_per_s']:,.0f} events/s")
        say("latency at 1 000 events/s and restart (PostgreSQL, 1 worker)")
        latency = latency_and_restart(broker.bootstrap)

    base = baseline["events_per_s"]
    print()
    print(f"{N:,} events of {TYPE}, embedded broker, {os.cpu_count()} cores, one run")
    print(f"{'run':46} {'events/s':>10} {'× baseline':>11} {'CPU s/100k':>11} {'RSS MB':>8}")
    base_cpu = baseline["cpu_seconds"] * 100_000 / N
    print(
        f"{'baseline: bare Faust agent, does nothing':46} {base:>10,.0f} {1:>10.2f}x "
        f"{base_cpu:>11.1f} {'':>8}"
    )
    for name, run in runs.items():
        print(
            f"{name:46} {run['events_per_s']:>10,.0f} {run['events_per_s'] / base:>10.2f}x "
            f"{run['cpu_seconds_per_100k']:>11.1f} {run['rss_mb_max']:>8.0f}"
        )
    print(
        f"\npublish→stored at 1 000 events/s: p50 {latency['p50_ms']:.0f} ms, "
        f"p99 {latency['p99_ms']:.0f} ms ({latency['events']} events)"
    )
    print(
        f"restart to processing: {latency['restart_to_processing_s']:.1f} s; "
        f"worker RSS after restart {latency['rss_mb_after_restart']:.0f} MB"
    )
    out = ROOT / "bench" / "results" / f"broker-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "cores": os.cpu_count(),
                "events": N,
                "preload_events_per_s": produce_rate,
                "baseline": baseline,
                "runs": {
                    k: {**v, "ratio_to_baseline": v["events_per_s"] / base} for k, v in runs.items()
                },
                "latency_and_restart": latency,
            },
            indent=2,
        )
    )
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
