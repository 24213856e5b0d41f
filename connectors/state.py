"""Durable connector state in the central store: source positions, seen files, API keys.

Every table works on SQLite and PostgreSQL. A position is written only after the broker
acknowledged everything before it, so a restart (or SIGKILL) resumes without losing a row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)

from simpul.db import metadata

connector_offsets = Table(
    "connector_offsets",
    metadata,
    Column("connector", String(255), primary_key=True),
    Column("position", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

connector_files = Table(
    "connector_files",
    metadata,
    Column("connector", String(255), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("file_name", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("rows_published", Integer, nullable=False),
    Column("rows_rejected", Integer, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("agency", String(64), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("label", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OffsetStore:
    """Where each connector stopped reading: one JSON position per connector name."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, connector: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return conn.scalar(
                select(connector_offsets.c.position).where(
                    connector_offsets.c.connector == connector
                )
            )

    def save(self, connector: str, position: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(connector_offsets)
                .where(connector_offsets.c.connector == connector)
                .values(position=position, updated_at=_now())
            ).rowcount
            if not changed:
                conn.execute(
                    connector_offsets.insert().values(
                        connector=connector, position=position, updated_at=_now()
                    )
                )

    def seen_file(self, connector: str, sha256: str) -> str | None:
        """The name of a file with this content that was processed (published), if any.

        A file that failed entirely is not remembered as seen: fixed settings may let it pass.
        """
        with self.engine.connect() as conn:
            return conn.scalar(
                select(connector_files.c.file_name).where(
                    connector_files.c.connector == connector,
                    connector_files.c.sha256 == sha256,
                    connector_files.c.outcome == "done",
                )
            )

    def remember_file(
        self,
        connector: str,
        sha256: str,
        file_name: str,
        outcome: str,
        published: int,
        rejected: int,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(connector_files).where(
                    connector_files.c.connector == connector, connector_files.c.sha256 == sha256
                )
            )
            conn.execute(
                connector_files.insert().values(
                    connector=connector,
                    sha256=sha256,
                    file_name=file_name,
                    outcome=outcome,
                    rows_published=published,
                    rows_rejected=rejected,
                    processed_at=_now(),
                )
            )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    agency: str
    prefix: str
    label: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class ApiKeyStore:
    """Per-agency API keys for the HTTP ingress, stored as SHA-256 hashes only.

    Keys are 256 random bits, so a fast hash is enough (no password stretching needed);
    the plain key is shown once at creation and never stored.
    """

    KEY_PREFIX = "spk_"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, agency: str, label: str | None = None) -> tuple[ApiKey, str]:
        plain = self.KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            key_id = conn.execute(
                api_keys.insert().values(
                    agency=agency,
                    prefix=plain[:12],
                    key_hash=hash_key(plain),
                    label=label,
                    created_at=_now(),
                )
            ).inserted_primary_key
        assert key_id is not None
        return self.get(int(key_id[0])), plain

    def get(self, key_id: int) -> ApiKey:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
        return _api_key(row)

    def agency_for(self, plain: str) -> str | None:
        """The agency a presented key belongs to, or None (unknown or revoked)."""
        with self.engine.connect() as conn:
            return conn.scalar(
                select(api_keys.c.agency).where(
                    api_keys.c.key_hash == hash_key(plain), api_keys.c.revoked_at.is_(None)
                )
            )

    def revoke(self, key: str) -> int:
        """Revoke by id or by prefix (``spk_xxxxxxxx``); returns how many keys were revoked."""
        condition = api_keys.c.id == int(key) if key.isdigit() else api_keys.c.prefix == key[:12]
        with self.engine.begin() as conn:
            return conn.execute(
                update(api_keys)
                .where(condition, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            ).rowcount

    def list(self, agency: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.id)
        if agency:
            query = query.where(api_keys.c.agency == agency)
        with self.engine.connect() as conn:
            return [_api_key(row) for row in conn.execute(query)]


def _api_key(row: Any) -> ApiKey:
    return ApiKey(row.id, row.agency, row.prefix, row.label, row.created_at, row.revoked_at)
