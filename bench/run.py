"""`make bench`: Simpul's real path against Quix Streams and bare Faust, in one run.

    .venv/bin/python bench/run.py [--events 100000] [--broker tansu|kafka] [--workloads a,b,c]

Workloads, each on a fresh broker with ``--events`` events of which 10 % are re-sent copies
(same key, value and ``ce_id``) of a recent event:

* (a) one type without subscribers, ``social.recipient.updated``;
* (b) ``permit.issued`` with its subscriptions (fan-out to the inboxes, audit rows);
* (c) the Palu mix: the six agency types in the simulator's proportions, every subscription,
  the joins process, and the webhook deliverer against a local HTTP receiver.

On each, the same storage job runs in turn on its own fresh PostgreSQL database of the same
server: Quix Streams (bench/quix_pipeline.py), a bare Faust agent that does nothing
(bench/faust_baseline.py), and Simpul with one worker (and two on (b)). Reported: steady
events/s (from the first stored row to the last), CPU µs per event (all of the pipeline's
processes) and by stage (the worker's ``simpul_stage_cpu_seconds_total``), resident memory,
and every throughput as a ratio to Quix's from the same run. Then, on the mix at a steady
1 000 events/s: p50/p99 publish→stored and publish→webhook-delivered, and restart to
processing. Results go to bench/results/run-<time>.json and a PNG chart beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import itertools
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import quantiles
from typing import Any

import fastavro
import yaml
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpul import dbmigrate  # noqa: E402
from simpul.cli.services.broker import free_port  # noqa: E402
from simpul.db import make_engine  # noqa: E402
from simpul.envelope import Envelope  # noqa: E402
from simpul.signing import Signer  # noqa: E402
from tests.support.signing import auth, install_test_keys  # noqa: E402
from tests.support.signing import signer as key_signer  # noqa: E402

install_test_keys(ROOT / "topology" / "palu.yaml")  # signing keys; the workers inherit them
from bench.private_pg import admin_url  # noqa: E402
from simpul.citydata import WEIGHTS, PaluData  # noqa: E402
from simpul.registry.resolver import SchemaResolver  # noqa: E402
from simpul.registry.store import SchemaStore, register_all  # noqa: E402
from simpul.topics import apply_topics  # noqa: E402
from simpul.topology.model import load_topology  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="simpul-bench-"))
TOPOLOGY_FILE = ROOT / "topology" / "palu.yaml"
TOPOLOGY = load_topology(TOPOLOGY_FILE)
SOURCE_TYPES = list(WEIGHTS)  # the six agency types
DUPLICATES = 0.10
PROFILE = False  # --profile
ENGINE = "kafka"  # --broker
SIGNING = "batch"  # --signing
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
#: The Python that runs Quix Streams: its own venv (`make bench` makes .venv-rivals), since
#: Quix pins pydantic below the version the tests run on.
RIVALS_VENV_PYTHON = ROOT / ".venv-rivals" / "bin" / "python"
RIVAL_PYTHON = os.environ.get("SIMPUL_BENCH_RIVAL_PYTHON") or (
    str(RIVALS_VENV_PYTHON) if RIVALS_VENV_PYTHON.exists() else sys.executable
)
WORKLOADS = {
    "a": ("one type, no subscriber (social.recipient.updated)", {"social.recipient.updated": 1}),
    "b": ("permit.issued with its subscriptions (fan-out, audit)", {"permit.issued": 1}),
    "c": ("Palu mix: six types, every subscription, joins, webhooks", WEIGHTS),
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the broker -------------------------------------------------------------------------


@contextmanager
def broker(engine: str) -> Iterator[str]:
    """A fresh broker of the named engine; yields its bootstrap address."""
    if engine == "tansu":
        from simpul.cli.services.broker import EmbeddedBroker

        with EmbeddedBroker(free_port(), WORK / f"broker-{uuid.uuid4().hex[:4]}.log") as running:
            yield running.bootstrap
        return
    if engine == "kafka":
        from simpul.cli.services.kafka import KafkaCluster
        from tests.support.brokers import warm_up  # one place: creates __consumer_offsets

        cluster = KafkaCluster(
            WORK / f"kafka-{uuid.uuid4().hex[:4]}",
            1,
            overrides={"offsets.topic.num.partitions": "4"},
        )
        cluster.start()
        try:
            warm_up(cluster)  # now, not in the first measured run
            yield cluster.bootstrap
        finally:
            cluster.stop()
        return
    raise SystemExit(f"--broker: unknown engine {engine!r} (tansu or kafka)")


# --- the store --------------------------------------------------------------------------


def new_database() -> str:
    name = f"simpul_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url().rsplit("/", 1)[0] + f"/{name}"
    dbmigrate.upgrade(url)
    register_all(SchemaStore(make_engine(url)), TOPOLOGY, ROOT / "schemas")
    return url


def drop_database(url: str) -> None:
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def stored(engine: Any, types: list[str]) -> int:
    with engine.connect() as conn:
        return conn.scalar(
            text("select count(*) from event_log where type = any(:t)"), {"t": types}
        )


# --- events -----------------------------------------------------------------------------


@dataclass
class Preloaded:
    topics: list[str]
    types: list[str]
    total: int
    distinct: int
    produce_per_s: float
    decode_us: float  # fastavro decode of these very messages, µs per event
    sample: list[tuple[Any, bytes]] = field(default_factory=list)


def producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": False,
            "queue.buffering.max.messages": 500_000,
        }
    )


@functools.cache
def signer(owner: str) -> Signer:
    """An agency's signer, made once, as its publisher keeps it (the tests' helper reads the
    key file on every call: 200 µs an event, a fifth of a core at 1 000 events/s)."""
    return key_signer(owner)


def sign(
    owner: str, headers: Sequence[tuple[str, bytes]], key: bytes | None, value: bytes | None
) -> list[tuple[str, bytes]]:
    return signer(owner).sign(headers, key, value)


class Events:
    """Valid events of the given types in the given proportions, as (topic, key, value,
    headers), each from the agency that may send it."""

    def __init__(self, url: str, weights: dict[str, int], seed: int) -> None:
        resolver = SchemaResolver(SchemaStore(make_engine(url)))
        self.schemas = {t: resolver.latest(TOPOLOGY.event_type(t).subject) for t in weights}
        self.data = PaluData(TOPOLOGY, seed=seed, residents_count=20_000)
        self.rng = random.Random(seed)
        self.types = list(weights)
        self.weights = [weights[t] for t in self.types]

    def make(self, when: dt.datetime) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
        agency, topic, key, value, headers = self.unsigned(when)
        return topic, key, value, sign(agency, headers, key, value)  # the worker verifies first

    def unsigned(self, when: dt.datetime) -> tuple[str, str, bytes, bytes, list[tuple[str, bytes]]]:
        """agency, topic, key, value, headers: an event before its agency signs it."""
        event_type = self.rng.choices(self.types, self.weights)[0]
        payload = self.data.payload(event_type, when)
        agency = self.data.producer_of(event_type, payload)
        envelope = Envelope(type=event_type, source=f"/agency/{agency}", time=when)
        key = str(payload[TOPOLOGY.event_type(event_type).key]).encode()
        value = self.schemas[event_type].encode(payload)
        return agency, f"simpul.in.{event_type}", key, value, envelope.to_headers()

    def signed(
        self, when: dt.datetime, count: int
    ) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
        """``count`` events as their agencies send a backlog (`SIGNING`): each agency signs
        its events of every 1 024 in batches (`Publisher.publish_many`), or each alone."""
        out: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        for start in range(0, count, 1024):
            block = [
                self.unsigned(when + dt.timedelta(milliseconds=start + i))
                for i in range(min(1024, count - start))
            ]
            headers: list[list[tuple[str, bytes]]] = [[] for _ in block]
            for agency in {b[0] for b in block}:
                mine = [i for i, b in enumerate(block) if b[0] == agency]
                if SIGNING == "batch":
                    batch = [(block[i][4], block[i][2], block[i][3]) for i in mine]
                    for i, signed in zip(mine, signer(agency).sign_batch(batch), strict=True):
                        headers[i] = signed
                else:
                    for i in mine:
                        headers[i] = sign(agency, block[i][4], block[i][2], block[i][3])
            out.extend((b[1], b[2], b[3], h) for b, h in zip(block, headers, strict=True))
        return out


def preload(bootstrap: str, url: str, weights: dict[str, int], total: int) -> Preloaded:
    """``total`` messages, a tenth of them copies of one of the last 5 000 events."""
    events = Events(url, weights, seed=11)
    out = producer(bootstrap)
    rng = random.Random(7)
    copies = [i > 0 and rng.random() < DUPLICATES for i in range(total)]
    distinct = copies.count(False)
    unique = events.signed(dt.datetime(2026, 11, 1, tzinfo=dt.UTC), distinct)
    recent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
    started = time.perf_counter()
    for i in range(total):
        if copies[i]:
            message = recent[rng.randrange(max(0, len(recent) - 5000), len(recent))]
        else:
            message = unique[len(recent)]
            recent.append(message)
        topic, key, value, headers = message
        while True:
            try:
                out.produce(topic, key=key, value=value, headers=headers)
                break
            except BufferError:
                out.poll(0.05)
        if i % 10_000 == 0:
            out.poll(0)
    out.flush(120)
    rate = total / (time.perf_counter() - started)
    parsed = {s.id: s.parsed for s in events.schemas.values()}
    sample = [(parsed[int.from_bytes(v[1:5], "big")], v) for _, _, v, _ in recent[:20_000]]
    began = time.process_time()
    for schema, value in sample:
        fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)
    decode_us = (time.process_time() - began) * 1e6 / len(sample)
    return Preloaded(
        sorted({m[0] for m in recent}), list(weights), total, distinct, rate, decode_us
    )


# --- processes --------------------------------------------------------------------------


def cpu_seconds(pid: int, task: Path | None = None) -> float:
    """CPU seconds of a process, or of one of its threads (``task``: /proc/<pid>/task/<tid>)."""
    fields = (task or Path(f"/proc/{pid}")).joinpath("stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jit_seconds(pid: int) -> float:
    """CPU seconds of a JVM's JIT compiler threads (C1, C2): a broker still warming up."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(("C1 Compiler", "C2 Compiler")):
                total += cpu_seconds(pid, task)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def machine_cpu(procs: list[Proc]) -> dict[str, float]:
    """CPU seconds so far of the broker (java), PostgreSQL, this bench process (the agencies'
    producer) and the pipeline's ``procs``, by name: the machine's CPU, accounted for."""
    out: dict[str, float] = defaultdict(float)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            name = Path(command[0].decode(errors="replace")).name
            if name == "java" and any(b"kafka" in part for part in command):
                out["broker"] += cpu_seconds(int(entry.name))
                out["broker: JIT compiler"] += jit_seconds(int(entry.name))
            elif name.startswith("postgres"):
                out["postgres"] += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    out["bench (agencies)"] = cpu_seconds(os.getpid())
    for proc in procs:
        out[proc.name] += cpu_seconds(proc.process.pid)  # the workers together
    return dict(out)


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    web_port: int | None = None
    name: str = ""


