"""The central store: `event_log` keyed by `ce_id` and one current-state table per entity.

Delivery guarantee: idempotent. Writing the same event twice is a no-op (insert-if-absent on
``ce_id``), and a current-state row only changes for a newer event, ordered by
(``event_time``, ``ce_id``), so replays and out-of-order arrival end in the same state.
Callers commit their consumer offsets only after `CentralStoreSink.flush` returned.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    and_,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError

from simpul.db import metadata

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
    Index("ix_event_log_type_event_time", "type", "event_time"),
    Index("ix_event_log_key", "key"),
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

#: Entity name (the topology's ``entity``) -> current-state table.
ENTITY_TABLES: dict[str, Table] = {
    t.name: t for t in (employees, assessments, permits, documents, recipients, deaths)
}

#: Errors that say the database is unreachable or busy: retry the whole batch later.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError,)
#: Errors that say one row can never be written: dead-letter it, write the rest.
ROW_ERRORS: tuple[type[Exception], ...] = (DataError, IntegrityError, ProgrammingError)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One valid event as the store receives it."""

    ce_id: str
    type: str
    entity: str
    source: str
    key: str
    event_time: dt.datetime
    schema_id: int
    payload: dict[str, Any]
    published_at: dt.datetime | None
    received_at: dt.datetime


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
    unique, copies = [], []
    for event in events:
        (copies if event.ce_id in seen else unique).append(event)
        seen.add(event.ce_id)
    return unique, copies


class CentralStore:
    """SQLAlchemy access to the central store, PostgreSQL or SQLite alike."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

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
                by_entity.setdefault(event.entity, []).append(event)
            for entity, group in by_entity.items():
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

    def _insert_log(self, conn: Connection, events: Sequence[StoredEvent]) -> set[str]:
        stmt = (
            self._insert(event_log)
            .on_conflict_do_nothing(index_elements=["ce_id"])
            .returning(event_log.c.ce_id)
        )
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                "ce_id": e.ce_id,
                "type": e.type,
                "source": e.source,
                "key": e.key,
                "event_time": e.event_time,
                "schema_id": e.schema_id,
                "payload": e.payload,
                "published_at": e.published_at,
                "received_at": e.received_at,
                "stored_at": now,
            }
            for e in events
        ]
        return set(conn.scalars(stmt, rows))

    def _upsert_state(self, conn: Connection, table: Table, events: Sequence[StoredEvent]) -> None:
        key_column = next(iter(table.primary_key.columns)).name
        now = dt.datetime.now(dt.UTC)
        payload_columns = [
            c.name
            for c in table.columns
            if c.name not in {"event_time", "ce_id", "source", "stored_at"}
        ]
        rows = [
            {
                **{name: e.payload.get(name) for name in payload_columns},
                "event_time": e.event_time,
                "ce_id": e.ce_id,
                "source": e.source,
                "stored_at": now,
            }
            for e in newest_per_key(events, key_column)
        ]
        stmt = self._insert(table)
        excluded = stmt.excluded
        newer = or_(
            excluded.event_time > table.c.event_time,
            and_(excluded.event_time == table.c.event_time, excluded.ce_id > table.c.ce_id),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[key_column],
            set_={c.name: excluded[c.name] for c in table.columns if c.name != key_column},
            where=newer,
        )
        conn.execute(stmt, rows)

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
