"""Schema storage in the central store, and the cached resolver the codec uses.

Confluent semantics: a schema id is global (the same schema text under two subjects gets one
id); a subject has versions 1, 2, ... each pointing at a schema id. A later issue serves this
over the Confluent REST API; the worker and the publisher already use real ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    func,
    select,
)

from simpul.codec import AvroSchema, normalize
from simpul.db import metadata
from simpul.errors import InvalidMessage
from simpul.topology import Topology

schemas_table = Table(
    "schemas",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("schema_type", String(16), nullable=False, server_default="AVRO"),
    Column("schema", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

subject_versions_table = Table(
    "schema_subject_versions",
    metadata,
    Column("subject", String(255), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("schema_id", Integer, ForeignKey("schemas.id"), nullable=False, index=True),
    Column("deleted", Boolean, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


MISS_TTL_S = 1.0


def fingerprint(schema_text: str) -> str:
    return hashlib.sha256(normalize(schema_text).encode()).hexdigest()


class SchemaStore:
    """Registered schemas in the central store. Registering is idempotent."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, subject: str, schema_text: str) -> tuple[int, int]:
        """Register ``schema_text`` under ``subject``; returns (schema id, version)."""
        text = normalize(schema_text)
        digest = fingerprint(text)
        with self.engine.begin() as conn:
            schema_id = conn.scalar(
                select(schemas_table.c.id).where(schemas_table.c.fingerprint == digest)
            )
            if schema_id is None:
                schema_id = conn.execute(
                    schemas_table.insert().values(
                        fingerprint=digest, schema=text, created_at=dt.datetime.now(dt.UTC)
                    )
                ).inserted_primary_key[0]
            sv = subject_versions_table.c
            existing = conn.scalar(
                select(sv.version).where(
                    sv.subject == subject, sv.schema_id == schema_id, sv.deleted.is_(False)
                )
            )
            if existing is not None:
                return schema_id, existing
            version = (
                conn.scalar(select(func.max(sv.version)).where(sv.subject == subject)) or 0
            ) + 1
            conn.execute(
                subject_versions_table.insert().values(
                    subject=subject,
                    version=version,
                    schema_id=schema_id,
                    deleted=False,
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
            return schema_id, version

    def schema(self, schema_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(
                select(schemas_table.c.schema).where(schemas_table.c.id == schema_id)
            )

    def latest(self, subject: str) -> tuple[int, int] | None:
        """(schema id, version) of the subject's newest live version."""
        sv = subject_versions_table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sv.schema_id, sv.version)
                .where(sv.subject == subject, sv.deleted.is_(False))
                .order_by(sv.version.desc())
                .limit(1)
            ).first()
        return (row[0], row[1]) if row else None

    def subject_ids(self, subject: str) -> set[int]:
        sv = subject_versions_table.c
        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    select(sv.schema_id).where(sv.subject == subject, sv.deleted.is_(False))
                )
            )


class SchemaResolver:
    """Ids to schemas and subjects to their latest id, cached so the hot path never queries.

    A schema id never changes meaning, so cached schemas never expire; a miss is remembered
    for a second only (a flood of bad ids must not query the store per message, and the
    id may be registered a moment later).
    """

    def __init__(self, store: SchemaStore) -> None:
        self.store = store
        self._by_id: dict[int, AvroSchema] = {}
        self._latest: dict[str, AvroSchema] = {}
        self._subject_ids: dict[str, set[int]] = {}
        self._misses: dict[int, float] = {}
        self._lock = threading.Lock()

    def by_id(self, schema_id: int) -> AvroSchema:
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        unknown = InvalidMessage(
            "decode", "schema.unknown_id", f"value: schema id {schema_id} is not registered"
        )
        # Ids are 32-bit signed in the registry; random bytes often frame larger ones.
        if not 0 < schema_id < 2**31:
            raise unknown
        missed_at = self._misses.get(schema_id)
        if missed_at is not None and time.monotonic() - missed_at < MISS_TTL_S:
            raise unknown
        text = self.store.schema(schema_id)
        if text is None:
            with self._lock:
                if len(self._misses) > 10_000:
                    self._misses.clear()
                self._misses[schema_id] = time.monotonic()
            raise unknown
        schema = AvroSchema.from_text(schema_id, text)
        with self._lock:
            self._by_id[schema_id] = schema
        return schema

    def latest(self, subject: str) -> AvroSchema:
        cached = self._latest.get(subject)
        if cached is not None:
            return cached
        found = self.store.latest(subject)
        if found is None:
            raise LookupError(
                f"subject {subject} has no registered schema; run `simpul schemas register`"
            )
        schema = self.by_id(found[0])
        with self._lock:
            self._latest[subject] = schema
        return schema

    def belongs_to(self, schema_id: int, subject: str) -> bool:
        ids = self._subject_ids.get(subject)
        if ids is not None and schema_id in ids:
            return True
        missed_at = self._misses.get(schema_id)
        if missed_at is not None and time.monotonic() - missed_at < MISS_TTL_S:
            return False
        if ids is None or schema_id not in ids:
            ids = self.store.subject_ids(subject)
            with self._lock:
                self._subject_ids[subject] = ids
        return schema_id in ids


def register_all(store: SchemaStore, topology: Topology, schemas_dir: Path) -> dict[str, int]:
    """Register every event type's ``.avsc`` under ``simpul.in.<type>-value``."""
    ids = {}
    for event_type in topology.event_types:
        text = (schemas_dir / event_type.schema_file).read_text(encoding="utf-8")
        ids[event_type.name], _ = store.register(event_type.subject, text)
    return ids
