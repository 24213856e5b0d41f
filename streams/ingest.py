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
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.envelope import header
from simpul.errors import InvalidMessage
from simpul.registry_client import RegistryUnavailable
from simpul.settings import Settings
from simpul.topology import EventType, Topology
from sinks.central_store import TRANSIENT_ERRORS, CentralStore, StoredEvent, WriteResult
from sinks.dead_letter_log import DeadLetterLog, DeadLetterRow
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

#: aiokafka waits this long for data in a fetch; see streams/transport.py for why it is short.
FETCH_MAX_WAIT_MS = 100


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


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to produce: forwarded to simpul.valid or dead-lettered to simpul.dlq."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: float | None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets a batch in flight finish and commit before its partitions move to another worker."""

    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.service.batch_lock:
            for tp in revoked:
                self.service.dedup_for(tp.topic).forget([tp.partition])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.service.health.assigned_partitions = len(self.service.consumer.assignment())


class IngestService(Service):
    """Consumes every ``simpul.in.<type>`` topic of the topology in batches."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        catalog: EventCatalog,
        store: CentralStore,
        health: Health,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topology = topology
        self.catalog = catalog
        self.store = store
        self.health = health
        self.dead_letter_log = DeadLetterLog(store.engine)
        self.types_by_topic: dict[str, EventType] = {t.topic("in"): t for t in topology.event_types}
        self.dedup: dict[str, DedupWindow] = {
            topic: DedupWindow(settings.dedup_window) for topic in self.types_by_topic
        }
        self.batch_lock = asyncio.Lock()
        self._partitions: dict[str, list[int]] = {}
        self._partition_cache: dict[tuple[bytes, int], int] = {}
        self._partitioner = DefaultPartitioner()
        self._stopping = False
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    def dedup_for(self, topic: str) -> DedupWindow:
        return self.dedup[topic]

    async def on_start(self) -> None:
        bootstrap = self.settings.kafka_bootstrap.split(",")
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=512 * 1024,
            client_id=f"{self.settings.worker_id}-ingest",
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{self.settings.worker_id}.ingest",
            client_id=f"{self.settings.worker_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_poll_records=self.settings.batch_size,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            rebalance_timeout_ms=int(self.settings.rebalance_timeout_s * 1000),
            heartbeat_interval_ms=int(min(1.0, self.settings.session_timeout_s / 3) * 1000),
        )
        await self.producer.start()
        self.consumer.subscribe(list(self.types_by_topic), listener=_Rebalance(self))
        await self.consumer.start()

    async def on_stop(self) -> None:
        # Runs before mode cancels the loop: let the batch in flight finish and commit.
        self._stopping = True
        try:
            await asyncio.wait_for(self.batch_lock.acquire(), self.settings.stop_timeout_s)
        except TimeoutError:
            log.warning(
                "batch still in flight after %.0fs; stopping without it",
                self.settings.stop_timeout_s,
            )
        else:
            self.batch_lock.release()
        await self.consumer.stop()
        await self.producer.stop()

    @Service.task
    async def _consume(self) -> None:
        timeout_ms = int(self.settings.batch_seconds * 1000)
        while not self._stopping and not self.should_stop:
            batch = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.settings.batch_size
            )
            if not batch or self._stopping:
                continue  # a batch fetched while stopping is left for the next owner
            async with self.batch_lock:
                try:
                    await self.process(batch)
                except Exception as error:
                    log.critical("unexpected failure; stopping the worker", exc_info=True)
                    await self.crash(error)
                    return

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
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
                        list(m.headers or ()),
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
                    valid_topic, a.record.key, a.record.value, a.record.headers, a.record.timestamp
                )
                for a in outcome.accepted
            ]
            outgoing += [self._dead_letter(event_type, r, now) for r in outcome.rejected]
            letters += [_letter_row(event_type, r, now) for r in outcome.rejected]
        # The store write runs in a thread while the broker takes the forwarded messages.
        sent = asyncio.ensure_future(self._send_all(outgoing))
        result = await self._write(stored)
        rejects = self._store_rejects(outcomes, result, now, letters)
        await sent
        if rejects:
            await self._send_all(rejects)
        if letters:
            # One statement per batch, and only for batches that had dead letters.
            await self._retrying(self.dead_letter_log.record, letters)
        await self._commit(batch)
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
            event_type.topic("dlq"), record.key, record.value, headers, record.timestamp
        )

    async def _send_all(self, outgoing: Sequence[Outgoing]) -> None:
        """Produce in per-partition batches and wait for the broker's acks (acks=all).

        One future per batch instead of one coroutine per message: per-message sends were the
        largest cost of the event loop after decoding.
        """
        groups: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for item in outgoing:
            partitions = self._partitions.get(item.topic)
            if partitions is None:
                partitions = self._partitions[item.topic] = sorted(
                    await self.producer.partitions_for(item.topic)
                )
            groups[(item.topic, self._partition_of(item.key, partitions))].append(item)
        futures = []
        for (topic, partition), items in groups.items():
            batch = self.producer.create_batch()
            for item in items:
                if (
                    batch.append(
                        key=item.key,
                        value=item.value,
                        timestamp=item.timestamp,
                        headers=item.headers,
                    )
                    is None
                ):
                    futures.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self.producer.create_batch()
                    batch.append(
                        key=item.key,
                        value=item.value,
                        timestamp=item.timestamp,
                        headers=item.headers,
                    )
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        if futures:
            await asyncio.gather(*futures)

    def _partition_of(self, key: bytes | None, partitions: list[int]) -> int:
        # Same murmur2 partitioner as the Java client and kafka-python, so a key keeps its
        # partition number across simpul.in, simpul.valid and simpul.dlq (co-partitioning).
        if key is None:
            return random.choice(partitions)
        cache_key = (key, len(partitions))
        partition = self._partition_cache.get(cache_key)
        if partition is None:
            if len(self._partition_cache) > 100_000:
                self._partition_cache.clear()
            partition = self._partition_cache[cache_key] = self._partitioner(
                key, partitions, partitions
            )
        return partition

    async def _commit(self, batch: dict[TopicPartition, list[Any]]) -> None:
        offsets = {
            tp: OffsetAndMetadata(messages[-1].offset + 1, "") for tp, messages in batch.items()
        }
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The partitions moved during the batch; the new owner re-delivers, the store dedups.
            log.warning("offset commit refused after a rebalance: %s", error)
        except KafkaError as error:
            log.warning("offset commit failed (%s); the batch will be re-delivered", error)

    def _validate_all(
        self, by_topic: dict[str, list[RawRecord]]
    ) -> dict[str, tuple[list[Accepted], list[Rejected]]]:
        return {
            topic: validate_batch(records, self.types_by_topic[topic], self.catalog)
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

    def _observe_lag(self, batch: dict[TopicPartition, list[Any]]) -> None:
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
