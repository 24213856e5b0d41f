"""Generated traffic with known expectations (valid, duplicate and every kind of invalid event),
publishing it through a failing broker, and checking the store and the topics against it."""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kafka.errors import KafkaError
from sqlalchemy import text

from simpul.catalog import EventCatalog
from simpul.citydata import PaluData
from simpul.cli.simulate import INVALID_KINDS
from simpul.codec import frame
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.publisher import PublisherPool
from simpul.topology.model import Topology
from tests.support.topics import read_topic

STATE_KEYS = {
    "employees": "nip",
    "assessments": "assessment_id",
    "permits": "permit_number",
    "documents": "document_number",
    "recipients": "nik",
    "deaths": "nik",
}


@dataclass
class Expectation:
    """What the store and the dead-letter topics must hold after a run."""

    valid_ids: set[str] = field(default_factory=set)
    newest: dict[tuple[str, str], tuple[dt.datetime, str]] = field(default_factory=dict)
    invalid: int = 0
    invalid_ids: set[str] = field(default_factory=set)
    duplicates: int = 0

    def add_valid(self, entity: str, key: str, when: dt.datetime, ce_id: str) -> None:
        self.valid_ids.add(ce_id)
        current = self.newest.get((entity, key))
        if current is None or (when, ce_id) > current:
            self.newest[(entity, key)] = (when, ce_id)


@dataclass(frozen=True, slots=True)
class Planned:
    event_type: str
    agency: str
    payload: dict[str, Any]
    ce_id: str
    time: dt.datetime
    kind: str  # "valid", "duplicate" or one of INVALID_KINDS


def plan_traffic(
    topology: Topology, count: int, duplicates: float, invalid: float, seed: int = 1
) -> tuple[list[Planned], Expectation]:
    """A shuffled-free list of messages (publish order) and what must come out of it."""
    rng = random.Random(seed)
    data = PaluData(topology, seed=seed, residents_count=3000, employees_count=500)
    expect = Expectation()
    plan: list[Planned] = []
    valid_so_far: list[Planned] = []
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    types = [t.name for t in topology.event_types if t.entity]  # not the derived types
    for i in range(count):
        when = base + dt.timedelta(milliseconds=i * 7)
        roll = rng.random()
        if valid_so_far and roll < duplicates:
            original = rng.choice(valid_so_far)
            plan.append(
                Planned(
                    original.event_type,
                    original.agency,
                    original.payload,
                    original.ce_id,
                    original.time,
                    "duplicate",
                )
            )
            expect.duplicates += 1
            continue
        event_type = rng.choice(types)
        payload = data.payload(event_type, when)
        agency = data.producer_of(event_type, payload)
        if roll < duplicates + invalid:
            kind = rng.choice(INVALID_KINDS)
            item = Planned(event_type, agency, payload, str(uuid.uuid4()), when, kind)
            plan.append(item)
            expect.invalid += 1
            expect.invalid_ids.add(item.ce_id)
            continue
        item = Planned(event_type, agency, payload, str(uuid.uuid4()), when, "valid")
        plan.append(item)
        valid_so_far.append(item)
        et = topology.event_type(event_type)
        key = str(payload[STATE_KEYS[et.entity]])
        expect.add_valid(et.entity, key, when, item.ce_id)
    return plan, expect


def publish_plan(
    plan: list[Planned],
    catalog: EventCatalog,
    bootstrap_settings: Any,
    pool: PublisherPool | None = None,
) -> None:
    """Publish `plan` in order; through `pool` if given (left open), else a pool of its own."""
    publisher = pool or PublisherPool(bootstrap_settings, catalog, linger_ms=20)
    for item in plan:
        if item.kind in ("valid", "duplicate"):
            publisher(item.agency).publish(
                item.event_type, item.payload, id=item.ce_id, time=item.time
            )
        else:
            send_invalid(publisher, catalog, item)
    if pool is None:
        publisher.close()


def send_invalid(publisher: Any, catalog: EventCatalog, item: Planned) -> Any:
    """Send one planned invalid event; returns the send future."""
    et = catalog.topology.event_type(item.event_type)
    key = str(item.payload[et.key]).encode()
    envelope = Envelope(
        type=item.event_type, source=f"/agency/{item.agency}", id=item.ce_id, time=item.time
    )
    schema = catalog.latest_schema(item.event_type)
    if item.kind == "bad_nik":
        broken = dict(item.payload)
        field_name = next(
            (
                f
                for f in ("nik", "resident_nik", "applicant_nik", "nip", "assessor_nip")
                if f in broken
            ),
            None,
        )
        assert field_name is not None
        broken[field_name] = broken[field_name][:-1]
        value = schema.encode(broken)
        key = str(broken[et.key]).encode()
    elif item.kind == "bad_kelurahan":
        broken = dict(item.payload)
        if "kelurahan_code" in broken:
            broken["kelurahan_code"] = broken["kelurahan_code"][:6] + "9001"
        elif "period" in broken:
            broken["period"] = "2026-13"
        else:  # hr.employee.updated: an appointment month 13 in the NIP
            broken["nip"] = broken["nip"][:12] + "13" + broken["nip"][14:]
            key = str(broken[et.key]).encode()
        value = schema.encode(broken)
    elif item.kind == "unauthorized":
        # Signed by kominfo itself: authentic, but kominfo does not produce this type.
        envelope = Envelope(
            type=item.event_type, source="/agency/kominfo", id=item.ce_id, time=item.time
        )
        value = schema.encode(item.payload)
        return publisher("kominfo").send_signed(et.topic("in"), key, value, envelope.to_headers())
    elif item.kind == "undecodable":
        value = frame(schema.id, b"\xff\xfe\x00garbage")
    elif item.kind == "missing_header":
        value = schema.encode(item.payload)
        headers = [h for h in envelope.to_headers() if h[0] != "ce_time"]
        return publisher(item.agency).send_signed(et.topic("in"), key, value, headers)
    else:
        raise ValueError(item.kind)
    # Signed: these are authentic events with bad content, refused by validation.
    return publisher(item.agency).send_signed(et.topic("in"), key, value, envelope.to_headers())


