"""Helpers for the fault tests: generated traffic with known expectations, dead letter reads,
and a throw-away PostgreSQL cluster that a test may stop and start."""

from __future__ import annotations

import datetime as dt
import functools
import os
import random
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from simpul.catalog import EventCatalog
from simpul.codec import frame
from simpul.envelope import Envelope, Headers
from simpul.publisher import PublisherPool
from simpul.settings import Settings
from simpul.signing import Signer, signer_for
from simpul.simulate import INVALID_KINDS, PaluData
from simpul.topology import Topology

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
            plan.append(Planned(event_type, agency, payload, str(uuid.uuid4()), when, kind))
            expect.invalid += 1
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
) -> None:
    publisher = PublisherPool(bootstrap_settings, catalog, linger_ms=20)
    for item in plan:
        if item.kind in ("valid", "duplicate"):
            publisher(item.agency).publish(
                item.event_type, item.payload, id=item.ce_id, time=item.time
            )
        else:
            send_invalid(publisher, catalog, item)
    publisher.close()


def send_invalid(publisher: Any, catalog: EventCatalog, item: Planned) -> None:
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
        publisher("kominfo").send_signed(et.topic("in"), key, value, envelope.to_headers())
        return
    elif item.kind == "undecodable":
        value = frame(schema.id, b"\xff\xfe\x00garbage")
    elif item.kind == "missing_header":
        value = schema.encode(item.payload)
        headers = [h for h in envelope.to_headers() if h[0] != "ce_time"]
        publisher(item.agency).send_signed(et.topic("in"), key, value, headers)
        return
    else:
        raise ValueError(item.kind)
    # Signed: these are authentic events with bad content, refused by validation.
    publisher(item.agency).send_signed(et.topic("in"), key, value, envelope.to_headers())


def install_test_keys(topology_file: Path) -> Path:
    """Generate signing keys for every agency and gateway of the topology into a temporary
    directory and point ``SIMPUL_KEYS_DIR`` / ``SIMPUL_PUBLIC_KEYS_FILE`` at it (this process
    and its children). Returns the public keys file."""
    from simpul.cli_keys import installation_owners
    from simpul.signing import ensure_keys
    from simpul.topology import load_topology

    if os.environ.get("SIMPUL_TEST_KEYS") == "1":
        return Path(os.environ["SIMPUL_PUBLIC_KEYS_FILE"])
    root = Path(tempfile.mkdtemp(prefix="simpul-test-keys-"))
    public, private = root / "public.keys.yaml", root / "private"
    ensure_keys(public, private, installation_owners(load_topology(topology_file)))
    os.environ.update(
        SIMPUL_KEYS_DIR=str(private),
        SIMPUL_PUBLIC_KEYS_FILE=str(public),
        SIMPUL_HTTP_TOKEN=uuid.uuid4().hex,  # status, health and connect REST need it
        SIMPUL_TEST_KEYS="1",
    )
    return public


@functools.cache
def test_signer(owner: str) -> Signer:
    """The signer of an agency or gateway under the test keys (`install_test_keys`)."""
    return signer_for(Settings(), owner)


def sign(owner: str, headers: Headers, key: bytes | None, value: bytes | None) -> Headers:
    """The one helper raw test producers use to sign a valid event as ``owner``."""
    return test_signer(owner).sign(headers, key, value)


def auth() -> dict[str, str]:
    """The header Simpul's status, health, metrics and connect endpoints need in tests."""
    return {"Authorization": f"Bearer {os.environ['SIMPUL_HTTP_TOKEN']}"}


def read_topic(bootstrap: str, topic: str, idle_ms: int = 2000) -> Iterator[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        consumer_timeout_ms=idle_ms,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    try:
        yield from consumer
    finally:
        consumer.close()


def dead_letter_origins(bootstrap: str, topology: Topology) -> dict[tuple[str, str, str], dict]:
    """Distinct dead letters by their origin (topic, partition, offset), with their headers.

    The dead-letter topic is at-least-once too: a worker killed after producing a dead letter
    but before committing produces it again; the origin identifies the copies.
    """
    origins: dict[tuple[str, str, str], dict] = {}
    for et in topology.event_types:
        for message in read_topic(bootstrap, et.topic("dlq")):
            headers = {k: v.decode(errors="replace") for k, v in message.headers}
            origin = (
                headers["simpul_dlq_topic"],
                headers["simpul_dlq_partition"],
                headers["simpul_dlq_offset"],
            )
            origins[origin] = headers
    return origins
