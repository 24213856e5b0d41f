"""The one batch service: the aiokafka clients, the ``getmany()`` loop, rebalances, stop, commit.

Every stream process consumes through it (ingest, joins, webhook delivery). A subclass names
its topics and processes one whole batch at a time; the loop holds ``batch_lock`` around each
batch and around a rebalance's `BatchService.on_revoked`, so a rebalance or a stop waits for
the batch in flight to be written, produced and committed before its partitions move.

A *pipelined* service splits a batch in two: `BatchService.prepare` (the CPU work: decode,
validate, build the messages) and `BatchService.complete` (the waiting: store, produce,
commit). The next batch is prepared while the previous one completes; completions still run
one at a time, in fetch order, so writes and commits keep their order. At most two batches are
in flight, and a rebalance or a stop waits for both.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from simpul import metrics
from simpul.kafka_clients import aiokafka_options
from simpul.settings import Settings

log = logging.getLogger("simpul.batching")


#: What one ``getmany()`` returns: aiokafka ``ConsumerRecord`` s by partition (aiokafka ships
#: no type information, so a record is ``Any`` to mypy).
Batch = dict[TopicPartition, list[Any]]


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class Outgoing:
    """A message to produce, on the partition that ``partition_key`` hashes to (or on
    ``partition``, when the producer must choose it: a join's state changelog)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: float | None  # seconds since the epoch (the record's own), None for now
    partition_key: bytes | None
    partition: int | None = None

    @property
    def timestamp_ms(self) -> int | None:
        """What the broker takes: milliseconds. Seconds there would date the record in January
        1970, and Apache Kafka's time retention deletes such records within minutes."""
        return None if self.timestamp is None else int(self.timestamp * 1000)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: BatchService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.service.batch_lock:  # the batch in flight finishes and commits first
            try:
                await self.service.drain()
            except Exception as error:
                await self.service.fail(error)
                return
            await self.service.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.service.on_assigned(assigned)


