"""Pure functions of the validation path: one raw record in, accepted or rejected out.

No Kafka and no Faust here, so every rule is unit-tested directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simpul.catalog import EventCatalog
from simpul.codec import unframe
from simpul.envelope import Envelope, Headers, header
from simpul.errors import InvalidMessage, Problem
from simpul.signing import Attestation, KeyRing, verify_many
from simpul.topology.model import EventType
from sinks.central_store import TRANSIENT_ERRORS, StoredEvent
from streams.runtime.records import RawRecord

__all__ = ["RawRecord"]  # re-exported: the pipeline's input


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class Accepted:
    record: RawRecord
    envelope: Envelope
    schema_id: int
    payload: dict[str, Any]
    published_at: dt.datetime | None = None
    attestation: Attestation | None = None

    def to_stored(self, event_type: EventType, received_at: dt.datetime) -> StoredEvent:
        return StoredEvent(
            ce_id=self.envelope.id,
            type=event_type.name,
            entity=event_type.entity,
            source=self.envelope.source,
            key=str(self.payload[event_type.key]),
            event_time=self.envelope.time,
            schema_id=self.schema_id,
            payload=self.payload,
            published_at=self.published_at,
            received_at=received_at,
            attestation=self.attestation,
            value=self.record.value,
        )


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that can never pass, and why: it becomes a dead letter. (A connector's
    `connectors.base.Rejected` is a record a source could not turn into an event.)"""

    record: RawRecord
    error: InvalidMessage

    @property
    def agency(self) -> str:
        return agency_label(self.record.headers)


@dataclass(slots=True)
class CheckedBatch:
    """One batch of one type after authentication, validation and deduplication."""

    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Invalid] = field(default_factory=list)
    duplicates: list[Accepted] = field(default_factory=list)


_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def agency_label(headers: Headers) -> str:
    """A bounded metrics label for the sending agency; ``unknown`` for malformed sources."""
    source = header(headers, "ce_source") or ""
    code = source.removeprefix("/agency/")
    return code if source.startswith("/agency/") and _LABEL.fullmatch(code) else "unknown"


