"""Faults that need the real engine: a killed and restarted broker, a three-node cluster losing
nodes, a group of three workers losing one, and compacted join state.

Apache Kafka only (SIMPUL_TEST_BROKER=kafka, the default): the embedded broker keeps nothing on
disk and has no cluster. Each test ends with conservation read from the store and, with a plain
client, from the topics: every valid ce_id stored exactly once, every state row the newest of its
key, the dead letters exactly the invalid events injected.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from sqlalchemy import text

from connectors.state import ApiKeyStore
from simpul.citydata import PaluData, make_nip
from simpul.cli.services.broker import Broker, free_port
from simpul.cli.services.kafka import KafkaCluster
from simpul.db import make_engine
from simpul.publisher import PublisherPool
from streams.joins.state import derived_id
from tests.support.brokers import BROKER_ENGINE
from tests.support.postgres import create_pg_database, drop_pg_database
from tests.support.processes import SimpulProcess, wait_until
from tests.support.signing import auth
from tests.support.stack import TOPOLOGY_FILE, Stack, make_stack
from tests.support.topics import ce_ids_on, read_topic
from tests.support.traffic import (
    AckTally,
    Expectation,
    assert_store_matches,
    assert_topics_match,
    plan_traffic,
    publish_until_acked,
    stored_count,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(BROKER_ENGINE != "kafka", reason="needs Apache Kafka (SIMPUL_TEST_BROKER)"),
]


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def topology_copy(workdir: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    raw = yaml.safe_load(TOPOLOGY_FILE.read_text())
    edit(raw)
    path = workdir / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Worker:
    """One more `simpul worker` of the stack's group, on its own web port."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.port = free_port()
        self.env = {**stack.env, "SIMPUL_WORKER_WEB_PORT": str(self.port)}
        self.log = stack.workdir / f"worker-{name}.log"
        self.process: SimpulProcess | None = None

    def start(self) -> Worker:
        self.process = SimpulProcess(["worker"], self.env, self.log)
        self.process.wait_ready(lambda: "assigned_partitions" in self.health(), "/health", 90)
        return self

    def health(self) -> dict[str, Any]:
        try:
            return httpx.get(
                f"http://127.0.0.1:{self.port}/health", headers=auth(), timeout=2
            ).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def assigned(self) -> int:
        return int(self.health().get("assigned_partitions", 0))

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            try:
                self.process.stop()
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def settle(stack: Stack, expect: Expectation, bootstrap: str, timeout: float = 240) -> None:
    """Wait until everything valid is stored and every dead letter written, then check both."""
    wait_until(
        lambda: stored_count(stack.settings.store.database_url) >= len(expect.valid_ids),
        timeout,
        f"{len(expect.valid_ids)} valid events stored",
        every=1,
    )
    # A fixed pause is the point: anything still in flight would show up as an extra row now.
    time.sleep(2)
    assert_store_matches(stack.settings.store.database_url, expect)
    with contextlib.suppress(AssertionError):  # the check below says what differs
        wait_until(lambda: _topics_ok(bootstrap, stack, expect), 60, "the topics", every=3)
    try:
        assert_topics_match(bootstrap, stack.topology, expect)
    except AssertionError as error:
        print(_where_missing(bootstrap, stack, expect))
        raise AssertionError(str(error)) from None


def _where_missing(bootstrap: str, stack: Stack, expect: Expectation) -> str:
    """For a failure report: where the valid events missing on simpul.valid sit on simpul.in."""
    lines = []
    for et in stack.topology.event_types:
        on_valid = {
            dict(m.headers)["ce_id"].decode() for m in read_topic(bootstrap, et.topic("valid"))
        }
        spots: Counter[int] = Counter()
        offsets: dict[int, list[int]] = {}
        for m in read_topic(bootstrap, et.topic("in")):
            ce_id = dict(m.headers).get("ce_id", b"").decode()
            if ce_id in expect.valid_ids and ce_id not in on_valid:
                spots[m.partition] += 1
                offsets.setdefault(m.partition, []).append(m.offset)
        for part, count in sorted(spots.items()):
            lo, hi = min(offsets[part]), max(offsets[part])
            lines.append(f"{et.name}[{part}]: {count} missing, in-offsets {lo}..{hi}")
    return "\n".join(lines)


