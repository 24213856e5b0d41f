"""Pure functions of the validation path: one raw record in, accepted or rejected out.

No Kafka and no Faust here, so every rule is unit-tested directly.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from simpul.catalog import EventCatalog
from simpul.codec import unframe
from simpul.envelope import Envelope, Headers, header
from simpul.errors import InvalidMessage
from simpul.identifiers import mask_identifiers
from simpul.signing import Attestation, KeyRing, verify_many
from simpul.topology import EventType
from sinks.central_store import StoredEvent


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A Kafka record as consumed, with its position so a dead letter can point back."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: float | None = None  # seconds since the epoch (producer CreateTime)


@dataclass(frozen=True, slots=True)
class Accepted:
    record: RawRecord
    envelope: Envelope
    schema_id: int
    payload: dict[str, Any]
    attestation: Attestation | None = None

    def to_stored(self, event_type: EventType, received_at: dt.datetime) -> StoredEvent:
        published = (
            dt.datetime.fromtimestamp(self.record.timestamp, dt.UTC)
            if self.record.timestamp
            else None
        )
        return StoredEvent(
            ce_id=self.envelope.id,
            type=event_type.name,
            entity=event_type.entity,
            source=self.envelope.source,
            key=str(self.payload[event_type.key]),
            event_time=self.envelope.time,
            schema_id=self.schema_id,
            payload=self.payload,
            published_at=published,
            received_at=received_at,
            attestation=self.attestation,
            value=self.record.value,
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    record: RawRecord
    error: InvalidMessage

    @property
    def agency(self) -> str:
        return agency_label(self.record.headers)


@dataclass(slots=True)
class BatchOutcome:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[Accepted] = field(default_factory=list)


def agency_label(headers: Headers) -> str:
    """A bounded metrics label for the sending agency; ``unknown`` for malformed sources."""
    source = header(headers, "ce_source") or ""
    code = source.removeprefix("/agency/")
    return code if source.startswith("/agency/") and 0 < len(code) <= 40 else "unknown"


def validate_record(record: RawRecord, event_type: EventType, catalog: EventCatalog) -> Accepted:
    """Every check an incoming message must pass, in order; raises `InvalidMessage`."""
    envelope = Envelope.from_headers(record.headers)
    if envelope.type != event_type.name:
        raise InvalidMessage(
            "headers",
            "header.type",
            f"ce_type: {envelope.type!r} does not match the topic's type {event_type.name}",
        )
    agency = catalog.topology.agency_for_source(envelope.source)
    if agency is None:
        raise InvalidMessage(
            "authorize",
            "agency.unknown",
            f"ce_source: {envelope.source!r} is not a declared agency",
        )
    if not event_type.may_produce(agency.code):
        raise InvalidMessage(
            "authorize",
            "agency.not_producer",
            f"ce_source: agency {agency.code} may not produce {event_type.name}",
        )
    schema_id, body = unframe(record.value)
    if not catalog.resolver.belongs_to(schema_id, event_type.subject):
        # Distinguish "no such id" from "id of another type" for the reader of the reason.
        catalog.resolver.by_id(schema_id)
        raise InvalidMessage(
            "schema",
            "schema.wrong_subject",
            f"value: schema id {schema_id} is not a version of {event_type.subject}",
        )
    schema = catalog.resolver.by_id(schema_id)
    payload = schema.decode_body(body)
    if problems := catalog.payload_problems(event_type, schema, payload, decoded=True):
        field_name = problems[0].split(":", 1)[0]
        kind = catalog.identifiers(schema).get(field_name, field_name)
        raise InvalidMessage("validate", f"identifier.{kind}", "; ".join(problems))
    if scope := catalog.scope_problem(agency, payload):
        raise InvalidMessage("authorize", "agency.out_of_scope", scope)
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
    if key != str(payload[event_type.key]):
        raise InvalidMessage(
            "validate",
            "key.mismatch",
            f"key: Kafka key {key!r} is not the payload's {event_type.key} "
            f"{payload[event_type.key]!r}",
        )
    return Accepted(record, envelope, schema_id, payload)


class DedupWindow:
    """The last N ce_ids seen per partition.

    Duplicates of one event share its key and so its partition, so a per-partition window
    suffices. It is a fast path only: the central store's ``ce_id`` primary key is what makes
    delivery effectively-once, including after a restart empties this window.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: dict[int, OrderedDict[str, None]] = {}

    def seen(self, partition: int, ce_id: str) -> bool:
        """True if ``ce_id`` was seen before; otherwise remembers it."""
        if self.size == 0:
            return False
        window = self._seen.setdefault(partition, OrderedDict())
        if ce_id in window:
            window.move_to_end(ce_id)
            return True
        window[ce_id] = None
        if len(window) > self.size:
            window.popitem(last=False)
        return False

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop windows of partitions this worker no longer owns."""
        for partition in partitions:
            self._seen.pop(partition, None)


def process_batch(
    records: Sequence[RawRecord],
    event_type: EventType,
    catalog: EventCatalog,
    dedup: DedupWindow,
    keyring: KeyRing,
) -> BatchOutcome:
    """Authenticate and validate every record, then drop duplicates."""
    valid, rejected = validate_batch(records, event_type, catalog, keyring)
    return drop_duplicates(valid, rejected, dedup)


def validate_batch(
    records: Sequence[RawRecord],
    event_type: EventType,
    catalog: EventCatalog,
    keyring: KeyRing,
) -> tuple[list[Accepted], list[Rejected]]:
    """Authentication, then validation, without side effects, so a batch that fails
    half-way (the store is down while a schema is looked up) can be retried unchanged."""
    valid: list[Accepted] = []
    rejected: list[Rejected] = []
    keyring.refresh()
    checked = verify_many(keyring, [(r.headers, r.key, r.value) for r in records])
    for record, attestation in zip(records, checked, strict=True):
        if isinstance(attestation, InvalidMessage):  # authentication comes first
            rejected.append(Rejected(record, attestation))
            continue
        try:
            accepted = validate_record(record, event_type, catalog)
        except InvalidMessage as error:
            rejected.append(Rejected(record, error))
            continue
        valid.append(
            Accepted(
                accepted.record,
                accepted.envelope,
                accepted.schema_id,
                accepted.payload,
                attestation,
            )
        )
    return valid, rejected


def drop_duplicates(
    valid: Sequence[Accepted], rejected: list[Rejected], dedup: DedupWindow
) -> BatchOutcome:
    outcome = BatchOutcome(rejected=rejected)
    for accepted in valid:
        if dedup.seen(accepted.record.partition, accepted.envelope.id):
            outcome.duplicates.append(accepted)
        else:
            outcome.accepted.append(accepted)
    return outcome


def dead_letter_headers(
    record: RawRecord, stage: str, code: str, reason: str, now: dt.datetime
) -> Headers:
    """The original headers plus where and why the message was rejected (a NIK or NIP in
    the reason masked)."""
    return [
        *record.headers,
        ("simpul_dlq_reason", mask_identifiers(reason).encode()),
        ("simpul_dlq_stage", stage.encode()),
        ("simpul_dlq_code", code.encode()),
        ("simpul_dlq_topic", record.topic.encode()),
        ("simpul_dlq_partition", str(record.partition).encode()),
        ("simpul_dlq_offset", str(record.offset).encode()),
        ("simpul_dlq_time", now.isoformat().encode()),
    ]


DLQ_HEADERS = {
    "simpul_dlq_reason",
    "simpul_dlq_stage",
    "simpul_dlq_code",
    "simpul_dlq_topic",
    "simpul_dlq_partition",
    "simpul_dlq_offset",
    "simpul_dlq_time",
}


def strip_dead_letter_headers(headers: Headers) -> Headers:
    """Headers as the agency sent them, for a replay."""
    return [(k, v) for k, v in headers if k not in DLQ_HEADERS]