def spawn(args: list[str], env: dict[str, str], name: str, web_port: int | None = None) -> Proc:
    log = open(WORK / f"{name}-{uuid.uuid4().hex[:4]}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Proc(process, web_port, name)


def simpul_env(bootstrap: str, url: str, worker_id: str, topology: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SIMPUL_KAFKA_BOOTSTRAP": bootstrap,
        "SIMPUL_DATABASE_URL": url,
        "SIMPUL_WORKER_ID": worker_id,
        "SIMPUL_TOPOLOGY_FILE": str(topology),
        "SIMPUL_BROKER_ENGINE": "kafka" if ENGINE == "kafka" else "embedded",
        # Short on Tansu (its first fetch waits half of it); Kafka's smallest allowed.
        "SIMPUL_SESSION_TIMEOUT_S": "6" if ENGINE == "kafka" else "3",
        "SIMPUL_REBALANCE_TIMEOUT_S": "6" if ENGINE == "kafka" else "3",
        "SIMPUL_LOG_LEVEL": "warning",
        "SIMPUL_DATA_DIR": str(WORK / worker_id),
        # Ids straight from the central store: this measures the pipeline, not the registry
        # (once cached, both paths cost the same per message).
        "SIMPUL_REGISTRY_URL": "",
        "SIMPUL_WEBHOOK_SECRET_DINSOS": WEBHOOK_SECRET,
        "SIMPUL_WEBHOOK_SECRET_BENCH": WEBHOOK_SECRET,
    }


def simpul_processes(
    bootstrap: str, url: str, workers: int, topology: Path, extras: bool, worker_id: str = ""
) -> list[Proc]:
    worker_id = worker_id or f"bench-{uuid.uuid4().hex[:6]}"
    procs = []
    for _ in range(workers):
        port = free_port()
        env = {**simpul_env(bootstrap, url, worker_id, topology)}
        env["SIMPUL_WORKER_WEB_PORT"] = str(port)
        procs.append(spawn([sys.executable, "-m", "simpul", "worker"], env, "worker", port))
    if extras:
        for command in ("joins", "deliver"):
            env = {**simpul_env(bootstrap, url, worker_id, topology)}
            env["SIMPUL_WORKER_WEB_PORT"] = str(free_port())
            procs.append(spawn([sys.executable, "-m", "simpul", command], env, command))
    return procs


def stop(procs: list[Proc]) -> None:
    for p in procs:
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.process.wait(60)
        except subprocess.TimeoutExpired:
            p.process.kill()


STAGE_LINE = re.compile(r'^simpul_stage_cpu_seconds_total\{stage="(\w+)"\} ([0-9.e+-]+)$', re.M)


def stage_cpu(procs: list[Proc]) -> dict[str, float]:
    total: dict[str, float] = {}
    for p in procs:
        if p.web_port is None:
            continue
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{p.web_port}/metrics", headers=auth()),
                timeout=5,
            ) as r:
                body = r.read().decode()
        except OSError:
            continue
        for stage, value in STAGE_LINE.findall(body):
            total[stage] = total.get(stage, 0.0) + float(value)
    return total


