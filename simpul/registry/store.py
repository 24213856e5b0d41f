"""Schema storage in the central store.

Confluent semantics: a schema id is global (the same schema text under two subjects gets one
id); a subject has versions 1, 2, ... each pointing at a schema id, soft-deletable. `simpul
registry` (``simpul/registry/api.py``) serves this store over the Confluent REST API; the
cached resolver (``simpul/registry/resolver.py``) reads either this store or that API
(``simpul/registry/client.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
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
from sqlalchemy.exc import IntegrityError

from simpul.codec import normalize
from simpul.db import metadata
from simpul.registry import compatibility
from simpul.registry.compatibility import Incompatibility
from simpul.topology.model import Topology

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


schema_config_table = Table(
    "schema_config",
    metadata,
    # '' is the global level (a primary key cannot be NULL); else a subject's own level.
    Column("subject", String(255), primary_key=True),
    Column("compatibility", String(32), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

GLOBAL = ""


def fingerprint(schema_text: str) -> str:
    return hashlib.sha256(normalize(schema_text).encode()).hexdigest()


class SubjectNotFound(LookupError):
    """40401: the subject has no (live) versions."""


class VersionNotFound(LookupError):
    """40402: the subject has no such (live) version."""


class SchemaNotFound(LookupError):
    """40403: no such schema id, or the schema is not registered under the subject."""


class NotSoftDeleted(LookupError):
    """40405/40407: a permanent delete needs a soft delete first (as in Confluent)."""


class IncompatibleSchema(ValueError):
    """409: the schema does not follow the subject's versions under its compatibility mode."""

    def __init__(self, subject: str, mode: str, problems: list[Incompatibility]) -> None:
        self.subject = subject
        self.mode = mode
        self.problems = problems
        super().__init__(
            f"Schema being registered is incompatible with an earlier schema for subject "
            f"{subject!r} under {mode}: " + "; ".join(p.explain() for p in problems)
        )


@dataclass(frozen=True, slots=True)
class SubjectVersion:
    subject: str
    version: int
    id: int
    schema: str
    deleted: bool = False


