"""The ingest path: batches from ``simpul.in.*`` to the central store.

Faust's stream machinery costs about 200 µs of CPU per message (several event-loop turns);
this service runs inside the Faust worker but takes whole batches from aiokafka's
``getmany()``, hands them to the pure pipeline, writes the store, produces the valid and dead
letter messages and, for subscribed types, the subscribers' inbox messages (fanned out from
the events already decoded here), appends their audit rows, and only then commits the batch's
offsets. It is pipelined (`streams.runtime.batching`): `IngestService.prepare` validates the
next batch while `IngestService.complete` stores, produces and commits the previous one;
completions run one at a time, in fetch order.

Delivery guarantee: at-least-once, effectively-once in the store. A crash at any point
re-delivers the uncommitted batch; the store's ``ce_id`` key absorbs the copies, inbox
consumers dedup by ``ce_id``, and the audit log records a re-delivery as one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from aiokafka import TopicPartition
from mode import Service

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.deadletter import dead_letter_headers, fit_dead_letter
from simpul.envelope import MAX_ID_LENGTH, header
from simpul.errors import InvalidMessage
from simpul.registry.client import RegistryUnavailable
from simpul.settings import Settings
from simpul.signing import KeyRing
from simpul.topology.model import EventType, Topology
from sinks.audit import AuditEntry
from sinks.central_store import TRANSIENT_ERRORS, CentralStore, StoredEvent, WriteResult
from sinks.dead_letters import DeadLetterLog, DeadLetterRow
from streams.fanout.service import FanoutBatch, InboxFanout, inbox_partitions
from streams.ingest.dlq_limit import DlqLimit
from streams.ingest.pipeline import (
    Accepted,
    CheckedBatch,
    DedupWindow,
    Invalid,
    RawRecord,
    agency_label,
    drop_duplicates,
    forwardable_timestamp,
    validate_batch,
)
from streams.runtime.batching import Batch, BatchService, Outgoing
from streams.runtime.retry import RetryPolicy

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
    pipelined: ClassVar[bool] = True

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        catalog: EventCatalog,
        store: CentralStore,
        health: Health,
        fanout: InboxFanout | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.topology = topology
        self.catalog = catalog
        self.store = store
        self.health = health
        self.fanout = fanout
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
            topic: DedupWindow.within(settings.worker.dedup_window_bytes)
            for topic in self.types_by_topic
        }
        self.dlq_limit = DlqLimit(
            settings.dlq.limit_share,
            settings.dlq.limit_window,
            settings.dlq.limit_min_events,
            settings.dlq.limit_cooldown_s,
            pause=settings.dlq.limit_pause,
        )
        self._resume_requests: set[str] = set()
        self.outage = RetryPolicy(0.5, settings.store.retry_max_s)

    def dedup_for(self, topic: str) -> DedupWindow:
        return self.dedup[topic]

    def topics(self) -> list[str]:
        return list(self.types_by_topic)

    def producer_options(self) -> dict[str, Any]:
        return {"max_batch_size": 512 * 1024}

    def consumer_options(self) -> dict[str, Any]:
        return {"max_partition_fetch_bytes": 4 * 1024 * 1024}

    async def open(self) -> None:
        if self.fanout is not None:
            await asyncio.to_thread(self.fanout.open)
            self._partitions.update(
                await inbox_partitions(self.producer, self.fanout.inbox_topics())
            )
            log.info("fan-out from ingest: %d routes", len(self.fanout.plan.routes))

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self.dedup_for(tp.topic).forget([tp.partition])

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.health.assigned_partitions = len(self.consumer.assignment())

    async def prepare(self, batch: Batch) -> _Staged:
        """Decode, validate and dedup a batch; build its store rows and messages. Runs while
        the previous batch is still being stored and produced (`complete`)."""
        received_at = dt.datetime.now(dt.UTC)
        by_topic: dict[str, list[RawRecord]] = defaultdict(list)
        for tp, messages in batch.items():
            records = by_topic[tp.topic]
            # simpul_* headers are Simpul's: a producer's are dropped here.
            records.extend(RawRecord.from_message(tp, m) for m in messages)
        validated = await self._retrying(self._validate_all, by_topic)
        held = self._apply_dlq_limit(batch, by_topic, validated)
        if held:
            batch = {tp: messages for tp, messages in batch.items() if tp.topic not in held}
            for topic in held:
                del validated[topic]
        began = time.thread_time()
        staged = _Staged(batch, dt.datetime.now(dt.UTC))
        staged.outcomes = [
            (
                self.types_by_topic[topic],
                by_topic[topic],
                drop_duplicates(valid, rejected, self.dedup[topic]),
            )
            for topic, (valid, rejected) in validated.items()
        ]
        staged.stored = [
            a.to_stored(event_type, received_at)
            for event_type, _, outcome in staged.outcomes
            for a in outcome.accepted
        ]
        outgoing, letters, now = staged.outgoing, staged.letters, staged.now
        for event_type, _, outcome in staged.outcomes:
            valid_topic = event_type.topic("valid")
            outgoing += [
                Outgoing(
                    valid_topic,
                    a.record.key,
                    a.record.value,
                    a.record.headers,
                    forwardable_timestamp(a.record),
                    partition_key=a.record.key,
                )
                for a in outcome.accepted
            ]
            outgoing += [self._dead_letter(event_type, r, now) for r in outcome.rejected]
            letters += [_letter_row(event_type, r, now) for r in outcome.rejected]
        fanout_began = time.thread_time()
        metrics.STAGE_CPU.labels("forward").inc(fanout_began - began)
        fanned = staged.fanned
        for event_type, _, outcome in staged.outcomes:
            if self.fanout is not None and (routes := self.fanout.routes_for(event_type.name)):
                for a in outcome.accepted:
                    r = a.record
                    fanned.add(routes, a.payload, r.key, r.headers, forwardable_timestamp(r))
        outgoing += fanned.outgoing
        metrics.STAGE_CPU.labels("fanout").inc(time.thread_time() - fanout_began)
        return staged

    async def complete(self, staged: _Staged) -> None:
        """Store, produce and audit a prepared batch, then commit its offsets. Batches
        complete one at a time, in the order they were fetched."""
        # The store write runs in a thread while the broker takes the forwarded and inbox
        # messages; the audit rows follow the inbox acks, in a thread of their own.
        store_write = asyncio.ensure_future(self._write(staged.stored))
        await self.send_all(staged.outgoing)  # counts its CPU as the stage "produce"
        fanned, letters = staged.fanned, staged.letters
        audited = (
            asyncio.ensure_future(self._audit(fanned.entries))
            if self.fanout is not None and fanned.entries
            else None
        )
        result = await store_write
        rejects = self._store_rejects(staged.outcomes, result, staged.now, letters)
        if rejects:
            await self.send_all(rejects)
        if letters:
            # One statement per batch, and only for batches that had dead letters.
            self.dead_letter_log.add_all(letters)
            await self._retrying(self.dead_letter_log.flush)
        if audited is not None:
            await audited
        await self.commit(staged.batch)
        fanned.observe()
        for event_type, records, outcome in staged.outcomes:
            self._observe(event_type, records, outcome, result)
        self._observe_lag(staged.batch)

    def _apply_dlq_limit(
        self,
        batch: Batch,
        by_topic: dict[str, list[RawRecord]],
        validated: dict[str, tuple[list[Accepted], list[Invalid]]],
    ) -> set[str]:
        """Count each type's dead letters against the limit; the topics to hold back (their
        partitions rewound to this batch and paused) when the limit pauses them."""
        held = set()
        for topic, (_, rejected) in validated.items():
            name = self.types_by_topic[topic].name
            exceeded = self.dlq_limit.observe(name, len(by_topic[topic]), len(rejected))
            if exceeded and self.dlq_limit.pause_enabled:
                held.add(topic)
                self.dlq_limit.pause(name)
                log.warning(
                    "%s: over the dead-letter limit (%.0f%% of the window); paused for %.0fs "
                    "or until `simpul dlq resume %s`",
                    name,
                    self.settings.dlq.limit_share * 100,
                    self.settings.dlq.limit_cooldown_s,
                    name,
                )
        for tp, messages in batch.items():
            if tp.topic in held:
                self.consumer.seek(tp, messages[0].offset)  # re-read from here on resume
        held_tps = [tp for tp in batch if tp.topic in held]
        if held_tps:
            self.consumer.pause(*held_tps)
        return held

    def request_resume(self, type_name: str) -> bool:
        """Resume a type paused by the dead-letter limit (the worker's web command)."""
        if type_name not in self.dlq_limit.paused():
            return False
        self._resume_requests.add(type_name)
        return True

    @Service.timer(1.0)
    async def _resume_due(self) -> None:
        names = self.dlq_limit.due()
        for name in sorted(self._resume_requests):
            if self.dlq_limit.resume(name):
                names.append(name)
        self._resume_requests.clear()
        if not names or not self._connected:
            return
        topics = {self.topology.event_type(n).topic("in") for n in names}
        tps = [tp for tp in self.consumer.paused() if tp.topic in topics]
        async with self.batch_lock:
            self.consumer.resume(*tps)
        log.info("resumed %s after the dead-letter limit", ", ".join(sorted(names)))

    def _store_rejects(
        self,
        outcomes: Sequence[tuple[EventType, list[RawRecord], CheckedBatch]],
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
            rejected = Invalid(record, InvalidMessage("store", "store.row", reason))
            letters.append(self._dead_letter(event_type, rejected, now))
            rows.append(_letter_row(event_type, rejected, now))
        return letters

    def _dead_letter(self, event_type: EventType, rejected: Invalid, now: dt.datetime) -> Outgoing:
        error, record = rejected.error, rejected.record
        metrics.EVENTS_DEAD_LETTERED.labels(
            event_type.name, rejected.agency, error.stage, error.code
        ).inc()
        log.info(
            "dead letter %s[%s]@%s: %s", record.topic, record.partition, record.offset, error.reason
        )
        key, value, headers = fit_dead_letter(
            record.key,
            record.value,
            dead_letter_headers(
                record.headers, error.stage, error.code, error.reason, now, record.origin()
            ),
        )
        return Outgoing(
            event_type.topic("dlq"),
            key,
            value,
            headers,
            forwardable_timestamp(record),
            partition_key=record.key,
        )

    def _validate_all(
        self, by_topic: dict[str, list[RawRecord]]
    ) -> dict[str, tuple[list[Accepted], list[Invalid]]]:
        began = time.thread_time()
        validated = {
            topic: validate_batch(records, self.types_by_topic[topic], self.catalog, self.keyring)
            for topic, records in by_topic.items()
        }
        metrics.STAGE_CPU.labels("validate").inc(time.thread_time() - began)
        return validated

    async def _audit(self, entries: list[AuditEntry]) -> None:
        assert self.fanout is not None
        self.fanout.audit.add_all(entries)
        await self._retrying(self._audit_flush)

    def _audit_flush(self) -> None:
        assert self.fanout is not None
        began = time.thread_time()
        self.fanout.audit.flush()
        metrics.STAGE_CPU.labels("audit").inc(time.thread_time() - began)

    def _store_flush(self) -> WriteResult:
        began = time.thread_time()
        result = self.store.flush()
        metrics.STAGE_CPU.labels("store").inc(time.thread_time() - began)
        return result

    async def _write(self, stored: list[StoredEvent]) -> WriteResult:
        if not stored:
            return WriteResult()
        started = time.perf_counter()
        self.store.add_all(stored)
        result = await self._retrying(self._store_flush)
        metrics.STORE_BATCH_DURATION.observe(time.perf_counter() - started)
        metrics.STORE_BATCH_SIZE.observe(len(stored))
        if result.rejected:
            metrics.STORE_ERRORS.labels("row").inc(len(result.rejected))
        return result

    async def _retrying(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking store work in a thread; while the store is unreachable, back off and
        retry for as long as it takes (valid events are never dead-lettered for an outage)."""
        result = await self.outage.until_done(
            lambda: asyncio.to_thread(work, *args),
            (*TRANSIENT_ERRORS, RegistryUnavailable),
            self._unavailable,
        )
        metrics.STORE_UP.set(1)
        self.health.store_up, self.health.store_error = True, None
        self.health.store_down_since = None
        return result

    def _unavailable(self, error: BaseException, wait: float) -> None:
        if isinstance(error, RegistryUnavailable):
            # Only ids never seen before need the registry; known ones come from the cache.
            metrics.REGISTRY_UNAVAILABLE.inc()
            log.warning("%s; retrying the batch in %.1fs", error, wait)
            return
        metrics.STORE_ERRORS.labels("transient").inc()
        metrics.STORE_UP.set(0)
        if self.health.store_up:
            self.health.store_down_since = time.time()
        self.health.store_up = False
        self.health.store_error = str(getattr(error, "orig", error)).splitlines()[0]
        log.warning(
            "central store unavailable (%s); retrying in %.1fs", self.health.store_error, wait
        )

    def _observe(
        self,
        event_type: EventType,
        records: Sequence[RawRecord],
        outcome: CheckedBatch,
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


@dataclass(slots=True)
class _Staged:
    """A batch `IngestService.prepare` made ready: what `IngestService.complete` writes,
    produces and commits."""

    batch: Batch
    now: dt.datetime
    outcomes: list[tuple[EventType, list[RawRecord], CheckedBatch]] = field(default_factory=list)
    stored: list[StoredEvent] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    letters: list[DeadLetterRow] = field(default_factory=list)
    fanned: FanoutBatch = field(default_factory=FanoutBatch)


def _letter_row(event_type: EventType, rejected: Invalid, now: dt.datetime) -> DeadLetterRow:
    record, error = rejected.record, rejected.error
    return DeadLetterRow(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        type=event_type.name,
        agency=rejected.agency,
        stage=error.stage,
        code=_text(error.code, 128),
        reason=_text(error.reason, 2000),
        ce_id=_text(header(record.headers, "ce_id") or "", MAX_ID_LENGTH) or None,
        dead_lettered_at=now,
    )


def _text(value: str, limit: int) -> str:
    """What a text column holds: PostgreSQL refuses NUL characters and over-long values."""
    return value.replace("\x00", "\\0")[:limit]