@dataclass
class AckTally:
    """What a publisher saw while the broker was failing: acks, failed sends, retries."""

    acked: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)  # exception name -> count
    rounds: int = 0
    seconds: float = 0.0

    @property
    def failed_sends(self) -> int:
        return sum(self.failures.values())


def publish_until_acked(
    plan: list[Planned],
    catalog: EventCatalog,
    settings: Any,
    chunk: int = 200,
    pause_s: float = 0.0,
    timeout_s: float = 300.0,
    tally: AckTally | None = None,
) -> AckTally:
    """Publish `plan` in chunks the way a careful agency system does: wait for each chunk's acks
    (acks=all), and send again, with the same ce_id, whatever the broker did not acknowledge.

    Counts every ce_id the broker acknowledged and every failed send by exception name. A resend
    of a message the broker had stored after all is a duplicate the bus drops by ce_id.
    """
    tally = tally or AckTally()
    started = time.monotonic()
    by_id = {item.ce_id: item for item in plan}
    pending = list(plan)
    # A batch the broker never answers fails after 60 s (the least kafka-python allows with its
    # 30 s request timeout), and is sent again.
    pool = PublisherPool(settings, catalog, linger_ms=20, delivery_timeout_ms=60_000)
    try:
        while pending:
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"{len(pending)} events never acknowledged in {timeout_s}s")
            tally.rounds += 1
            failed: list[Planned] = []
            for start in range(0, len(pending), chunk):
                sent: list[tuple[Planned, Any]] = []
                for item in pending[start : start + chunk]:
                    try:
                        sent.append((item, _send(pool, catalog, item)))
                    except KafkaError as error:  # metadata unavailable, buffer full
                        tally.failures[type(error).__name__] += 1
                        failed.append(item)
                for item, future in sent:
                    try:
                        future.get(timeout=60)
                        tally.acked.add(item.ce_id)
                    except KafkaError as error:
                        tally.failures[type(error).__name__] += 1
                        failed.append(item)
                if pause_s:
                    time.sleep(pause_s)
            pending = [by_id[i.ce_id] for i in failed if i.ce_id not in tally.acked]
            if pending:
                time.sleep(1)
    finally:
        pool.close()
    tally.seconds += time.monotonic() - started
    return tally


def _send(pool: PublisherPool, catalog: EventCatalog, item: Planned) -> Any:
    if item.kind in ("valid", "duplicate"):
        return pool(item.agency).publish(
            item.event_type, item.payload, id=item.ce_id, time=item.time
        )
    return send_invalid(pool, catalog, item)


def stored_count(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("select count(*) from event_log")) or 0
    finally:
        engine.dispose()


def assert_store_matches(database_url: str, expect: Expectation) -> None:
    """Every valid ce_id stored exactly once, nothing else; each state row the newest of its key."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            ids = list(conn.scalars(text("select ce_id from event_log")))
            assert len(ids) == len(set(ids)), "a ce_id is in event_log twice"
            missing = expect.valid_ids - set(ids)
            extra = set(ids) - expect.valid_ids
            assert not missing, f"{len(missing)} valid events lost, e.g. {sorted(missing)[:3]}"
            assert not extra, f"{len(extra)} events stored that should not be: {sorted(extra)[:3]}"
            for entity, key_column in STATE_KEYS.items():
                rows = dict(conn.execute(text(f"select {key_column}, ce_id from {entity}")).all())
                wanted = {
                    key: ce_id for (ent, key), (_, ce_id) in expect.newest.items() if ent == entity
                }
                assert rows == wanted, f"{entity}: current state differs from the newest events"
    finally:
        engine.dispose()


def assert_topics_match(bootstrap: str, topology: Topology, expect: Expectation) -> None:
    """The same conservation read from the broker with a plain client: every valid ce_id on its
    ``simpul.valid`` topic (at-least-once: copies allowed there), nothing else; the dead letters,
    by ce_id, exactly the invalid events injected."""
    valid: set[str] = set()
    letters: set[str] = set()
    for et in topology.event_types:
        for message in read_topic(bootstrap, et.topic("valid")):
            valid.add(dict(message.headers)["ce_id"].decode())
        for message in read_topic(bootstrap, et.topic("dlq")):
            letters.add(dict(message.headers)["ce_id"].decode())
    missing = expect.valid_ids - valid
    assert not missing, (
        f"{len(missing)} valid events missing on simpul.valid.*: {sorted(missing)[:3]}"
    )
    extra = valid - expect.valid_ids
    assert not extra, f"{len(extra)} unexpected events on simpul.valid.*: {sorted(extra)[:3]}"
    assert letters == expect.invalid_ids, (
        f"dead letters: {len(letters)} distinct ce_ids, {len(expect.invalid_ids)} injected; "
        f"{len(expect.invalid_ids - letters)} missing, {len(letters - expect.invalid_ids)} extra"
    )