class BatchService(Service):
    """Consumes `topics()` in batches of up to ``settings.batch_size`` and hands each to
    `process`, which commits (`commit`) once its sink has the data."""

    #: Names the consumer group (``<worker_id>.<role>``) and the clients (``<worker_id>-<role>``).
    role: ClassVar[str]
    #: Most records one batch takes; None: ``settings.batch_size``.
    max_records: ClassVar[int | None] = None
    #: Prepare the next batch while the previous one completes (see the module's text).
    pipelined: ClassVar[bool] = False

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.batch_lock = asyncio.Lock()
        self._stopping = False
        self._connected = False
        self._partitions: dict[str, list[int]] = {}
        self._key_hashes: dict[bytes, int] = {}
        self._in_flight: asyncio.Future[None] | None = None
        self._failing: asyncio.Future[None] | None = None
        self._failed = False
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    # What a subclass says

    def topics(self) -> list[str]:
        raise NotImplementedError

    async def process(self, batch: Batch) -> None:
        raise NotImplementedError

    async def prepare(self, batch: Batch) -> Any:
        """A pipelined service's first half: what `complete` needs, without waiting on I/O."""
        return batch

    async def complete(self, staged: Any) -> None:
        """A pipelined service's second half: write, produce, commit."""
        await self.process(staged)

    def producer_options(self) -> dict[str, Any]:
        return {}

    def consumer_options(self) -> dict[str, Any]:
        return {}

    async def open(self) -> None:
        """Runs in the loop's task before the first fetch; a failure crashes the worker."""

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Partitions leave this process; runs under ``batch_lock``."""

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Partitions arrive, before the first fetch from them."""

    # Lifecycle

    async def on_start(self) -> None:
        await self.start_producer()
        await self.start_consumer()

    async def start_producer(self) -> None:
        self.producer = AIOKafkaProducer(
            **aiokafka_options(self.settings),
            acks="all",
            linger_ms=5,
            client_id=f"{self.settings.worker.id}-{self.role}",
            **self.producer_options(),
        )
        await self.producer.start()

    async def start_consumer(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **aiokafka_options(self.settings),
            group_id=f"{self.settings.worker.id}.{self.role}",
            client_id=f"{self.settings.worker.id}-{self.role}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._max_records,
            **self.settings.client_tuning().consumer_options(),
            **self.consumer_options(),
        )
        topics = self.topics()
        if topics:
            self.consumer.subscribe(topics, listener=_Rebalance(self))
        await self.consumer.start()
        self._connected = True

    @property
    def _max_records(self) -> int:
        return self.max_records or self.settings.consumer.batch_size

    def reader(self, purpose: str) -> AIOKafkaConsumer:
        """A consumer outside the group (assign, seek), for reading a topic back, not started."""
        return AIOKafkaConsumer(
            **aiokafka_options(self.settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.client_tuning().fetch_max_wait_ms,
            client_id=f"{self.settings.worker.id}-{self.role}-{purpose}",
        )

    async def on_stop(self) -> None:
        # Runs before mode cancels the loop: let the batch in flight finish and commit.
        self._stopping = True
        try:
            await asyncio.wait_for(self._quiesce(), self.settings.process.stop_timeout_s)
        except TimeoutError:
            log.warning(
                "%s batch still in flight after %.0fs; stopping without it",
                self.role,
                self.settings.process.stop_timeout_s,
            )
        if self._connected:
            await self.consumer.stop()
            await self.producer.stop()

    @Service.task
    async def _consume(self) -> None:
        try:
            await self.open()
        except Exception as error:
            log.critical("%s cannot start: %s", self.role, error)
            await self.crash(error)
            return
        if not self.topics():
            return
        timeout_ms = int(self.settings.consumer.batch_seconds * 1000)
        while not self._stopping and not self.should_stop and not self._failed:
            batch = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self._max_records
            )
            if not batch or self._stopping:
                continue  # a batch fetched while stopping is left for the next owner
            async with self.batch_lock:
                try:
                    staged = await self.prepare(batch)
                    await self.drain()
                    if self._failed:
                        return  # the last completion failed while this batch was prepared
                    if not self.pipelined:
                        await self.complete(staged)
                        continue
                    self._in_flight = asyncio.ensure_future(self.complete(staged))
                    self._in_flight.add_done_callback(self._completed)
                except Exception as error:
                    await self.fail(error)
                    return
            # Let the completion start its writes: a fetch of records already buffered returns
            # without yielding, and the next batch would be prepared before they began.
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Wait for the batch still completing (a pipelined service's); raises its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await in_flight

    async def _quiesce(self) -> None:
        async with self.batch_lock:
            try:
                await self.drain()
            except Exception:
                log.warning("%s batch in flight failed while stopping", self.role, exc_info=True)

    def _completed(self, done: asyncio.Future[None]) -> None:
        # A completion that fails while the loop waits for the next batch stops the service
        # now, not at the next batch.
        if done is self._in_flight and not done.cancelled() and done.exception() is not None:
            self._in_flight = None
            self._failed = True  # now: no later batch may complete (and commit past this one)
            self._failing = asyncio.ensure_future(self.fail(done.exception()))  # type: ignore[arg-type]

    async def fail(self, error: BaseException) -> None:
        self._failed = True
        log.critical("unexpected %s failure; stopping", self.role, exc_info=error)
        await self.crash(error)

    # Produce and commit

    async def send_all(self, outgoing: Sequence[Outgoing]) -> None:
        """Produce in per-partition batches and wait for the broker's acks (acks=all).

        One future per batch instead of one coroutine per message: per-message sends were the
        largest cost of the event loop after decoding.
        """
        began, spent = time.thread_time(), 0.0
        groups: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for item in outgoing:
            partitions = self._partitions.get(item.topic)
            if partitions is None:
                partitions = self._partitions[item.topic] = sorted(
                    await self.producer.partitions_for(item.topic)
                )
            partition = item.partition
            if partition is None:
                partition = self._partition_of(item.partition_key, partitions)
            groups[(item.topic, partition)].append(item)
        futures = []
        for (topic, partition), items in groups.items():
            batch = self.producer.create_batch()
            for item in items:
                if (
                    batch.append(
                        key=item.key,
                        value=item.value,
                        timestamp=item.timestamp_ms,
                        headers=item.headers,
                    )
                    is None
                ):
                    spent += time.thread_time() - began
                    futures.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    began = time.thread_time()
                    batch = self.producer.create_batch()
                    batch.append(
                        key=item.key,
                        value=item.value,
                        timestamp=item.timestamp_ms,
                        headers=item.headers,
                    )
            spent += time.thread_time() - began
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
            began = time.thread_time()
        # This task's own CPU only: while it awaits, the next batch is being prepared.
        metrics.STAGE_CPU.labels("produce").inc(spent + time.thread_time() - began)
        if futures:
            await asyncio.gather(*futures)

    def _partition_of(self, key: bytes | None, partitions: list[int]) -> int:
        # Same murmur2 partitioner as the Java client and kafka-python (aiokafka's
        # DefaultPartitioner), so a key keeps its partition number across simpul.in,
        # simpul.valid, simpul.dlq and the inboxes (co-partitioning). The hash is kept per key:
        # one event's forward and its inbox copies hash it once.
        if key is None:
            return random.choice(partitions)
        hashed = self._key_hashes.get(key)
        if hashed is None:
            if len(self._key_hashes) > 200_000:
                self._key_hashes.clear()
            hashed = self._key_hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]

    async def commit(self, batch: Batch) -> None:
        """Commit past the batch; call it once the batch's sink has the data."""
        offsets = {tp: OffsetAndMetadata(msgs[-1].offset + 1, "") for tp, msgs in batch.items()}
        if not offsets:
            return  # all of it held back (the dead-letter limit): aiokafka refuses {}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The partitions moved during the batch; the new owner re-delivers (at-least-once).
            log.warning("%s offset commit refused after a rebalance: %s", self.role, error)
        except KafkaError as error:
            log.warning(
                "%s offset commit failed (%s); the batch will be re-delivered", self.role, error
            )