def _topics_ok(bootstrap: str, stack: Stack, expect: Expectation) -> bool:
    try:
        assert_topics_match(bootstrap, stack.topology, expect)
        return True
    except AssertionError:
        return False


def report(what: str, **figures: object) -> None:
    """One line of figures per fault test, shown with `pytest -s` (and kept in the notes)."""
    print(f"\nFAULT {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- the broker SIGKILLed and restarted on its data ---


def test_broker_killed_and_restarted_loses_nothing_acknowledged(
    broker_factory: Callable[..., Broker], pg_database: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    kafka = broker_factory()
    assert isinstance(kafka, KafkaCluster)
    stack = make_stack(kafka, pg_database, tmp_path)
    plan, expect = plan_traffic(stack.topology, 12_000, duplicates=0.05, invalid=0.01, seed=21)
    catalog = stack.catalog()
    stack.start_worker()
    tally = AckTally()
    publisher = threading.Thread(
        target=publish_until_acked,
        daemon=True,  # a failed test must not wait for it
        args=(plan, catalog, stack.settings),
        kwargs={"chunk": 100, "pause_s": 0.05, "tally": tally},
    )
    publisher.start()
    wait_until(lambda: len(tally.acked) > 3000, 120, "publishing under way")
    acked_before_kill = len(tally.acked)
    kafka.kill()  # SIGKILL: no controlled shutdown, the log is recovered on start
    down_at = time.monotonic()
    time.sleep(3)  # the outage itself: the publisher and the worker meet a dead broker
    kafka.start()
    outage_s = time.monotonic() - down_at
    publisher.join(300)
    assert not publisher.is_alive(), "the publisher never got every event acknowledged"
    assert stack.worker is not None and stack.worker.poll() is None, (
        "the worker died with the broker: " + stack.worker_log()[-2000:]
    )
    assert len(tally.acked) == len({i.ce_id for i in plan})
    # Nothing acknowledged is lost: every acked ce_id is on its simpul.in topic after the restart.
    on_in = ce_ids_on(kafka.bootstrap, [et.topic("in") for et in stack.topology.event_types])
    assert not tally.acked - on_in, f"{len(tally.acked - on_in)} acknowledged events lost"
    figures = {
        "events": len(plan),
        "valid": len(expect.valid_ids),
        "invalid": expect.invalid,
        "acked_before_kill": acked_before_kill,
        "outage_s": f"{outage_s:.1f}",
        "failed_sends": dict(tally.failures),
        "resend_rounds": tally.rounds,
    }
    report("broker SIGKILL+restart (acks)", **figures)
    settle(stack, expect, kafka.bootstrap)
    report(
        "broker SIGKILL+restart",
        events=len(plan),
        valid=len(expect.valid_ids),
        invalid=expect.invalid,
        acked_before_kill=acked_before_kill,
        outage_s=f"{outage_s:.1f}",
        failed_sends=dict(tally.failures),
        resend_rounds=tally.rounds,
        lost=0,
        duplicated=0,
        seconds=f"{time.monotonic() - started:.0f}",
    )
    stack.stop_worker()


# --- a three-node cluster losing one node, then another ---


def _in_sync(bootstrap: str) -> bool:
    """No under-replicated partition on any simpul topic (every replica back in the ISR)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=5000)
    try:
        names = [n for n in admin.list_topics() if n.startswith("simpul.")]
        for topic in admin.describe_topics(names):
            for part in topic["partitions"]:
                if len(part["isr_nodes"]) < len(part["replica_nodes"]):
                    return False
        return True
    except Exception:
        return False
    finally:
        admin.close()


class IngressLoad:
    """`simpul ingress` as a process, and a client posting permits to it one by one: a 503
    (the broker did not acknowledge) is posted again with the same ce-id, as the API asks."""

    def __init__(self, stack: Stack, expect: Expectation) -> None:
        self.stack = stack
        self.expect = expect
        self.port = free_port()
        self.key = ApiKeyStore(make_engine(stack.settings.store.database_url)).create(
            "dpmptsp", "t"
        )[1]
        self.data = PaluData(stack.topology, seed=11, residents_count=200)
        self.statuses: Counter[int | str] = Counter()
        self.accepted: dict[str, str] = {}  # ce_id -> permit number
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        env = {**stack.env, "SIMPUL_INGRESS_PORT": str(self.port)}
        self.process = SimpulProcess(["ingress"], env, stack.workdir / "ingress.log")
        self.process.wait_ready(self._up, "/health")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _up(self) -> bool:
        try:
            return httpx.get(
                f"http://127.0.0.1:{self.port}/health", headers=auth(), timeout=1
            ).is_success
        except httpx.HTTPError:
            return False

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                while not self.stop_event.is_set():
                    self._post_one(client)
                    time.sleep(0.05)  # an agency's pace, not a wait
        except BaseException as error:  # reported by finish(), not lost with the thread
            self.error = error

    def _post_one(self, client: httpx.Client) -> None:
        now = dt.datetime.now(dt.UTC)
        payload = self.data.payload("permit.issued", now)
        payload["permit_number"] = f"HTTP-{uuid.uuid4().hex[:10]}"
        body = json.loads(json.dumps(payload, default=lambda v: v.isoformat()))  # as JSON sends it
        ce_id = str(uuid.uuid4())
        for _ in range(20):
            try:
                response = client.post(
                    f"http://127.0.0.1:{self.port}/v1/events/permit.issued",
                    json=body,
                    headers={"Authorization": f"Bearer {self.key}", "ce-id": ce_id},
                )
                self.statuses[response.status_code] += 1
                if response.status_code == 202:
                    self.accepted[ce_id] = payload["permit_number"]
                    return
            except httpx.HTTPError as error:
                self.statuses[type(error).__name__] += 1
            time.sleep(0.5)  # the client's back-off before it sends again
        raise AssertionError(f"the ingress never accepted {ce_id}: {self.statuses}")

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop_event.set()
        self.thread.join(120)
        assert not self.thread.is_alive()
        assert self.error is None, f"the ingress client failed: {self.error!r}"
        self.process.stop(timeout=30)
        # The ingress' events join the expectation: one permit number each, so each is newest.
        for ce_id, permit_number in self.accepted.items():
            self.expect.add_valid("permits", permit_number, dt.datetime.now(dt.UTC), ce_id)


def test_three_node_cluster_loses_a_node_then_another_and_nothing_is_lost(
    broker_factory: Callable[..., Broker], pg_database: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    kafka = broker_factory(nodes=3)
    assert isinstance(kafka, KafkaCluster)

    def replicated(raw: dict[str, Any]) -> None:
        raw["replication"] = 3

    topology_file = topology_copy(tmp_path, replicated)
    stack = make_stack(kafka, pg_database, tmp_path, topology_file)
    plan, expect = plan_traffic(stack.topology, 10_000, duplicates=0.05, invalid=0.01, seed=31)
    stack.start_worker()
    ingress = IngressLoad(stack, expect)
    tally = AckTally()
    publisher = threading.Thread(
        target=publish_until_acked,
        daemon=True,  # a failed test must not wait for it
        args=(plan, stack.catalog(), stack.settings),
        kwargs={"chunk": 100, "pause_s": 0.1, "tally": tally},
    )
    publisher.start()
    ingress.start()
    wait_until(lambda: len(tally.acked) > 1500, 120, "publishing under way")
    kafka.kill_node(1)
    killed_at = len(tally.acked)
    wait_until(lambda: len(tally.acked) > killed_at + 1000, 120, "publishing on two nodes")
    kafka.start_node(1)
    kafka.wait_ready()
    wait_until(lambda: _in_sync(kafka.bootstrap), 180, "node 1 back in every ISR", every=2)
    kafka.kill_node(2)
    killed_at = len(tally.acked)
    wait_until(
        lambda: len(tally.acked) > killed_at + 1000 or not publisher.is_alive(),
        120,
        "publishing after the second kill",
    )
    publisher.join(300)
    assert not publisher.is_alive()
    ingress.finish()
    kafka.start_node(2)
    assert stack.worker is not None and stack.worker.poll() is None, "the worker died"
    assert ingress.statuses[202] == len(ingress.accepted) > 20
    settle(stack, expect, kafka.bootstrap)
    report(
        "three nodes, two SIGKILLed in turn",
        events=len(plan),
        ingress_events=len(ingress.accepted),
        ingress_statuses=dict(ingress.statuses),
        failed_sends=dict(tally.failures),
        lost=0,
        duplicated=0,
        seconds=f"{time.monotonic() - started:.0f}",
    )
    stack.stop_worker()


# --- scale-out: three workers on a 12-partition type, one SIGKILLed ---


def test_three_workers_on_twelve_partitions_one_killed_rebalance_and_conserve(
    broker_factory: Callable[..., Broker], pg_database: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    kafka = broker_factory()

    def twelve(raw: dict[str, Any]) -> None:
        for et in raw["event_types"]:
            if et["name"] == "permit.issued":
                et["partitions"] = 12

    stack = make_stack(kafka, pg_database, tmp_path, topology_copy(tmp_path, twelve))
    total = sum(et.partitions for et in stack.topology.event_types)
    workers = [Worker(stack, name).start() for name in ("a", "b", "c")]
    wait_until(
        lambda: sum(w.assigned() for w in workers) == total and all(w.assigned() for w in workers),
        120,
        "three workers sharing every partition",
        every=1,
    )
    plan, expect = plan_traffic(stack.topology, 15_000, duplicates=0.05, invalid=0.01, seed=41)
    tally = AckTally()
    publisher = threading.Thread(
        target=publish_until_acked,
        daemon=True,  # a failed test must not wait for it
        args=(plan, stack.catalog(), stack.settings),
        kwargs={"chunk": 200, "pause_s": 0.05, "tally": tally},
    )
    publisher.start()
    wait_until(lambda: stored_count(pg_database) > 3000, 120, "the group under way", every=0.5)
    workers[0].kill()
    killed_at = time.monotonic()
    survivors = workers[1:]
    wait_until(
        lambda: sum(w.assigned() for w in survivors) == total,
        90,
        "the two survivors holding every partition",
        every=0.5,
    )
    rebalance_s = time.monotonic() - killed_at
    publisher.join(300)
    assert not publisher.is_alive()
    settle(stack, expect, kafka.bootstrap)
    report(
        "scale-out, 3 workers, 1 SIGKILLed",
        events=len(plan),
        partitions=total,
        rebalance_s=f"{rebalance_s:.1f}",
        lost=0,
        duplicated=0,
        seconds=f"{time.monotonic() - started:.0f}",
    )
    for worker in survivors:
        worker.stop()


# --- the join state topics compacted, the state rebuilt exactly ---

NIPS = 40
UPDATES_PER_NIP = 15


def _state_records(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records read from the beginning, records ever written: the end offsets' sum)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    ends = consumer.end_offsets(parts)
    consumer.close()
    read = sum(1 for _ in read_topic(bootstrap, topic, idle_ms=1500))
    return read, sum(ends.values())


def test_compacted_join_state_is_rebuilt_exactly_after_a_restart(
    broker_factory: Callable[..., Broker], pg_database: str, tmp_path: Path
) -> None:
    from tests.support.joins import JoinsProcess, assessment, employee

    started = time.monotonic()
    kafka = broker_factory()

    def long_waits(raw: dict[str, Any]) -> None:  # no assessment expires while it waits
        for join in raw["joins"]:
            join["wait_s"] = 300

    stack = make_stack(kafka, pg_database, tmp_path, topology_copy(tmp_path, long_waits))
    state_topic = "simpul.join.tpp-allowance-basis.state"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap.split(","))
    compact_soon = {
        "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "1000",
        "max.compaction.lag.ms": "1000",
    }
    admin.alter_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, join.state_topic(), configs=compact_soon)
            for join in stack.topology.joins
        ]
    )
    admin.close()
    stack.start_worker()
    joins = JoinsProcess(stack)
    joins.start()
    rng = random.Random(7272)
    nips = [make_nip(rng) for _ in range(NIPS)]
    grades = ["II/a", "II/b", "II/c", "III/a", "III/b", "III/c", "III/d", "IV/a"]
    newest: dict[str, tuple[str, str]] = {}  # nip -> (ce_id, grade)
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    expect = Expectation()
    with PublisherPool(stack.settings, stack.catalog()) as pool:
        for round_ in range(UPDATES_PER_NIP):
            futures = []
            for nip in nips:
                when = base + dt.timedelta(minutes=round_)
                grade = rng.choice(grades)
                ce_id = str(uuid.uuid4())
                futures.append(
                    pool("bkpsdm").publish(
                        "hr.employee.updated", employee(nip, grade, when), id=ce_id, time=when
                    )
                )
                newest[nip] = (ce_id, grade)
                expect.add_valid("employees", nip, when, ce_id)
            for future in futures:
                future.get(30)
            time.sleep(0.3)  # rounds spread over several segments
        written = NIPS * UPDATES_PER_NIP
        wait_until(
            lambda: _state_records(kafka.bootstrap, state_topic)[1] >= written,
            120,
            "every update in the join's state topic",
            every=1,
        )

        # The cleaner compacts closed segments only: a later record rolls the segment; keep
        # writing (one more employee, a newer update each time) until the cleaner has run.
        roller, rolls = make_nip(rng), iter(range(1, 10_000))

        def compacted() -> bool:
            when = base + dt.timedelta(hours=next(rolls))
            ce_id = str(uuid.uuid4())
            payload = employee(roller, "II/a", when)
            pool("bkpsdm").publish("hr.employee.updated", payload, id=ce_id, time=when).get(30)
            expect.add_valid("employees", roller, when, ce_id)
            read, _ = _state_records(kafka.bootstrap, state_topic)
            return read < written / 2

        wait_until(compacted, 150, "the state topic compacted", every=3)
        read, ends = _state_records(kafka.bootstrap, state_topic)
        joins.stop(signal.SIGKILL)
        joins.start()  # rebuilds every partition's state from the compacted topic
        restored = joins.metric("simpul_join_restored_records_total", join="tpp-allowance-basis")
        assessments = {}
        for nip in nips:
            a = assessment(nip, nips[0])
            ce_id = str(uuid.uuid4())
            when = dt.datetime.now(dt.UTC)
            pool("bkpsdm").publish("hr.performance.assessed", a, id=ce_id, time=when).get(30)
            assessments[nip] = (ce_id, a["assessment_id"])
            expect.add_valid("assessments", a["assessment_id"], when, ce_id)

    def bases() -> dict[str, dict[str, Any]] | None:
        engine = make_engine(pg_database)
        with engine.connect() as conn:
            rows = conn.execute(
                text("select ce_id, payload from event_log where type = 'hr.allowance.basis'")
            ).all()
        engine.dispose()
        found = {}
        for ce_id, payload in rows:
            data = payload if isinstance(payload, dict) else json.loads(payload)
            found[data["nip"]] = {"ce_id": ce_id, **data}
        return found if len(found) >= NIPS else None

    derived = wait_until(bases, 120, "one allowance basis per NIP", every=1)
    for nip in nips:
        row = derived[nip]
        assert row["employee_event_id"] == newest[nip][0], f"{nip}: joined a stale employee"
        assert row["grade"] == newest[nip][1]
        assert row["ce_id"] == derived_id(
            "tpp-allowance-basis", assessments[nip][0], newest[nip][0]
        )
        expect.valid_ids.add(row["ce_id"])
    settle(stack, expect, kafka.bootstrap)
    report(
        "join state compacted, joins restarted",
        updates=written,
        keys=NIPS,
        state_records_after_compaction=read,
        state_offsets=ends,
        restored_records=int(restored),
        stale_joins=0,
        seconds=f"{time.monotonic() - started:.0f}",
    )
    joins.stop()
    stack.stop_worker()
