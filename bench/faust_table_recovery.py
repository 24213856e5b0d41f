"""Does a Faust table recover its full state from its changelog, on the embedded broker (Tansu)
or on Apache Kafka (simpul.cli.services.kafka.KafkaCluster)?

Usage: .venv/bin/python bench/faust_table_recovery.py [--engine embedded|kafka] [KEYS] [UPDATES]

Phase 1: a Faust worker counts events per key into a Table (memory store). Phase 2: after SIGTERM,
a fresh worker with the same app id (its agent now ignores events, so only the changelog can fill
the table) recovers; the recovered table is compared with the expected keys and sum of counts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PARTITIONS = 4
TABLE = "counts"


def worker() -> None:
    import faust

    app = faust.App(
        os.environ["APP_ID"],
        broker=f"kafka://{os.environ['BOOTSTRAP']}",
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=PARTITIONS,
        consumer_auto_offset_reset="earliest",
        # Apache Kafka refuses sessions under 6 s (group.min.session.timeout.ms).
        broker_session_timeout=float(os.environ["SESSION_TIMEOUT_S"]),
        broker_rebalance_timeout=float(os.environ["SESSION_TIMEOUT_S"]),
        broker_heartbeat_interval=1,
        web_enabled=False,
    )
    source = app.topic(
        os.environ["SOURCE"], key_type=bytes, value_type=bytes, value_serializer="raw"
    )
    counts = app.Table(TABLE, default=int, partitions=PARTITIONS)
    counting = os.environ["PHASE"] == "1"

    @app.agent(source)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for key, _ in stream.items():
            if counting:
                counts[key.decode()] += 1

    @app.timer(1.0)
    async def report() -> None:
        recovering = app.tables.recovery.in_recovery
        print(f"TABLE keys={len(counts)} sum={sum(counts.values())} recovering={recovering}")

    from faust.worker import Worker

    sys.argv = [sys.argv[0]]
    Worker(app, loglevel="INFO", logfile=os.environ["LOGFILE"]).execute_from_commandline()


def start_worker(env: dict[str, str], phase: int, work: Path) -> tuple[subprocess.Popen, Path]:
    out = work / f"worker{phase}.log"  # Faust sends the worker's stdout to its log file
    env = {**env, "PHASE": str(phase), "LOGFILE": str(out)}
    proc = subprocess.Popen(
        [sys.executable, "-u", __file__, "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, out


def last_table(out: Path) -> tuple[int, int, bool] | None:
    text = out.read_text() if out.exists() else ""
    found = re.findall(r"TABLE keys=(\d+) sum=(\d+) recovering=(\w+)", text)
    return (int(found[-1][0]), int(found[-1][1]), found[-1][2] == "True") if found else None


def wait_table(
    proc: subprocess.Popen, out: Path, want: tuple[int, int], timeout: float
) -> tuple[int, int] | None:
    """Wait until the table reaches `want`, or stays unchanged for 15 s once out of recovery."""
    deadline, seen, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        row = last_table(out)
        if row is None or row[2]:
            continue
        if row[:2] == want:
            return want
        if row[:2] != seen:
            seen, since = row[:2], time.monotonic()
        elif time.monotonic() - since > 15:
            return seen
    return seen


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def changelog_facts(bootstrap: str, topic: str) -> str:
    """Records really in the changelog vs the end offsets (ListOffsets latest) the broker gives."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    last: dict[int, int] = {}
    idle = time.monotonic()
    while time.monotonic() - idle < 3:
        for tp, records in consumer.poll(500).items():
            idle = time.monotonic()
            last[tp.partition] = records[-1].offset
    ends = consumer.end_offsets(tps)
    consumer.close()
    return "  ".join(
        f"p{tp.partition}: last offset+1={last.get(tp.partition, -1) + 1} reported end={ends[tp]}"
        for tp in tps
    )


def open_broker(engine: str, work: Path) -> contextlib.AbstractContextManager[Any]:
    from simpul.cli.services.broker import EmbeddedBroker, free_port
    from simpul.cli.services.kafka import KafkaCluster

    if engine == "kafka":
        return KafkaCluster(work / "kafka")
    return EmbeddedBroker(free_port(), work / "broker.log")


def main() -> None:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["embedded", "kafka"], default="embedded")
    parser.add_argument("keys", type=int, nargs="?", default=2000)
    parser.add_argument("updates", type=int, nargs="?", default=3)
    args = parser.parse_args()
    keys, updates = args.keys, args.updates
    expected = (keys, keys * updates)
    work = Path(tempfile.mkdtemp(prefix="faust-recovery-"))
    app_id = f"recovery-{uuid.uuid4().hex[:6]}"
    source, changelog = f"{app_id}-events", f"{app_id}-{TABLE}-changelog"
    print(f"engine: {args.engine}, {keys} keys x {updates} updates")
    with open_broker(args.engine, work) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (source, changelog)])
        admin.close()
        env = {
            **os.environ,
            "APP_ID": app_id,
            "BOOTSTRAP": broker.bootstrap,
            "SOURCE": source,
            "SESSION_TIMEOUT_S": "6" if args.engine == "kafka" else "3",
        }
        first, out1 = start_worker(env, 1, work)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for round_ in range(updates):
            for k in range(keys):
                producer.send(source, key=f"k{k}".encode(), value=str(round_).encode())
        producer.flush()
        producer.close()
        got1 = wait_table(first, out1, expected, 120)
        print(f"phase 1 (counting): keys, sum = {got1}  expected {expected}")
        time.sleep(3)
        stop(first)
        print(f"changelog {changelog}:\n  {changelog_facts(broker.bootstrap, changelog)}")
        second, out2 = start_worker(env, 2, work)
        got2 = wait_table(second, out2, expected, 120)
        stop(second)
        print(f"phase 2 (recovered): keys, sum = {got2}  expected {expected}")
        log2 = (work / "worker2.log").read_text() if (work / "worker2.log").exists() else ""
        block = log2.split("Highwater for active")[-1].split("Reading Starts At")[0]
        rows = re.findall(r"^\| \S+ +\| (\d+) +\| (-?\d+) +\|", block, re.M)
        print("worker 2 recovers each changelog partition up to offset (Faust highwater - 1):")
        print("  " + "  ".join(f"p{p}: {hw}" for p, hw in rows))
        print("worker 2 errors in recovery:", log2.count("Error in recovery"))
        if got1 != expected:
            verdict = "INCONCLUSIVE: phase 1 never counted all events"
        elif got2 == expected:
            verdict = "PASS: the Faust table recovered its full state from the changelog"
        else:
            verdict = f"FAIL: recovered {got2}, expected {expected}"
        print(f"VERDICT: {verdict}  (logs in {work})")


if __name__ == "__main__":
    worker() if sys.argv[1:2] == ["worker"] else main()