class SchemaStore:
    """Registered schemas in the central store. Registering is idempotent.

    This is the storage behind `simpul registry` (Confluent semantics: ids global, versions
    per subject, soft delete) and a `SchemaSource` the resolver can read directly.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, subject: str, schema_text: str) -> tuple[int, int]:
        """Register ``schema_text`` under ``subject``; returns (schema id, version).

        No compatibility check: `register_checked` is the registry's path.
        """
        return self._register(subject, schema_text, check=False)

    def register_checked(self, subject: str, schema_text: str) -> tuple[int, int]:
        """Register under the subject's compatibility mode; raise `IncompatibleSchema`."""
        return self._register(subject, schema_text, check=True)

    def _register(self, subject: str, schema_text: str, *, check: bool) -> tuple[int, int]:
        text = normalize(schema_text)
        digest = fingerprint(text)
        for attempt in range(5):
            try:
                return self._register_once(subject, text, digest, check)
            except IntegrityError:
                # Two registrations raced for the same id or version: the loser retries.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _register_once(self, subject: str, text: str, digest: str, check: bool) -> tuple[int, int]:
        sv = subject_versions_table.c
        with self.engine.begin() as conn:
            schema_id = conn.scalar(
                select(schemas_table.c.id).where(schemas_table.c.fingerprint == digest)
            )
            if schema_id is not None:
                existing = conn.scalar(
                    select(sv.version).where(
                        sv.subject == subject, sv.schema_id == schema_id, sv.deleted.is_(False)
                    )
                )
                if existing is not None:
                    return schema_id, existing
            if check:
                mode = self._compatibility(conn, subject)
                live = conn.execute(
                    select(sv.version, schemas_table.c.schema)
                    .join(schemas_table, schemas_table.c.id == sv.schema_id)
                    .where(sv.subject == subject, sv.deleted.is_(False))
                    .order_by(sv.version)
                ).all()
                problems = compatibility.check(text, [(v, s) for v, s in live], mode)
                if problems:
                    raise IncompatibleSchema(subject, mode, problems)
            if schema_id is None:
                inserted = conn.execute(
                    schemas_table.insert().values(
                        fingerprint=digest, schema=text, created_at=dt.datetime.now(dt.UTC)
                    )
                ).inserted_primary_key
                assert inserted is not None  # a single-row insert always reports its key
                schema_id = int(inserted[0])
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
        found = self.version(subject, "latest")
        return (found.id, found.version) if found else None

    def subject_ids(self, subject: str) -> set[int]:
        sv = subject_versions_table.c
        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    select(sv.schema_id).where(sv.subject == subject, sv.deleted.is_(False))
                )
            )

    # --- the registry's reads -------------------------------------------------------------

    def subjects(self, *, deleted: bool = False) -> list[str]:
        sv = subject_versions_table.c
        query = select(sv.subject).distinct().order_by(sv.subject)
        if not deleted:
            query = query.where(sv.deleted.is_(False))
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def versions(self, subject: str, *, deleted: bool = False) -> list[int]:
        """Version numbers of the subject; raises `SubjectNotFound` when there are none."""
        sv = subject_versions_table.c
        query = select(sv.version).where(sv.subject == subject).order_by(sv.version)
        if not deleted:
            query = query.where(sv.deleted.is_(False))
        with self.engine.connect() as conn:
            found = list(conn.scalars(query))
        if not found:
            raise SubjectNotFound(f"Subject '{subject}' not found.")
        return found

    def _rows(self, subject: str, *, deleted: bool) -> Any:
        sv = subject_versions_table.c
        query = (
            select(sv.subject, sv.version, sv.schema_id, schemas_table.c.schema, sv.deleted)
            .join(schemas_table, schemas_table.c.id == sv.schema_id)
            .where(sv.subject == subject)
            .order_by(sv.version)
        )
        if not deleted:
            query = query.where(sv.deleted.is_(False))
        return query

    def version(
        self, subject: str, version: int | str, *, deleted: bool = False
    ) -> SubjectVersion | None:
        """One version (a number or ``"latest"``), or None; deleted ones only if asked."""
        sv = subject_versions_table.c
        query = self._rows(subject, deleted=deleted)
        if version == "latest":
            query = query.order_by(None).order_by(sv.version.desc()).limit(1)
        else:
            query = query.where(sv.version == int(version))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return SubjectVersion(*row) if row else None

    def subject_versions(self, subject: str, *, deleted: bool = False) -> list[SubjectVersion]:
        with self.engine.connect() as conn:
            return [
                SubjectVersion(*row) for row in conn.execute(self._rows(subject, deleted=deleted))
            ]

    def lookup(self, subject: str, schema_text: str, *, deleted: bool = False) -> SubjectVersion:
        """The subject's version holding this schema; raises `SubjectNotFound`/`SchemaNotFound`."""
        self.versions(subject, deleted=deleted)
        digest = fingerprint(schema_text)
        query = (
            self._rows(subject, deleted=deleted)
            .where(schemas_table.c.fingerprint == digest)
            .order_by(None)
            .order_by(subject_versions_table.c.version.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise SchemaNotFound("Schema not found")
        return SubjectVersion(*row)

    def id_versions(self, schema_id: int, *, deleted: bool = False) -> list[tuple[str, int]]:
        """(subject, version) pairs that point at a schema id."""
        sv = subject_versions_table.c
        query = select(sv.subject, sv.version).where(sv.schema_id == schema_id)
        if not deleted:
            query = query.where(sv.deleted.is_(False))
        with self.engine.connect() as conn:
            return [(s, v) for s, v in conn.execute(query.order_by(sv.subject, sv.version))]

    # --- deletes ----------------------------------------------------------------------------

    def delete_subject(self, subject: str, *, permanent: bool = False) -> list[int]:
        """Soft-delete every live version (or hard-delete soft-deleted ones); their numbers."""
        sv = subject_versions_table.c
        with self.engine.begin() as conn:
            rows = conn.execute(select(sv.version, sv.deleted).where(sv.subject == subject)).all()
            if not rows:
                raise SubjectNotFound(f"Subject '{subject}' not found.")
            if permanent:
                if any(not d for _, d in rows):
                    raise NotSoftDeleted(
                        f"Subject '{subject}' was not deleted first before being permanently "
                        "deleted"
                    )
                conn.execute(subject_versions_table.delete().where(sv.subject == subject))
                conn.execute(
                    schema_config_table.delete().where(schema_config_table.c.subject == subject)
                )
                return sorted(v for v, _ in rows)
            live = sorted(v for v, d in rows if not d)
            if not live:
                raise SubjectNotFound(f"Subject '{subject}' not found.")
            conn.execute(
                subject_versions_table.update()
                .where(sv.subject == subject, sv.deleted.is_(False))
                .values(deleted=True)
            )
            return live

    def delete_version(self, subject: str, version: int | str, *, permanent: bool = False) -> int:
        sv = subject_versions_table.c
        found = self.version(subject, version, deleted=permanent)
        if found is None:
            self.versions(subject, deleted=True)
            raise VersionNotFound(f"Version {version} not found.")
        with self.engine.begin() as conn:
            where = (sv.subject == subject, sv.version == found.version)
            if permanent:
                if not found.deleted:
                    raise NotSoftDeleted(
                        f"Subject '{subject}' Version {found.version} was not deleted first "
                        "before being permanently deleted"
                    )
                conn.execute(subject_versions_table.delete().where(*where))
            else:
                conn.execute(subject_versions_table.update().where(*where).values(deleted=True))
        return found.version

    # --- compatibility configuration ----------------------------------------------------------

    def _compatibility(self, conn: Connection, subject: str) -> str:
        cfg = schema_config_table.c
        rows = dict(
            conn.execute(
                select(cfg.subject, cfg.compatibility).where(cfg.subject.in_([subject, GLOBAL]))
            ).all()
        )
        return rows.get(subject) or rows.get(GLOBAL) or compatibility.DEFAULT_MODE

    def compatibility(self, subject: str | None = None) -> str:
        """The mode that applies: the subject's own, else the global one, else BACKWARD."""
        with self.engine.connect() as conn:
            return self._compatibility(conn, subject or GLOBAL)

    def config(self, subject: str | None) -> str | None:
        """The level configured at exactly this level (None: not set there)."""
        cfg = schema_config_table.c
        with self.engine.connect() as conn:
            return conn.scalar(select(cfg.compatibility).where(cfg.subject == (subject or GLOBAL)))

    def set_config(self, subject: str | None, mode: str) -> str:
        mode = mode.upper()
        if mode not in compatibility.MODES:
            raise ValueError(
                f"compatibility: {mode!r} is not one of {', '.join(compatibility.MODES)}"
            )
        cfg = schema_config_table.c
        key = subject or GLOBAL
        now = dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            updated = conn.execute(
                schema_config_table.update()
                .where(cfg.subject == key)
                .values(compatibility=mode, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    schema_config_table.insert().values(
                        subject=key, compatibility=mode, updated_at=now
                    )
                )
        return mode

    def delete_config(self, subject: str | None) -> str | None:
        """Remove a level's own setting; returns what it was."""
        was = self.config(subject)
        cfg = schema_config_table.c
        with self.engine.begin() as conn:
            conn.execute(schema_config_table.delete().where(cfg.subject == (subject or GLOBAL)))
        return was


def register_all(store: SchemaStore, topology: Topology, schemas_dir: Path) -> dict[str, int]:
    """Register every event type's ``.avsc`` under ``simpul.in.<type>-value``."""
    ids = {}
    for event_type in topology.event_types:
        text = (schemas_dir / event_type.schema_file).read_text(encoding="utf-8")
        ids[event_type.name], _ = store.register(event_type.subject, text)
    return ids