def published_at(record: RawRecord) -> dt.datetime | None:
    """The producer's Kafka timestamp as a datetime; `InvalidMessage` when no date holds it."""
    if record.timestamp is None or record.timestamp <= 0:
        return None  # -1: the producer set none
    try:
        return dt.datetime.fromtimestamp(record.timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidMessage(
            "decode",
            "record.timestamp",
            f"timestamp: Kafka record timestamp {record.timestamp * 1000:.0f} ms is beyond "
            "the year 9999",
        ) from None


def forwardable_timestamp(record: RawRecord) -> float | None:
    """The record's timestamp to produce with, or None (the broker's time) when it is not one."""
    ts = record.timestamp
    return ts if ts is not None and 0 < ts < MAX_TIMESTAMP_S else None


#: 9999-12-31T23:59:59Z: a Kafka timestamp beyond it is no date.
MAX_TIMESTAMP_S = 253_402_300_799.0


def validate_record(record: RawRecord, event_type: EventType, catalog: EventCatalog) -> Accepted:
    """Every check an incoming message must pass, in order; raises `InvalidMessage`."""
    envelope = Envelope.from_headers(record.headers)
    published = published_at(record)
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
        first = problems[0]
        field_name = first.field if isinstance(first, Problem) else "(payload)"
        kind = catalog.identifiers(schema).get(field_name, field_name)
        raise InvalidMessage("validate", f"identifier.{kind}", "; ".join(problems))
    if where := nul_field(payload):
        raise InvalidMessage(
            "validate", "payload.nul", f"{where}: contains a NUL character (no store keeps it)"
        )
    if scope := catalog.scope_problem(agency, payload):
        raise InvalidMessage("authorize", "agency.out_of_scope", scope)
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
    if key != str(payload[event_type.key]):
        shown = key if key is None or len(key) <= 64 else f"{key[:64]}… ({len(key)} characters)"
        raise InvalidMessage(
            "validate",
            "key.mismatch",
            f"key: Kafka key {shown!r} is not the payload's {event_type.key} "
            f"{payload[event_type.key]!r}",
        )
    return Accepted(record, envelope, schema_id, payload, published)


def nul_field(payload: Any, path: str = "") -> str | None:
    """The first field (dotted path) whose text holds a NUL character, or None."""
    if not _holds_nul(payload):
        return None  # nearly every payload: no path is built
    stack: list[tuple[str, Any]] = [(path, payload)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return where or "(payload)"
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}", v) for i, v in enumerate(value))
    return None


def _holds_nul(payload: Any) -> bool:
    stack = [payload]  # no recursion, however deep a payload nests (as in `nul_field`)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


#: Raised as they are: the message's own rejection, and outages (the batch is retried).
RETRIED_ERRORS: tuple[type[Exception], ...] = (InvalidMessage, *TRANSIENT_ERRORS, ConnectionError)


def check_record(record: RawRecord, event_type: EventType, catalog: EventCatalog) -> Accepted:
    """`validate_record`, total: whatever the bytes, an `Accepted` or an `InvalidMessage`.

    Only an outage (store, registry) raises something else, so the batch is retried. Any other
    exception is a check that failed on input nobody foresaw; it becomes a dead letter with
    stage ``validate`` and code ``unexpected.<exception>`` instead of stopping the stream.
    """
    try:
        return validate_record(record, event_type, catalog)
    except RETRIED_ERRORS:  # and InvalidMessage itself
        raise
    except Exception as error:  # the one place an unforeseen failure is caught
        # The exception's text may quote the payload (a NIK); the reason names where instead.
        where = traceback.extract_tb(error.__traceback__)[-1]
        raise InvalidMessage(
            "validate",
            f"unexpected.{type(error).__name__}"[:128],
            f"(message): could not be checked: {type(error).__name__} at "
            f"{Path(where.filename).name}:{where.lineno}",
        ) from None


class DedupWindow:
    """The most recent ce_ids per partition, within a memory budget whatever their length.

    Duplicates of one event share its key and so its partition, so a per-partition window
    suffices. Each partition keeps two generations of 16-byte BLAKE2b digests of the ids: when
    the current generation holds half the capacity it becomes the previous one, and the one
    before is dropped. So the window remembers the last ``capacity / 2`` to ``capacity`` ids
    and costs at most ``capacity * ENTRY_BYTES`` per partition. It is a fast path only: the
    central store's ``ce_id`` primary key is what makes delivery effectively-once, including
    after a restart empties this window.
    """

    #: Measured cost of one remembered id (digest object and set slot), with headroom;
    #: tests/unit/streams/ingest/test_robustness.py checks it with tracemalloc.
    ENTRY_BYTES = 128

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._half = max(1, capacity // 2)
        self._seen: dict[int, tuple[set[bytes], set[bytes]]] = {}

    @classmethod
    def within(cls, max_bytes: int) -> DedupWindow:
        """A window that costs at most ``max_bytes`` per partition."""
        return cls(max_bytes // cls.ENTRY_BYTES)

    def seen(self, partition: int, ce_id: str) -> bool:
        """True if ``ce_id`` was seen recently; otherwise remembers it."""
        if self.capacity == 0:
            return False
        digest = hashlib.blake2b(ce_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        current, previous = self._seen.get(partition) or self._seen.setdefault(
            partition, (set(), set())
        )
        if digest in current or digest in previous:
            return True
        if len(current) >= self._half:
            current, previous = set(), current
            self._seen[partition] = (current, previous)
        current.add(digest)
        return False

    def remembered(self, partition: int) -> int:
        """How many ids the partition's window holds now."""
        current, previous = self._seen.get(partition, (set(), set()))
        return len(current) + len(previous)

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
) -> CheckedBatch:
    """Authenticate and validate every record, then drop duplicates."""
    valid, rejected = validate_batch(records, event_type, catalog, keyring)
    return drop_duplicates(valid, rejected, dedup)


def validate_batch(
    records: Sequence[RawRecord],
    event_type: EventType,
    catalog: EventCatalog,
    keyring: KeyRing,
) -> tuple[list[Accepted], list[Invalid]]:
    """Authentication, then validation, without side effects, so a batch that fails
    half-way (the store is down while a schema is looked up) can be retried unchanged."""
    valid: list[Accepted] = []
    rejected: list[Invalid] = []
    keyring.refresh()
    checked = verify_many(keyring, [(r.headers, r.key, r.value) for r in records])
    for record, attestation in zip(records, checked, strict=True):
        if isinstance(attestation, InvalidMessage):  # authentication comes first
            rejected.append(Invalid(record, attestation))
            continue
        try:
            accepted = check_record(record, event_type, catalog)
        except InvalidMessage as error:
            rejected.append(Invalid(record, error))
            continue
        accepted.attestation = attestation
        valid.append(accepted)
    return valid, rejected


def drop_duplicates(
    valid: Sequence[Accepted], rejected: list[Invalid], dedup: DedupWindow
) -> CheckedBatch:
    outcome = CheckedBatch(rejected=rejected)
    for accepted in valid:
        if dedup.seen(accepted.record.partition, accepted.envelope.id):
            outcome.duplicates.append(accepted)
        else:
            outcome.accepted.append(accepted)
    return outcome
