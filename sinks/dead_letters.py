"""The `dead_letters` table: one row per dead-lettered message, for the operations scorecard.

The Kafka topic ``simpul.dlq.<type>`` stays the record of truth (original bytes, replay);
this table only says who, when, where and why, so that per-agency dead-letter rates are one
indexed query instead of a read of every dead-letter topic.

Delivery guarantee: idempotent. The key is the rejected message's own position (topic,
partition, offset), so a batch re-delivered after a crash records each letter once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql, sqlite

from simpul.db import metadata
from simpul.errors import Stage
from simpul.identifiers import mask_identifiers
from sinks.base import Buffered

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("type", String(128), nullable=False),
    Column("agency", String(64), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("code", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("ce_id", String(255), nullable=True),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("topic", "partition", "offset"),
    Index("ix_dead_letters_agency_dead_lettered_at", "agency", "dead_lettered_at"),
)


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    topic: str
    partition: int
    offset: int
    type: str
    agency: str
    stage: Stage
    code: str
    reason: str
    ce_id: str | None
    dead_lettered_at: dt.datetime

    def as_dict(self) -> dict[str, object]:
        row = {name: getattr(self, name) for name in self.__slots__}
        row["reason"] = mask_identifiers(self.reason)  # never a raw NIK/NIP in the table
        return row


class DeadLetterLog(Buffered[DeadLetterRow, None]):
    """Records a batch's dead letters in one statement (insert-if-absent); as a `Sink`,
    `flush` records the added rows (blocking)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def _write(self, batch: Sequence[DeadLetterRow]) -> None:
        self.record(batch)

    def record(self, rows: Sequence[DeadLetterRow]) -> None:
        if not rows:
            return
        insert = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        statement = insert(dead_letters).on_conflict_do_nothing()
        with self.engine.begin() as conn:
            conn.execute(statement, [row.as_dict() for row in rows])
