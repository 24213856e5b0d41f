"""The central store: `event_log` keyed by `ce_id` and one current-state table per entity.

Delivery guarantee: idempotent. Writing the same event twice is a no-op (insert-if-absent on
``ce_id``), and a current-state row only changes for a newer event, ordered by
(``event_time``, ``ce_id``), so replays and out-of-order arrival end in the same state.
Callers commit their consumer offsets only after `CentralStore.flush` returned (the `Sink`
contract of sinks/base.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError

from simpul.db import dumps, metadata
from simpul.signing import Attestation
from sinks.base import Buffered
from sinks.dead_letters import dead_letters  # noqa: F401  (a store table too)

log = logging.getLogger(__name__)

event_log = Table(
    "event_log",
    metadata,
    Column("ce_id", String(255), primary_key=True),
    Column("type", String(128), nullable=False),
    Column("source", String(128), nullable=False),
    Column("key", String(255), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("schema_id", Integer, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Who vouched for the event (simpul.signing), kept as evidence: the signature, its key,
    # the key's owner, the gateway if one signed for the agency, and the exact signed bytes.
    Column("key_id", String(128), nullable=True),
    Column("signer", String(64), nullable=True),
    Column("gateway", String(64), nullable=True),
    Column("signature", Text, nullable=True),
    Column("signed_headers", JSON, nullable=True),
    Column("signed_value", Text, nullable=True),  # base64 of the Kafka value
    Column("signature_proof", Text, nullable=True),  # ce_sigproof, when signed in a batch
    Index("ix_event_log_type_event_time", "type", "event_time"),
    Index("ix_event_log_key", "key"),
    Index("ix_event_log_source_stored_at", "source", "stored_at"),  # operations scorecard
)


def _state_columns() -> list[Column[Any]]:
    return [
        Column("event_time", DateTime(timezone=True), nullable=False),
        Column("ce_id", String(255), nullable=False),
        Column("source", String(128), nullable=False),
        Column("stored_at", DateTime(timezone=True), nullable=False),
    ]


employees = Table(
    "employees",
    metadata,
    Column("nip", String(18), primary_key=True),
    Column("name", Text, nullable=False),
    Column("unit_code", String(64), nullable=False),
    Column("position", Text, nullable=False),
    Column("grade", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    *_state_columns(),
)

assessments = Table(
    "assessments",
    metadata,
    Column("assessment_id", String(64), primary_key=True),
    Column("nip", String(18), nullable=False, index=True),
    Column("period", String(7), nullable=False),
    Column("rating", String(16), nullable=False),
    Column("score", Float, nullable=False),
    Column("assessor_nip", String(18), nullable=False),
    *_state_columns(),
)

permits = Table(
    "permits",
    metadata,
    Column("permit_number", String(128), primary_key=True),
    Column("permit_type", String(64), nullable=False),
    Column("nib", String(13), nullable=False, index=True),
    Column("applicant_nik", String(16), nullable=False),
    Column("business_name", Text, nullable=False),
    Column("kelurahan_code", String(10), nullable=False, index=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("valid_until", Date, nullable=True),
    Column("signature_digest", String(128), nullable=False),
    *_state_columns(),
)

documents = Table(
    "documents",
    metadata,
    Column("document_number", String(128), primary_key=True),
    Column("document_type", String(32), nullable=False),
    Column("kelurahan_code", String(10), nullable=False, index=True),
    Column("resident_nik", String(16), nullable=False, index=True),
    Column("purpose", Text, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    *_state_columns(),
)

recipients = Table(
    "recipients",
    metadata,
    Column("nik", String(16), primary_key=True),
    Column("programs", JSON, nullable=False),
    Column("disability_category", String(16), nullable=True),
    Column("kelurahan_code", String(10), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    *_state_columns(),
)

deaths = Table(
    "deaths",
    metadata,
    Column("nik", String(16), primary_key=True),
    Column("date_of_death", Date, nullable=False),
    Column("kelurahan_code", String(10), nullable=False, index=True),
    Column("certificate_number", String(128), nullable=False),
    *_state_columns(),
)

LOG_COLUMNS = (
    "ce_id",
    "type",
    "source",
    "key",
    "event_time",
    "schema_id",
    "payload",
    "published_at",
    "received_at",
    "stored_at",
    "key_id",
    "signer",
    "gateway",
    "signature",
    "signed_headers",
    "signed_value",
    "signature_proof",
)
STATE_META = {"event_time", "ce_id", "source", "stored_at"}


_DATETIME, _DATE = dt.datetime, dt.date
_UTC = dt.UTC


def _sqlite_value(value: Any) -> Any:
    # The same text SQLAlchemy's SQLite DateTime/Date types write and read back.
    cls = type(value)
    if cls is _DATETIME:
        if value.tzinfo is not None:
            value = value.astimezone(_UTC).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds")
    if cls is _DATE:
        return value.isoformat()
    return value


def _sqlite_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(map(_sqlite_value, row))


def _json_field(column: Column[Any]) -> str:
    """SQL reading a current-state column out of the staged JSON payload."""
    name = column.name
    if isinstance(column.type, JSON):
        return f"s.payload->'{name}'"
    cast = {
        DateTime: "timestamptz",
        Date: "date",
        Float: "double precision",
        Integer: "bigint",
    }.get(type(column.type))
    return f"(s.payload->>'{name}')::{cast}" if cast else f"s.payload->>'{name}'"


#: Entity name (the topology's ``entity``) -> current-state table.
ENTITY_TABLES: dict[str, Table] = {
    t.name: t for t in (employees, assessments, permits, documents, recipients, deaths)
}

#: Errors that say the database is unreachable or busy: retry the whole batch later.
#: (The write path uses the driver directly, so its own exception types appear too.)
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    psycopg.OperationalError,
    sqlite3.OperationalError,
)
#: Errors that say one row can never be written: dead-letter it, write the rest.
ROW_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    IntegrityError,
    ProgrammingError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
)


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class StoredEvent:
    """One valid event as the store receives it."""

    ce_id: str
    type: str
    entity: str | None  # None: event_log only (derived events)
    source: str
    key: str
    event_time: dt.datetime
    schema_id: int
    payload: dict[str, Any]
    published_at: dt.datetime | None
    received_at: dt.datetime
    attestation: Attestation | None = None
    value: bytes | None = None  # the Kafka value as signed

    def evidence(self) -> tuple[Any, ...]:
        """key_id, signer, gateway, signature, signed_headers (JSON), signed_value,
        signature_proof."""
        a = self.attestation
        if a is None:
            return (None, None, None, None, None, None, None)
        value = base64.b64encode(self.value).decode() if self.value is not None else None
        return (a.key_id, a.signer, a.gateway, a.signature, dumps(a.headers), value, a.proof)


@dataclass(slots=True)
class WriteResult:
    inserted: list[StoredEvent] = field(default_factory=list)
    duplicates: list[StoredEvent] = field(default_factory=list)
    rejected: list[tuple[StoredEvent, str]] = field(default_factory=list)


def newest_per_key(events: Iterable[StoredEvent], key_column: str) -> list[StoredEvent]:
    """Keep, per entity key, only the event that wins by (event_time, ce_id)."""
    best: dict[Any, StoredEvent] = {}
    for event in events:
        key = event.payload[key_column]
        current = best.get(key)
        if current is None or (event.event_time, event.ce_id) > (current.event_time, current.ce_id):
            best[key] = event
    return list(best.values())


def first_per_ce_id(events: Iterable[StoredEvent]) -> tuple[list[StoredEvent], list[StoredEvent]]:
    """Split into (first occurrence of each ce_id, later copies)."""
    seen: set[str] = set()
    unique: list[StoredEvent] = []
    copies: list[StoredEvent] = []
    for event in events:
        (copies if event.ce_id in seen else unique).append(event)
        seen.add(event.ce_id)
    return unique, copies


class CentralStore(Buffered[StoredEvent, WriteResult]):
    """SQLAlchemy access to the central store, PostgreSQL or SQLite alike; as a `Sink`,
    `flush` writes the added events with `write_isolating_bad_rows` (blocking)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def _write(self, batch: Sequence[StoredEvent]) -> WriteResult:
        return self.write_isolating_bad_rows(batch) if batch else WriteResult()

    def write(self, events: Sequence[StoredEvent]) -> WriteResult:
        """Write a batch in one transaction; raises on any database error."""
        result = WriteResult()
        unique, result.duplicates = first_per_ce_id(events)
        if not unique:
            return result
        with self.engine.begin() as conn:
            inserted_ids = self._insert_log(conn, unique)
            for event in unique:
                (result.inserted if event.ce_id in inserted_ids else result.duplicates).append(
                    event
                )
            by_entity: dict[str, list[StoredEvent]] = {}
            for event in result.inserted:
                if event.entity is not None:
                    by_entity.setdefault(event.entity, []).append(event)
            for entity, group in by_entity.items():
                if self.engine.dialect.name == "postgresql":
                    # The staged event_log rows already hold every payload: PostgreSQL derives
                    # the newest state per key itself instead of a second COPY from Python.
                    types = sorted({e.type for e in group})
                    self._pg_upsert_state_from_stage(conn, ENTITY_TABLES[entity], types)
                else:
                    self._upsert_state(conn, ENTITY_TABLES[entity], group)
        return result

    def write_isolating_bad_rows(self, events: Sequence[StoredEvent]) -> WriteResult:
        """Write a batch; if a row can never be written, write the others one by one.

        Transient errors (database down) still raise, so the caller retries the batch.
        """
        try:
            return self.write(events)
        except ROW_ERRORS as batch_error:
            log.warning(
                "batch of %d refused (%s); isolating the bad rows", len(events), batch_error
            )
        result = WriteResult()
        for event in events:
            try:
                single = self.write([event])
            except ROW_ERRORS as error:
                reason = str(getattr(error, "orig", error)).splitlines()[0]
                result.rejected.append((event, f"(store): {reason}"))
                continue
            result.inserted += single.inserted
            result.duplicates += single.duplicates
        return result

    # The write path talks to the driver directly: SQLAlchemy's per-row parameter processing
    # cost more than the database itself (profiled: ~60 % of the worker's store time).

    def _insert_log(self, conn: Connection, events: Sequence[StoredEvent]) -> set[str]:
        now = dt.datetime.now(dt.UTC)
        if self.engine.dialect.name == "postgresql":
            # Timestamps as ISO text: COPY parses them; psycopg's datetime dumping cost more.
            stamp = now.isoformat()
            rows: list[tuple[Any, ...]] = [
                (
                    e.ce_id,
                    e.type,
                    e.source,
                    e.key,
                    e.event_time.isoformat(),
                    e.schema_id,
                    dumps(e.payload),
                    e.published_at.isoformat() if e.published_at else None,
                    e.received_at.isoformat(),
                    stamp,
                    *e.evidence(),
                )
                for e in events
            ]
        else:
            rows = [
                (
                    e.ce_id,
                    e.type,
                    e.source,
                    e.key,
                    e.event_time,
                    e.schema_id,
                    dumps(e.payload),
                    e.published_at,
                    e.received_at,
                    now,
                    *e.evidence(),
                )
                for e in events
            ]
        raw: Any = conn.connection.driver_connection
        if self.engine.dialect.name == "postgresql":
            stage = self._pg_stage(raw, event_log, LOG_COLUMNS, rows)
            columns = ", ".join(LOG_COLUMNS)
            with raw.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO event_log ({columns}) SELECT {columns} FROM {stage} "
                    "ON CONFLICT (ce_id) DO NOTHING RETURNING ce_id"
                )
                return {row[0] for row in cursor.fetchall()}
        existing: set[str] = set()
        ids = [e.ce_id for e in events]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            existing.update(
                r[0]
                for r in raw.execute(f"SELECT ce_id FROM event_log WHERE ce_id IN ({marks})", chunk)
            )
        fresh = [_sqlite_row(row) for row in rows if row[0] not in existing]
        marks = ",".join("?" * len(LOG_COLUMNS))
        raw.executemany(f"INSERT INTO event_log ({', '.join(LOG_COLUMNS)}) VALUES ({marks})", fresh)
        return {row[0] for row in fresh}

    def _upsert_state(self, conn: Connection, table: Table, events: Sequence[StoredEvent]) -> None:
        key_column = next(iter(table.primary_key.columns)).name
        now = dt.datetime.now(dt.UTC)
        payload_columns = [c.name for c in table.columns if c.name not in STATE_META]
        json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
        columns = [*payload_columns, "event_time", "ce_id", "source", "stored_at"]
        rows = [
            (
                *(
                    dumps(e.payload.get(n)) if n in json_columns else e.payload.get(n)
                    for n in payload_columns
                ),
                e.event_time,
                e.ce_id,
                e.source,
                now,
            )
            for e in newest_per_key(events, key_column)
        ]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key_column)
        newer = (
            f"(excluded.event_time, excluded.ce_id) > ({table.name}.event_time, {table.name}.ce_id)"
        )
        names = ", ".join(columns)
        raw: Any = conn.connection.driver_connection
        if self.engine.dialect.name == "postgresql":
            stage = self._pg_stage(raw, table, columns, rows)
            with raw.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {stage} "
                    f"ON CONFLICT ({key_column}) DO UPDATE SET {updates} WHERE {newer}"
                )
            return
        marks = ",".join("?" * len(columns))
        raw.executemany(
            f"INSERT INTO {table.name} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({key_column}) DO UPDATE SET {updates} WHERE {newer}",
            [_sqlite_row(row) for row in rows],
        )

    @staticmethod
    def _pg_upsert_state_from_stage(conn: Connection, table: Table, types: list[str]) -> None:
        key_column = next(iter(table.primary_key.columns)).name
        payload_columns = [c for c in table.columns if c.name not in STATE_META]
        columns = [*(c.name for c in payload_columns), "event_time", "ce_id", "source", "stored_at"]
        selected = ", ".join(
            [
                *(_json_field(c) for c in payload_columns),
                "event_time",
                "ce_id",
                "source",
                "stored_at",
            ]
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key_column)
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"SELECT DISTINCT ON (k) {selected} FROM ("
            f"  SELECT *, payload->>'{key_column}' AS k FROM simpul_stage_event_log"
            f"  WHERE type = ANY(%s)) s "
            f"ORDER BY k, event_time DESC, ce_id DESC "
            f"ON CONFLICT ({key_column}) DO UPDATE SET {updates} "
            f"WHERE (excluded.event_time, excluded.ce_id) > "
            f"({table.name}.event_time, {table.name}.ce_id)"
        )
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(sql, (types,))

    @staticmethod
    def _pg_stage(
        raw: Any, table: Table, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
    ) -> str:
        """COPY rows into a session-local staging table emptied at commit; returns its name."""
        stage = f"simpul_stage_{table.name}"
        with raw.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cursor.copy(f"COPY {stage} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        return stage

    # Read side, for the CLI, the demo and tests.

    def counts_by_type(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(event_log.c.type, func.count()).group_by(event_log.c.type)
            ).all()
        return {type_: count for type_, count in rows}

    def state_count(self, entity: str) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(ENTITY_TABLES[entity])) or 0

    def state_row(self, entity: str, key: str) -> dict[str, Any] | None:
        table = ENTITY_TABLES[entity]
        key_column = next(iter(table.primary_key.columns))
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(key_column == key)).mappings().first()
        return dict(row) if row else None

    def event_ids(self, event_type: str | None = None) -> set[str]:
        stmt = select(event_log.c.ce_id)
        if event_type:
            stmt = stmt.where(event_log.c.type == event_type)
        with self.engine.connect() as conn:
            return set(conn.scalars(stmt))