def measure(
    procs: list[Proc], url: str, load: Preloaded, marker: Path | None = None
) -> dict[str, Any]:
    """Throughput from the first message consumed to the last row stored, and what it cost.

    Every pipeline is timed alike, whatever its commit cadence (Quix flushes its sink every
    5 s, so its stored rows grow in steps): the start is the first message a pipeline took
    (Simpul: the earliest ``received_at`` in event_log, stamped when a batch arrives; Quix:
    the time it noted on its first message), the end when the last row is visible (polled
    every 0.1 s), less, for Quix, the idle wait between its last message and the checkpoint
    that flushes it (a steady stream keeps it busy meanwhile). CPU is sampled every 0.1 s
    and read at the start by interpolation, so imports and connecting are not charged.
    """
    engine = make_engine(url)
    pids = [p.process.pid for p in procs]
    samples: list[tuple[float, list[float]]] = []  # (unix time, CPU seconds of each process)
    rss = 0.0
    count = 0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        samples.append((time.time(), [cpu_seconds(pid) for pid in pids]))
        count = stored(engine, load.types)
        visible = time.time()
        rss = max(rss, sum(rss_mb(pid) for pid in pids))
        if count >= load.distinct:
            break
        if any(p.process.poll() is not None for p in procs):
            raise RuntimeError(f"a pipeline process exited early; logs in {WORK}")
        time.sleep(0.1)
    else:
        raise TimeoutError(f"stored {count} of {load.distinct} in 900s; logs in {WORK}")
    cpu_ends = [cpu_seconds(pid) for pid in pids]
    stages = stage_cpu(procs)
    with engine.connect() as conn:
        first_received = conn.scalar(
            text("select min(received_at) from event_log where type = any(:t)"),
            {"t": load.types},
        )
    engine.dispose()
    end = visible
    if marker is not None:
        began = float(Path(f"{marker}.first").read_text())
        last = float(Path(f"{marker}.last").read_text())
        writes = [float(w) for w in Path(f"{marker}.writes").read_text().split()]
        flush = min((w for w in writes if w >= last), default=last)
        end -= flush - last
    else:
        began = first_received.timestamp()
    seconds = end - began
    cpu_starts = samples[0][1]
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= began <= t1:
            share = (began - t0) / max(t1 - t0, 1e-9)
            cpu_starts = [a + (b - a) * share for a, b in zip(c0, c1, strict=True)]
            break
        if t0 <= began:
            cpu_starts = c1
    by_process = [end - start for start, end in zip(cpu_starts, cpu_ends, strict=True)]
    cpu = sum(by_process)
    result: dict[str, Any] = {
        "events_per_s": load.total / seconds,
        "seconds": seconds,
        "cpu_us_per_event": cpu * 1e6 / load.total,
        "rss_mb": rss,
    }
    if len(procs) > 1:
        result["cpu_us_per_event_by_process"] = {
            f"{p.name or 'process'} {i}": c * 1e6 / load.total
            for i, (p, c) in enumerate(zip(procs, by_process, strict=True))
        }
    if stages:
        per = {stage: value * 1e6 / load.total for stage, value in stages.items()}
        per["decode (bench process, same messages)"] = load.decode_us
        per["validate (without decode)"] = max(0.0, per.get("validate", 0.0) - load.decode_us)
        per["other (fetch, event loop, clients, joins, deliverer)"] = (
            (cpu - sum(stages.values())) * 1e6 / load.total
        )
        result["stage_cpu_us_per_event"] = per
    return result


