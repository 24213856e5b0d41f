"""The ingest path: batches from ``simpul.in.*`` to the central store, one event-loop turn each.

Faust's stream machinery costs about 200 µs of CPU per message (several event-loop turns);
this service runs inside the Faust worker but takes whole batches from aiokafka's
``getmany()``, hands them to the pure pipeline, writes the store, produces the valid and dead
letter messages, and only then commits the batch's offsets.

Delivery guarantee: at-least-once, effectively-once in the store. A crash at any point
re-delivers the uncommitted batch; the store's ``ce_id`` key absorbs the copies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from aiokafka import TopicPartition

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.envelope import header, without_simpul_headers
from simpul.errors import InvalidMessage
from simpul.registry_client import RegistryUnavailable
from simpul.settings import Settings
from simpul.signing import KeyRing
from simpul.topology import EventType, Topology
from sinks.central_store import TRANSIENT_ERRORS, CentralStore, StoredEvent, WriteResult
from sinks.dead_letter_log import DeadLetterLog, DeadLetterRow
from streams.batching import Batch, BatchService, Outgoing
from streams.pipeline import (
    Accepted,
    BatchOutcome,
    DedupWindow,
    RawRecord,
    Rejected,
    agency_label,
    dead_letter_headers,
    drop_duplicates,
    validate_batch,
)

log = logging.getLogger("simpul.ingest")
T = TypeVar("T")


class Health:
    """What /health reports: the store's state, partitions held and the last batch."""

    def __init__(self) -> None:
        self.store_up = True
        self.store_error: str | None = None
        self.store_down_since: float | None = None
        self.last_batch_at: float | None = None
        self.assigned_partitions = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.store_up else "degraded",
            "store": "up" if self.store_up else "down",
            "store_error": self.store_error,
            "store_down_seconds": (
                round(time.time() - self.store_down_since, 1) if self.store_down_since else 0
            ),
            "last_batch_at": self.last_batch_at,
            "assigned_partitions": self.assigned_partitions,
        }


