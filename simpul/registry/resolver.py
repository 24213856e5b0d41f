"""The cached resolver the codec uses: schema ids to schemas, subjects to their latest schema.

It reads a `SchemaSource`: the central store directly (`simpul.registry.store.SchemaStore`) or
`simpul registry` over HTTP (`simpul.registry.client.RegistryClient`).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from simpul.codec import AvroSchema
from simpul.errors import InvalidMessage

#: How long an unknown id (or an id outside a subject) is remembered as such, in seconds.
MISS_TTL_S = 1.0


class SchemaSource(Protocol):
    """What the resolver reads: the central store directly, or `simpul registry` over HTTP."""

    def schema(self, schema_id: int) -> str | None: ...

    def latest(self, subject: str) -> tuple[int, int] | None: ...

    def subject_ids(self, subject: str) -> set[int]: ...


class SchemaResolver:
    """Ids to schemas and subjects to their latest id, cached so the hot path never queries.

    A schema id never changes meaning, so cached schemas never expire; a miss is remembered
    for a second only (a flood of bad ids must not query the source per message, and the
    id may be registered a moment later). A subject's latest schema is re-read after
    ``latest_ttl_s`` (None: never), so publishers pick up a new version without a restart;
    if the source fails then, the schema already known is kept.
    """

    def __init__(self, store: SchemaSource, *, latest_ttl_s: float | None = None) -> None:
        self.store = store
        self.latest_ttl_s = latest_ttl_s
        self._by_id: dict[int, AvroSchema] = {}
        self._latest: dict[str, tuple[float, AvroSchema]] = {}
        self._subject_ids: dict[str, set[int]] = {}
        self._misses: dict[int, float] = {}
        self._not_members: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def cached(self, schema_id: int) -> AvroSchema | None:
        """The schema of ``schema_id`` if it was read before; never asks the store."""
        return self._by_id.get(schema_id)

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
        now = time.monotonic()
        if cached is not None and (
            self.latest_ttl_s is None or now - cached[0] < self.latest_ttl_s
        ):
            return cached[1]
        try:
            found = self.store.latest(subject)
        except (ConnectionError, SQLAlchemyError):
            if cached is None:
                raise
            found = (cached[1].id, 0)  # the source failed: keep what we know
        if found is None:
            raise LookupError(
                f"subject {subject} has no registered schema; run `simpul schemas register`"
            )
        schema = self.by_id(found[0])
        with self._lock:
            self._latest[subject] = (now, schema)
        return schema

    def belongs_to(self, schema_id: int, subject: str) -> bool:
        ids = self._subject_ids.get(subject)
        if ids is not None and schema_id in ids:
            return True
        now = time.monotonic()
        missed_at = self._misses.get(schema_id)
        if missed_at is not None and now - missed_at < MISS_TTL_S:
            return False
        # An id of another subject, repeated, must not re-read the subject per message either.
        refused_at = self._not_members.get((subject, schema_id))
        if refused_at is not None and now - refused_at < MISS_TTL_S:
            return False
        ids = self.store.subject_ids(subject)
        if schema_id not in ids:
            # A source that is down answers from its cache, which cannot know an id registered
            # since. Resolving the id first tells: while the source is down that raises (the
            # caller retries, nothing is remembered), and an unknown id is invalid; once the id
            # resolves, the subject's ids are read again, so a refusal never rests on a list
            # read during an outage.
            self.by_id(schema_id)
            ids = self.store.subject_ids(subject)
        with self._lock:
            self._subject_ids[subject] = ids
            if schema_id not in ids:
                if len(self._not_members) > 10_000:
                    self._not_members.clear()
                self._not_members[(subject, schema_id)] = now
        return schema_id in ids