@functools.cache
def rival_python() -> str:
    """`RIVAL_PYTHON`, once it is known to import Quix Streams; else a clear stop."""
    found = subprocess.run([RIVAL_PYTHON, "-c", "import quixstreams"], capture_output=True)
    if found.returncode != 0:
        raise SystemExit(
            f"SIMPUL_BENCH_RIVAL_PYTHON: {RIVAL_PYTHON} cannot import quixstreams; "
            "`make bench` installs it in .venv-rivals (pip install -e '.[rivals]')"
        )
    return RIVAL_PYTHON


def run_quix(bootstrap: str, load: Preloaded) -> dict[str, Any]:
    python = rival_python()
    url = new_database()
    marker = WORK / f"quix-{uuid.uuid4().hex[:4]}"
    proc = spawn(
        [
            python,
            str(ROOT / "bench" / "quix_pipeline.py"),
            bootstrap,
            url,
            ",".join(load.topics),
            str(marker),
            str(load.total),
        ],
        dict(os.environ),
        "quix",
    )
    try:
        return measure([proc], url, load, marker)
    finally:
        stop([proc])
        drop_database(url)


def run_faust(bootstrap: str, load: Preloaded) -> dict[str, Any]:
    result_file = WORK / f"faust-{uuid.uuid4().hex[:4]}.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "faust_baseline.py"),
            bootstrap,
            ",".join(load.topics),
            str(load.total),
            str(result_file),
        ],
        timeout=900,
        check=True,
    )
    raw = json.loads(result_file.read_text())
    return {
        "events_per_s": raw["events_per_s"],
        "seconds": raw["seconds"],
        "cpu_us_per_event": raw["cpu_seconds"] * 1e6 / load.total,
        "rss_mb": raw.get("rss_mb", 0.0),
    }