class IngestService(BatchService):
    """Consumes every ``simpul.in.<type>`` topic of the topology in batches; forwards to
    ``simpul.valid`` and dead-letters to ``simpul.dlq`` (partitioned by the record's key)."""

    role: ClassVar[str] = "ingest"

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        catalog: EventCatalog,
        store: CentralStore,
        health: Health,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.topology = topology
        self.catalog = catalog
        self.store = store
        self.health = health
        self.dead_letter_log = DeadLetterLog(store.engine)
        self.keyring = KeyRing(settings.public_keys_path)
        if not self.keyring.key_ids():
            log.warning(
                "no public keys in %s: every event will be dead-lettered (stage authenticate); "
                "create keys with `simpul agency keys create`",
                settings.public_keys_path,
            )
        self.types_by_topic: dict[str, EventType] = {t.topic("in"): t for t in topology.event_types}
        self.dedup: dict[str, DedupWindow] = {
            topic: DedupWindow(settings.dedup_window) for topic in self.types_by_topic
        }

    def dedup_for(self, topic: str) -> DedupWindow:
        return self.dedup[topic]

    def topics(self) -> list[str]:
        return list(self.types_by_topic)

    def producer_options(self) -> dict[str, Any]:
        return {"max_batch_size": 512 * 1024}

    def consumer_options(self) -> dict[str, Any]:
        return {"max_partition_fetch_bytes": 4 * 1024 * 1024}

    def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self.dedup_for(tp.topic).forget([tp.partition])

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.health.assigned_partitions = len(self.consumer.assignment())

    async def process(self, batch: Batch) -> None:
        received_at = dt.datetime.now(dt.UTC)
        by_topic: dict[str, list[RawRecord]] = defaultdict(list)
        for tp, messages in batch.items():
            records = by_topic[tp.topic]
            for m in messages:
                records.append(
                    RawRecord(
                        tp.topic,
                        tp.partition,
                        m.offset,
                        m.key,
                        m.value,
                        # simpul_* headers are Simpul's: a producer's are dropped here.
                        without_simpul_headers(m.headers or ()),
                        m.timestamp / 1000 if m.timestamp else None,
                    )
                )
        validated = await self._retrying(self._validate_all, by_topic)
        outcomes: list[tuple[EventType, list[RawRecord], BatchOutcome]] = [
            (
                self.types_by_topic[topic],
                by_topic[topic],
                drop_duplicates(valid, rejected, self.dedup[topic]),
            )
            for topic, (valid, rejected) in validated.items()
        ]
        stored = [
            a.to_stored(event_type, received_at)
            for event_type, _, outcome in outcomes
            for a in outcome.accepted
        ]
        now = dt.datetime.now(dt.UTC)
        outgoing: list[Outgoing] = []
        letters: list[DeadLetterRow] = []
        for event_type, _, outcome in outcomes:
            valid_topic = event_type.topic("valid")
            outgoing += [
                Outgoing(
                    valid_topic,
                    a.record.key,
                    a.record.value,
                    a.record.headers,
                    a.record.timestamp,
                    partition_key=a.record.key,
                )
                for a in outcome.accepted
            ]
            outgoing += [self._dead_letter(event_type, r, now) for r in outcome.rejected]
            letters += [_letter_row(event_type, r, now) for r in outcome.rejected]
        # The store write runs in a thread while the broker takes the forwarded messages.
        sent = asyncio.ensure_future(self.send_all(outgoing))
        result = await self._write(stored)
        rejects = self._store_rejects(outcomes, result, now, letters)
        await sent
        if rejects:
            await self.send_all(rejects)
        if letters:
            # One statement per batch, and only for batches that had dead letters.
            await self._retrying(self.dead_letter_log.record, letters)
        await self.commit(batch)
        for event_type, records, outcome in outcomes:
            self._observe(event_type, records, outcome, result)
        self._observe_lag(batch)

    def _store_rejects(
        self,
        outcomes: Sequence[tuple[EventType, list[RawRecord], BatchOutcome]],
        result: WriteResult,
        now: dt.datetime,
        rows: list[DeadLetterRow],
    ) -> list[Outgoing]:
        if not result.rejected:
            return []
        where = {a.envelope.id: (et, a.record) for et, _, o in outcomes for a in o.accepted}
        letters = []
        for event, reason in result.rejected:
            event_type, record = where[event.ce_id]
            rejected = Rejected(record, InvalidMessage("store", "store.row", reason))
            letters.append(self._dead_letter(event_type, rejected, now))
            rows.append(_letter_row(event_type, rejected, now))
        return letters

    def _dead_letter(self, event_type: EventType, rejected: Rejected, now: dt.datetime) -> Outgoing:
        error, record = rejected.error, rejected.record
        metrics.EVENTS_DEAD_LETTERED.labels(
            event_type.name, rejected.agency, error.stage, error.code
        ).inc()
        log.info(
            "dead letter %s[%s]@%s: %s", record.topic, record.partition, record.offset, error.reason
        )
        headers = dead_letter_headers(record, error.stage, error.code, error.reason, now)
        return Outgoing(
            event_type.topic("dlq"),
            record.key,
            record.value,
            headers,
            record.timestamp,
            partition_key=record.key,
        )

    def _validate_all(
        self, by_topic: dict[str, list[RawRecord]]
    ) -> dict[str, tuple[list[Accepted], list[Rejected]]]:
        return {
            topic: validate_batch(records, self.types_by_topic[topic], self.catalog, self.keyring)
            for topic, records in by_topic.items()
        }

    async def _write(self, stored: list[StoredEvent]) -> WriteResult:
        if not stored:
            return WriteResult()
        started = time.perf_counter()
        result = await self._retrying(self.store.write_isolating_bad_rows, stored)
        metrics.STORE_BATCH_DURATION.observe(time.perf_counter() - started)
        metrics.STORE_BATCH_SIZE.observe(len(stored))
        if result.rejected:
            metrics.STORE_ERRORS.labels("row").inc(len(result.rejected))
        return result

    async def _retrying(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking store work in a thread; while the store is unreachable, back off and
        retry for as long as it takes (valid events are never dead-lettered for an outage)."""
        delay = 0.5
        while True:
            try:
                result = await asyncio.to_thread(work, *args)
            except TRANSIENT_ERRORS as error:
                metrics.STORE_ERRORS.labels("transient").inc()
                metrics.STORE_UP.set(0)
                if self.health.store_up:
                    self.health.store_down_since = time.time()
                self.health.store_up = False
                self.health.store_error = str(getattr(error, "orig", error)).splitlines()[0]
                log.warning(
                    "central store unavailable (%s); retrying in %.1fs",
                    self.health.store_error,
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.settings.store_retry_max_s)
                continue
            except RegistryUnavailable as error:
                # Only ids never seen before need the registry; known ones come from the cache.
                metrics.REGISTRY_UNAVAILABLE.inc()
                log.warning("%s; retrying the batch in %.1fs", error, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.settings.store_retry_max_s)
                continue
            metrics.STORE_UP.set(1)
            self.health.store_up, self.health.store_error = True, None
            self.health.store_down_since = None
            return result

    def _observe(
        self,
        event_type: EventType,
        records: Sequence[RawRecord],
        outcome: BatchOutcome,
        result: WriteResult,
    ) -> None:
        name = event_type.name
        received: dict[str, int] = defaultdict(int)
        for record in records:
            received[agency_label(record.headers)] += 1
        for agency, count in received.items():
            metrics.EVENTS_RECEIVED.labels(name, agency).inc(count)
        valid: dict[str, int] = defaultdict(int)
        for accepted in outcome.accepted:
            valid[accepted.envelope.agency] += 1
        for agency, count in valid.items():
            metrics.EVENTS_VALID.labels(name, agency).inc(count)
        if outcome.duplicates:
            metrics.DUPLICATES_DROPPED.labels(name, "dedup").inc(len(outcome.duplicates))
        mine = [e for e in result.duplicates if e.type == name]
        if mine:
            metrics.DUPLICATES_DROPPED.labels(name, "store").inc(len(mine))
        inserted = [e for e in result.inserted if e.type == name]
        if inserted:
            metrics.EVENTS_STORED.labels(name).inc(len(inserted))
        latency = metrics.PUBLISH_TO_STORE_LATENCY.labels(name)
        now = time.time()
        for event in inserted:
            if event.published_at is not None:
                latency.observe(max(0.0, now - event.published_at.timestamp()))
        self.health.last_batch_at = now

    def _observe_lag(self, batch: Batch) -> None:
        for tp, messages in batch.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - messages[-1].offset - 1)
                )


def _letter_row(event_type: EventType, rejected: Rejected, now: dt.datetime) -> DeadLetterRow:
    record, error = rejected.record, rejected.error
    return DeadLetterRow(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        type=event_type.name,
        agency=rejected.agency,
        stage=error.stage,
        code=error.code[:128],
        reason=error.reason[:2000],
        ce_id=(header(record.headers, "ce_id") or None),
        dead_lettered_at=now,
    )
