"""Delivery guarantees under real faults: SIGKILL, a database outage, poison, disorder, SIGTERM.

Real processes, the real embedded broker and real PostgreSQL. Each test has its own broker so
no test sees another's messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simpul.cli.services.broker import Broker
from simpul.cli.services.postgres import PostgresCluster
from simpul.codec import frame
from simpul.envelope import Envelope
from simpul.publisher import Publisher, PublisherPool
from tests.support.postgres import create_pg_database, drop_pg_database
from tests.support.processes import wait_until
from tests.support.stack import Stack, make_stack
from tests.support.topics import dead_letter_origins
from tests.support.traffic import assert_store_matches as check_store
from tests.support.traffic import assert_topics_match, plan_traffic, publish_plan, stored_count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Poison messages in the poison drill: 1 000 of each of the four kinds. (10 000 proved no more:
#: each message is refused on its own, and every kind and dead-letter stage shows up either way.)
POISON = 4000
#: The database outage the worker waits out: 10 x SIMPUL_STORE_RETRY_MAX_S (2 s), so it
#: retries many times; 30 s proved no more and cost 10 s more plus the traffic to cover it.
OUTAGE_S = 20


@pytest.fixture
def own_broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def metric(stack: Stack, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in stack.metrics().splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def assert_store_matches(stack: Stack, expect) -> None:  # type: ignore[no-untyped-def]
    check_store(stack.settings.store.database_url, expect)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    own_broker: Broker, pg_database: str, tmp_path: Path
) -> None:
    stack = make_stack(own_broker, pg_database, tmp_path)
    started = time.monotonic()
    plan, expect = plan_traffic(stack.topology, 20_000, duplicates=0.10, invalid=0.01, seed=4)
    publisher = threading.Thread(target=publish_plan, args=(plan, stack.catalog(), stack.settings))
    publisher.start()
    rng = random.Random(9)
    kills = 0
    stack.start_worker()
    while kills < 6 or publisher.is_alive():
        time.sleep(rng.uniform(0.3, 2.5))  # the point: a random pause between kills
        assert stack.worker is not None
        stack.worker.send_signal(signal.SIGKILL)
        stack.worker.wait(10)
        kills += 1
        stack.worker = None
        # Sometimes restart and kill before it even joined the group.
        if rng.random() < 0.7:
            stack.start_worker()
        else:
            stack.start_worker(wait=False)
            time.sleep(0.5)  # the point: killed before it joined the group
    publisher.join()
    if stack.worker is None or stack.worker.poll() is not None:
        stack.start_worker()
    wait_until(
        lambda: _stored(stack) >= len(expect.valid_ids), 300, "all valid events stored", every=1
    )
    # A fixed pause is the point: anything still in flight would show up as an extra row now.
    time.sleep(2)
    assert kills >= 6
    assert_store_matches(stack, expect)
    print(
        f"\nFAULT worker SIGKILL: events={len(plan)} kills={kills} "
        f"seconds={time.monotonic() - started:.0f} lost=0 duplicated=0 (store)"
    )
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: (
                len(dead_letter_origins(own_broker.bootstrap, stack.topology)) >= expect.invalid
            ),
            120,
            "all dead letters",
            every=2,
        )
    letters = dead_letter_origins(own_broker.bootstrap, stack.topology)
    stack.stop_worker()
    assert len(letters) == expect.invalid
    assert all(h["simpul_dlq_reason"] for h in letters.values())
    assert_topics_match(own_broker.bootstrap, stack.topology, expect)


def _stored(stack: Stack) -> int:
    return stored_count(stack.settings.store.database_url)


def test_database_outage_is_waited_out_without_loss(own_broker: Broker, tmp_path: Path) -> None:
    cluster = PostgresCluster().init()
    cluster.start()
    try:
        stack = make_stack(own_broker, cluster.url, tmp_path)
        stack.env["SIMPUL_STORE_RETRY_MAX_S"] = "2"
        plan, expect = plan_traffic(stack.topology, 4000, duplicates=0.0, invalid=0.0, seed=7)
        stack.start_worker()
        catalog = stack.catalog()  # schemas cached before the outage, as a running agency's
        chunks = [plan[i : i + 100] for i in range(0, len(plan), 100)]

        def steady() -> None:  # 100 events every 0.75 s for 30 s: through the whole outage
            # One pool for the run, as a running agency keeps its producers: a pool per chunk
            # spent more time connecting its producers than the 30 s of the pace.
            with PublisherPool(stack.settings, catalog, linger_ms=20) as pool:
                for chunk in chunks:
                    publish_plan(chunk, catalog, stack.settings, pool=pool)
                    time.sleep(0.75)  # a steady agency's pace, not a wait

        publisher = threading.Thread(target=steady)
        publisher.start()
        wait_until(lambda: _stored(stack) > 500, 60, "first events stored")
        cluster.stop()
        down_at = time.monotonic()
        health = wait_until(
            lambda: (h := stack.health()).get("store") == "down" and h,
            30,
            "health reports the outage",
        )
        assert health["status"] == "degraded"
        assert metric(stack, "simpul_store_up") == 0
        # The point: the outage lasts OUTAGE_S, ten times the store retry's longest back-off.
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        assert metric(stack, "simpul_store_errors_total", kind="transient") > 0
        rss_mb = _rss_mb(stack.worker.pid)  # type: ignore[union-attr]
        assert stack.worker is not None and stack.worker.poll() is None, "worker died"
        cluster.start()
        publisher.join()
        wait_until(lambda: _stored(stack) >= len(expect.valid_ids), 180, "catch-up", every=1)
        assert stack.health()["store"] == "up"
        assert metric(stack, "simpul_store_up") == 1
        assert metric(stack, "simpul_events_dead_lettered_total") == 0
        assert dead_letter_origins(own_broker.bootstrap, stack.topology) == {}
        assert rss_mb < 300, f"worker grew to {rss_mb:.0f} MB during the outage"
        assert_store_matches(stack, expect)
        stack.stop_worker()
    finally:
        cluster.destroy()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_poison_is_dead_lettered_and_the_worker_never_stops(
    own_broker: Broker, pg_database: str, tmp_path: Path
) -> None:
    stack = make_stack(own_broker, pg_database, tmp_path)
    plan, expect = plan_traffic(stack.topology, 2000, duplicates=0.0, invalid=0.0, seed=3)
    catalog = stack.catalog()
    rng = random.Random(5)
    schema = catalog.latest_schema("permit.issued")
    good = dict(plan[0].payload) if plan[0].event_type == "permit.issued" else None
    publisher = Publisher("dpmptsp", settings=stack.settings, catalog=catalog, linger_ms=20)
    kinds = ["random_bytes", "wrong_schema_id", "truncated_avro", "missing_header"]
    poisoned = {k: 0 for k in kinds}
    valid_iter = iter(plan)
    valid_pool = PublisherPool(stack.settings, catalog, linger_ms=20)  # one, not one per event
    stack.start_worker()
    for i in range(POISON):
        kind = kinds[i % 4]
        envelope = Envelope(type="permit.issued", source="/agency/dpmptsp")
        headers = envelope.to_headers()
        key = f"503/P{i}".encode()
        if kind == "random_bytes":
            value = rng.randbytes(rng.randrange(0, 200))
        elif kind == "wrong_schema_id":
            value = frame(rng.randrange(1000, 10**6), rng.randbytes(30))
        elif kind == "truncated_avro":
            payload = {**(good or _permit()), "permit_number": key.decode()}
            value = schema.encode(payload)[: rng.randrange(5, 40)]
        else:
            value = schema.encode({**(good or _permit()), "permit_number": key.decode()})
            drop = rng.choice(["ce_id", "ce_source", "ce_type", "ce_time", "ce_specversion"])
            headers = [h for h in headers if h[0] != drop]
        publisher.send_signed("simpul.in.permit.issued", key, value, headers)
        poisoned[kind] += 1
        if i % 2 == 0:  # interleave the valid traffic (all of it: 2 000 in 4 000 poison)
            item = next(valid_iter, None)
            if item is not None:
                publish_plan([item], catalog, stack.settings, pool=valid_pool)
    publisher.close()
    publish_plan(list(valid_iter), catalog, stack.settings, pool=valid_pool)
    valid_pool.close()
    wait_until(lambda: _stored(stack) >= len(expect.valid_ids), 180, "valid events", every=1)

    def all_letters() -> dict | None:  # type: ignore[type-arg]
        found = dead_letter_origins(own_broker.bootstrap, stack.topology)
        return found if len(found) >= POISON else None

    letters = wait_until(all_letters, 180, f"{POISON} dead letters", every=2)
    assert len(letters) == POISON
    stages = {h["simpul_dlq_stage"] for h in letters.values()}
    # A message missing ce_source (or ce_id) cannot be tied to its signer: stage authenticate.
    assert stages <= {"authenticate", "headers", "decode", "schema"}, stages
    assert all(h["simpul_dlq_reason"] for h in letters.values())
    assert stack.worker is not None and stack.worker.poll() is None, "the worker stopped"
    assert stack.health()["status"] == "ok"
    assert_store_matches(stack, expect)
    stack.stop_worker()


def _permit() -> dict[str, object]:
    return {
        "permit_number": "x",
        "permit_type": "PBG",
        "nib": "9120001234567",
        "applicant_nik": "7271015203880002",
        "business_name": "Apotek Saleh",
        "kelurahan_code": "7271021002",
        "issued_at": dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
        "valid_until": None,
        "signature_digest": "ab" * 32,
    }


def test_newest_event_wins_per_key_whatever_the_order_and_replays(
    own_broker: Broker, pg_database: str, tmp_path: Path
) -> None:
    stack = make_stack(own_broker, pg_database, tmp_path)
    plan, expect = plan_traffic(stack.topology, 3000, duplicates=0.0, invalid=0.0, seed=8)
    rng = random.Random(2)
    shuffled = plan[:]
    rng.shuffle(shuffled)  # per key, updates now arrive out of order
    replayed = rng.sample(plan, 600)  # and some are delivered again later
    stack.start_worker()
    publish_plan(shuffled + replayed, stack.catalog(), stack.settings)
    wait_until(
        lambda: metric(stack, "simpul_events_received_total") >= len(plan) + 600,
        120,
        "all received",
        every=0.5,
    )
    assert_store_matches(stack, expect)
    stack.stop_worker()


def test_sigterm_finishes_the_batch_and_restart_reprocesses_nothing(
    own_broker: Broker, pg_database: str, tmp_path: Path
) -> None:
    stack = make_stack(own_broker, pg_database, tmp_path)
    stack.env["SIMPUL_BATCH_SIZE"] = "200"  # many small batches: SIGTERM lands mid-stream
    plan, expect = plan_traffic(stack.topology, 8000, duplicates=0.0, invalid=0.0, seed=6)
    publish_plan(plan, stack.catalog(), stack.settings)
    stack.start_worker()
    wait_until(lambda: _stored(stack) > 1500, 60, "worker busy")
    assert stack.stop_worker(signal.SIGTERM) == 0
    stored_before = _stored(stack)
    assert stored_before < len(plan), "the worker finished before SIGTERM; nothing was tested"
    stack.start_worker()
    wait_until(lambda: _stored(stack) >= len(expect.valid_ids), 120, "the rest stored")
    # The last batch is counted after its offsets are committed, a moment after its rows
    # are visible: wait for the count (a re-read would exceed it, and fail below).
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: metric(stack, "simpul_events_received_total") >= len(plan) - stored_before,
            30,
            "the last batch counted",
        )
    received_after = metric(stack, "simpul_events_received_total")
    assert received_after == len(plan) - stored_before, (
        f"restart re-read {received_after - (len(plan) - stored_before):.0f} messages"
    )
    assert metric(stack, "simpul_duplicates_dropped_total", stage="store") == 0
    assert_store_matches(stack, expect)
    stack.stop_worker()