def run_simpul(
    bootstrap: str, load: Preloaded, workers: int, topology: Path, extras: bool
) -> dict[str, Any]:
    url = new_database()
    procs = simpul_processes(bootstrap, url, workers, topology, extras)
    spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    if PROFILE and workers == 1:
        # py-spy samples each process (its threads too) while it runs: the worker, and on the
        # mix the joins and the deliverer; read with profile_top(). Only samples holding the
        # GIL (--gil): without it, a thread waiting to take the GIL back after a socket send
        # is counted in `_SelectorSocketTransport.write`, 18-22 % of the joins' and the
        # deliverer's samples that strace showed to be 110-340 sends a second.
        for proc in procs:
            raw = WORK / f"profile-{proc.name}-{uuid.uuid4().hex[:4]}.txt"
            spy = subprocess.Popen(
                [
                    *("py-spy", "record", "--gil", "-p", str(proc.process.pid), "-f", "raw"),
                    *("-r", "200"),
                    *("-o", str(raw), "--nonblocking", "--threads"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                executable=str(Path(sys.executable).parent / "py-spy"),
            )
            spies.append((proc.name, raw, spy))
    try:
        result = measure(procs, url, load)
    finally:
        for _, _, spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        stop(procs)
        drop_database(url)
    for name, raw, _ in spies:
        suffix = "" if name == "worker" else f"_{name}"
        result[f"profile_top{suffix}"] = profile_top(raw)
        result[f"profile_file{suffix}"] = str(raw)
    return result


def profile_top(raw: Path, limit: int = 25) -> list[tuple[str, float, float]]:
    """From py-spy's collapsed stacks: the functions with the most samples, as (function,
    % of samples on the stack, % of samples at the top)."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in frames
        ]
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
    top = sorted(own, key=own.get, reverse=True)[:limit]  # type: ignore[arg-type]
    return [(f, 100 * inclusive[f] / total, 100 * own[f] / total) for f in top]


# --- the webhook receiver ---------------------------------------------------------------


class Receiver:
    """A local HTTP endpoint that answers 200 and notes each event's id and arrival time."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as an agency's web server answers: HTTP/1.0 closed every connection,
            # so the deliverer's CPU went on connecting, not delivering.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                at = time.time()
                try:
                    event_id = json.loads(body).get("id")
                except ValueError:
                    event_id = None
                if event_id:
                    receiver.arrivals.setdefault(event_id, at)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def webhook_topology(receiver: Receiver) -> Path:
    """The Palu topology with every webhook pointed at the local receiver."""
    raw = yaml.safe_load(TOPOLOGY_FILE.read_text())
    for sub in raw["subscriptions"]:
        if "webhook" in sub:
            sub["webhook"] = {
                "url": f"http://127.0.0.1:{receiver.port}/{sub['name']}",
                "secret_env": "SIMPUL_WEBHOOK_SECRET_DINSOS",
            }
    path = WORK / f"palu-bench-{receiver.port}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


# --- latency and restart ----------------------------------------------------------------


def commit_at_end(bootstrap: str, group: str, topics: list[str]) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    offsets = {}
    for topic in topics:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            offsets[tp] = OffsetAndMetadata(consumer.position(tp), "", -1)
    consumer.commit(offsets)
    consumer.close()


def wait_assigned(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/health", headers=auth()),
                timeout=1,
            ) as r:
                if json.loads(r.read()).get("assigned_partitions", 0) > 0:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("worker got no partitions")


def latency_and_restart(
    engine_name: str, rate: int, seconds: int, warmup: int = 60, workers: int = 1
) -> dict[str, Any]:
    """p50/p99 publish→stored and publish→webhook-delivered at a steady rate on the mix,
    with the joins and the deliverer running; then SIGTERM the (one) worker and time until an
    event published after its restart is stored."""
    receiver = Receiver()
    topology = webhook_topology(receiver)
    with broker(engine_name) as bootstrap:
        apply_topics(TOPOLOGY, bootstrap)
        url = new_database()
        engine = make_engine(url)
        events = Events(url, WEIGHTS, seed=5)
        worker_id = f"bench-latency-{uuid.uuid4().hex[:4]}"
        procs = simpul_processes(bootstrap, url, workers, topology, True, worker_id)
        worker = procs[0]
        for each in procs[:workers]:
            wait_assigned(each.web_port)  # type: ignore[arg-type]
        out = producer(bootstrap)

        def make(count: int) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
            # The agencies' events, each signed alone, are made before they are sent: agencies
            # sign on their own machines, and here they would take a third of a core of the
            # two that the pipeline has. Latency runs from the record's Kafka timestamp, set
            # when it is produced.
            return [events.make(dt.datetime.now(dt.UTC)) for _ in range(count)]

        def publish(made: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]) -> None:
            began = time.perf_counter()
            for i, (topic, key, value, headers) in enumerate(made):
                due = began + i / rate
                if (delay := due - time.perf_counter()) > 0:
                    time.sleep(delay)
                out.produce(topic, key=key, value=value, headers=headers)
                out.poll(0)
            out.flush(30)

        # Steady state: the same traffic first for a while, unmeasured. A broker just started
        # spends its first minute compiling: the JVM's JIT took a whole core of the two at
        # first, and still 0.16-0.28 of a core 20 s into this traffic, but 0.03-0.04 after
        # 60 s ("broker: JIT compiler" in the cores the run reports).
        measured = make(rate * seconds)
        publish(make(rate * warmup))
        deadline = time.monotonic() + 60
        while stored(engine, SOURCE_TYPES) < rate * warmup and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        receiver.arrivals.clear()
        run_started = dt.datetime.now(dt.UTC)
        began = time.perf_counter()
        cpu_began, stages_began = machine_cpu(procs), stage_cpu(procs[:workers])
        publish(measured)
        # What each process spent while the events were published: the share of a core.
        elapsed = time.perf_counter() - began
        cpu_ended, stages_ended = machine_cpu(procs), stage_cpu(procs[:workers])
        stages = {
            stage: round((spent - stages_began.get(stage, 0.0)) / len(measured) * 1e6)
            for stage, spent in stages_ended.items()
        }
        if stages:  # the rest: fetching, the event loop, metrics, the offset commit
            worker_us = (cpu_ended["worker"] - cpu_began["worker"]) / len(measured) * 1e6
            stages["(outside the stages)"] = round(worker_us - sum(stages.values()))
        cores = {n: round((cpu_ended[n] - cpu_began.get(n, 0.0)) / elapsed, 2) for n in cpu_ended}
        deadline = time.monotonic() + 60
        while (
            stored(engine, SOURCE_TYPES) < rate * (warmup + seconds) and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        time.sleep(3)  # the webhook deliveries of the last events
        with engine.connect() as conn:
            # stored_at is when the worker took the event; the commit of its row comes later.
            # The bench's own server records commit times; another server may not.
            commits = conn.scalar(text("select current_setting('track_commit_timestamp')"))
            committed = "pg_xact_commit_timestamp(xmin)" if commits == "on" else "null::timestamptz"
            rows = conn.execute(
                text(
                    f"select ce_id, published_at, stored_at, {committed} from event_log "
                    "where published_at >= :t and type = any(:types)"
                ),
                {"t": run_started, "types": SOURCE_TYPES},
            ).all()
        taken_ms = sorted((s - p).total_seconds() * 1000 for _, p, s, _ in rows)
        store_ms = (
            sorted((c - p).total_seconds() * 1000 for _, p, _, c in rows if c is not None)
            or [float("nan")] * 2
        )
        published = {ce_id: p.timestamp() for ce_id, p, _, _ in rows}
        hook_ms = sorted(
            (at - published[i]) * 1000 for i, at in receiver.arrivals.items() if i in published
        )
        cut_taken = quantiles(taken_ms, n=100)
        cut_store = quantiles(store_ms, n=100)
        cut_hook = quantiles(hook_ms, n=100) if len(hook_ms) > 1 else [float("nan")] * 99
        # Restart to processing: one worker's (with two, the other would take over).
        restart_s = float("nan")
        if workers == 1:
            worker.process.send_signal(signal.SIGTERM)
            worker.process.wait(60)
            restarted = time.perf_counter()
            env = simpul_env(bootstrap, url, worker_id, topology)
            env["SIMPUL_WORKER_WEB_PORT"] = str(free_port())
            procs[0] = spawn([sys.executable, "-m", "simpul", "worker"], env, "worker")
            marker_ids: list[str] = []
            deadline = time.monotonic() + 60
            recipient = Events(url, {"social.recipient.updated": 1}, seed=9)
            while time.monotonic() < deadline:
                topic, key, value, headers = recipient.make(dt.datetime.now(dt.UTC))
                marker_ids.append(dict(headers)["ce_id"].decode())
                out.produce(topic, key=key, value=value, headers=headers)
                out.flush(5)
                with engine.connect() as conn:
                    found = conn.scalar(
                        text("select count(*) from event_log where ce_id = any(:ids)"),
                        {"ids": marker_ids},
                    )
                if found:
                    restart_s = time.perf_counter() - restarted
                    break
                time.sleep(0.1)
        stop(procs)
        engine.dispose()
        drop_database(url)
    receiver.close()
    return {
        "rate_per_s": rate,
        "workers": workers,
        "events": len(taken_ms),
        "taken_p50_ms": cut_taken[49],
        "taken_p99_ms": cut_taken[98],
        "stored_p50_ms": cut_store[49],
        "stored_p99_ms": cut_store[98],
        "webhook_events": len(hook_ms),
        "webhook_p50_ms": cut_hook[49],
        "webhook_p99_ms": cut_hook[98],
        "restart_to_processing_s": restart_s,
        "cores_while_publishing": cores,
        "worker_stage_cpu_us_per_event": stages,
    }


# --- the run ----------------------------------------------------------------------------


def run_workload(
    engine_name: str, name: str, total: int, two_workers: bool, with_rivals: bool
) -> dict[str, Any]:
    title, weights = WORKLOADS[name]
    receiver = Receiver() if name == "c" else None
    topology = webhook_topology(receiver) if receiver else TOPOLOGY_FILE
    runs: dict[str, dict[str, Any]] = {}
    with broker(engine_name) as bootstrap:
        apply_topics(TOPOLOGY, bootstrap)
        schema_url = new_database()
        say(f"({name}) {title}: pre-loading {total:,} events")
        load = preload(bootstrap, schema_url, weights, total)
        drop_database(schema_url)
        say(f"    {load.distinct:,} distinct, at {load.produce_per_s:,.0f} events/s")
        plan: list[tuple[str, Any]] = []
        if with_rivals:
            plan += [
                (
                    "Quix Streams (decode, dedup, event_log + state)",
                    lambda: run_quix(bootstrap, load),
                ),
                ("bare Faust agent, does nothing", lambda: run_faust(bootstrap, load)),
            ]
        plan.append(
            (
                "Simpul, 1 worker" + (" + joins + deliverer" if receiver else ""),
                lambda: run_simpul(bootstrap, load, 1, topology, receiver is not None),
            )
        )
        if two_workers:
            plan.append(
                ("Simpul, 2 workers", lambda: run_simpul(bootstrap, load, 2, topology, False))
            )
        for label, run in plan:
            say(f"    {label}")
            runs[label] = run()
            say(f"      {runs[label]['events_per_s']:,.0f} events/s")
    if receiver:
        runs_note = f"webhook deliveries received: {len(receiver.arrivals):,}"
        receiver.close()
    else:
        runs_note = ""
    quix = next((r["events_per_s"] for k, r in runs.items() if k.startswith("Quix")), None)
    for run in runs.values():
        run["ratio_to_quix"] = run["events_per_s"] / quix if quix else None
    return {
        "title": title,
        "events": total,
        "distinct": load.distinct,
        "decode_us_per_event": load.decode_us,
        "runs": runs,
        "note": runs_note,
    }


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['broker']}; agencies signed the backlog {results['signing']}-wise")
    for name, workload in results["workloads"].items():
        print(
            f"\n({name}) {workload['title']} — {workload['events']:,} events, "
            f"{workload['distinct']:,} distinct"
        )
        print(f"{'pipeline':52} {'events/s':>9} {'× Quix':>7} {'CPU µs/ev':>10} {'RSS MB':>7}")
        for label, run in workload["runs"].items():
            ratio = run["ratio_to_quix"]
            print(
                f"{label:52} {run['events_per_s']:>9,.0f} "
                f"{(f'{ratio:.2f}' if ratio else '-'):>7} "
                f"{run['cpu_us_per_event']:>10.0f} {run['rss_mb']:>7.0f}"
            )
            for stage, value in run.get("stage_cpu_us_per_event", {}).items():
                print(f"    {stage:56} {value:>8.1f} µs")
            for process, value in run.get("cpu_us_per_event_by_process", {}).items():
                print(f"    CPU of {process:49} {value:>8.1f} µs")
            for key in [k for k in run if k.startswith("profile_top")]:
                if key != "profile_top":
                    print(f"    py-spy of {key.removeprefix('profile_top_')}:")
                for function, inclusive, own in run[key]:
                    print(f"    py-spy {own:5.1f} % own {inclusive:5.1f} % total  {function[:90]}")
        if workload["note"]:
            print(f"  {workload['note']}")
    if lat := results.get("latency"):
        print(
            f"\nmix at {lat['rate_per_s']:,}/s, {lat.get('workers', 1)} worker(s): "
            "publish→stored (row committed) "
            f"p50 {lat['stored_p50_ms']:.0f} ms, p99 {lat['stored_p99_ms']:.0f} ms; "
            f"publish→taken by the worker p50 {lat['taken_p50_ms']:.0f} ms, "
            f"p99 {lat['taken_p99_ms']:.0f} ms ({lat['events']:,} events); "
            f"publish→webhook p50 {lat['webhook_p50_ms']:.0f} ms, "
            f"p99 {lat['webhook_p99_ms']:.0f} ms ({lat['webhook_events']:,}); "
            f"restart to processing {lat['restart_to_processing_s']:.1f} s"
        )
        cores = lat["cores_while_publishing"]
        print(
            "cores used while publishing: "
            + ", ".join(f"{name} {share:.2f}" for name, share in sorted(cores.items()))
            + f" (of {os.cpu_count()})"
        )
        if stages := lat.get("worker_stage_cpu_us_per_event"):
            print(
                "worker CPU µs per event by stage: "
                + ", ".join(f"{stage} {us}" for stage, us in sorted(stages.items()))
            )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = results["workloads"]
    if not workloads:
        return  # a latency-only run: its figures are in the JSON
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.5), squeeze=False)
    for ax, (name, workload) in zip(axes[0], workloads.items(), strict=True):
        labels = list(workload["runs"])
        values = [workload["runs"][k]["events_per_s"] for k in labels]
        colors = [
            "#888888" if k.startswith("Quix") else "#bbbbbb" if "Faust" in k else "#2a7ab0"
            for k in labels
        ]
        bars = ax.bar(range(len(labels)), values, color=colors)
        for bar, label in zip(bars, labels, strict=True):
            ratio = workload["runs"][label]["ratio_to_quix"]
            if ratio:
                ax.annotate(
                    f"{ratio:.2f}×",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([k.split(" (")[0] for k in labels], rotation=25, ha="right", fontsize=7)
        ax.set_title(f"({name}) {workload['title']}", fontsize=8)
        ax.set_ylabel("events/s (steady)")
    fig.suptitle(
        f"{results['broker']} broker, {results['cores']} cores, {results['started']} "
        "(× = ratio to Quix Streams, same run)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="messages per workload")
    parser.add_argument(
        "--broker",
        default=os.environ.get("SIMPUL_BENCH_BROKER", "kafka"),
        help="broker engine: tansu (embedded) or kafka (SIMPUL_BENCH_BROKER)",
    )
    parser.add_argument(
        "--workloads", default="a,b,c", help="which of a, b, c (empty: latency only)"
    )
    parser.add_argument("--no-rivals", action="store_true", help="skip Quix and bare Faust")
    parser.add_argument("--no-latency", action="store_true", help="skip latency and restart")
    parser.add_argument("--latency-seconds", type=int, default=15)
    parser.add_argument("--latency-rate", type=int, default=1000, help="events/s")
    parser.add_argument(
        "--latency-warmup",
        type=int,
        default=60,
        help="seconds of the same traffic, unmeasured, before the latency run",
    )
    parser.add_argument("--latency-workers", type=int, default=1, help="workers in the latency run")
    parser.add_argument(
        "--signing",
        choices=("batch", "event"),
        default="batch",
        help="how the agencies sign the preloaded backlog: in batches (one signature per "
        "256, as Publisher.publish_many sends) or each event alone; latency runs sign each",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the one-worker runs; top functions"
    )
    args = parser.parse_args()
    global PROFILE, ENGINE, SIGNING
    PROFILE, ENGINE, SIGNING = args.profile, args.broker, args.signing
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "machine": platform.platform(),
        "cores": os.cpu_count(),
        "broker": {"tansu": "embedded (Tansu)", "kafka": "Apache Kafka"}.get(
            args.broker, args.broker
        ),
        "started": f"{started:%Y-%m-%d %H:%M} UTC",
        "load_average_at_start": os.getloadavg(),
        "signing": args.signing,
        "workloads": {},
    }
    for name in [w for w in args.workloads.split(",") if w]:
        results["workloads"][name] = run_workload(
            args.broker, name, args.events, two_workers=name == "b", with_rivals=not args.no_rivals
        )
    if not args.no_latency:
        say(
            f"latency at {args.latency_rate:,} events/s on the mix, "
            f"{args.latency_workers} worker(s), then restart"
        )
        results["latency"] = latency_and_restart(
            args.broker,
            args.latency_rate,
            args.latency_seconds,
            args.latency_warmup,
            args.latency_workers,
        )
    results["load_average_at_end"] = os.getloadavg()
    print_table(results)
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    out = ROOT / "bench" / "results" / f"run-{args.broker}-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    chart(results, out.with_suffix(".png"))
    print(f"\nwritten {out.relative_to(ROOT)} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
