"""The fan-out: batches from ``simpul.valid.<type>`` to each subscriber's ``simpul.out.<agency>``.

Like the ingest service it takes whole batches from aiokafka's ``getmany()`` (no Faust
per-message machinery): decode, apply each subscription's filter, projection and masks with
the pure functions of `simpul.subscriptions`, encode under the subscription's derived schema,
produce with acks=all, append the audit rows, and only then commit the batch's offsets.

Delivery guarantee: at-least-once. A crash before the commit re-sends the batch to the
inboxes (consumers dedup by ``ce_id``) and records it again in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from simpul import metrics
from simpul.codec import AvroSchema, unframe
from simpul.envelope import header
from simpul.errors import InvalidMessage
from simpul.registry import SchemaResolver, SchemaStore
from simpul.settings import Settings
from simpul.subscriptions import Route, SubscriptionPlan, out_key, project
from simpul.topology import Topology
from sinks.audit import AuditEntry, AuditLog
from sinks.central_store import TRANSIENT_ERRORS

log = logging.getLogger("simpul.fanout")

FETCH_MAX_WAIT_MS = 100
SUBSCRIPTION_HEADER = "simpul_subscription"
PURPOSE_HEADER = "simpul_purpose"


def register_out_schemas(store: SchemaStore, plan: SubscriptionPlan) -> dict[int, AvroSchema]:
    """Register each route's derived schema under its subject; the one place fan-out writes
    to the registry. Returns the encoder per route (by index in ``plan.routes``)."""
    encoders = {}
    for i, route in enumerate(plan.routes):
        text = json.dumps(route.schema, ensure_ascii=False)
        schema_id, _ = store.register(route.subject, text)
        encoders[i] = AvroSchema.from_text(schema_id, text)
    return encoders


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    partition_key: bytes | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp: float | None


def fan_out(
    routes: Sequence[tuple[Route, AvroSchema]],
    payload: dict[str, Any],
    key: bytes | None,
    headers: list[tuple[str, bytes]],
    timestamp: float | None,
) -> tuple[list[OutMessage], list[AuditEntry], list[Route]]:
    """One decoded event to the messages its subscribers get, their audit rows, and the
    routes that filtered it out. Pure."""
    out, audit, filtered = [], [], []
    ce_id = header(headers, "ce_id") or ""
    for route, encoder in routes:
        sub = route.subscription
        if not sub.matches(payload):
            filtered.append(route)
            continue
        projected = project(payload, sub.fields, route.masks)
        out.append(
            OutMessage(
                sub.topic,
                key,
                out_key(route, payload, key),
                encoder.encode(projected),
                [
                    *headers,
                    (SUBSCRIPTION_HEADER, sub.name.encode()),
                    (PURPOSE_HEADER, sub.purpose.encode()),
                ],
                timestamp,
            )
        )
        subject = payload.get(route.subject_field) if route.subject_field else None
        audit.append(
            AuditEntry(
                ce_id=ce_id,
                event_type=route.event_type,
                agency=sub.agency,
                subscription=sub.name,
                purpose=sub.purpose,
                fields=sub.fields,
                channel="inbox",
                outcome="delivered",
                subject=str(subject) if subject else None,
            )
        )
    return out, audit, filtered


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: FanoutService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.service.batch_lock:  # the batch in flight finishes and commits first
            pass

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        pass


class FanoutService(Service):
    """Consumes ``simpul.valid.<type>`` of every subscribed type in batches."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        plan: SubscriptionPlan,
        store: SchemaStore,
        resolver: SchemaResolver,
        audit: AuditLog,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topology = topology
        self.plan = plan
        self.store = store
        self.resolver = resolver
        self.audit = audit
        self.batch_lock = asyncio.Lock()
        self._routes: dict[str, list[tuple[Route, AvroSchema]]] = {}
        self._partitions: dict[str, list[int]] = {}
        self._partitioner = DefaultPartitioner()
        self._stopping = False
        self._opened = False
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    async def _open(self) -> None:
        """Register the derived schemas and connect; runs in the service's task, so that the
        worker's ingest path does not wait for it at start."""
        encoders = await asyncio.to_thread(register_out_schemas, self.store, self.plan)
        for i, route in enumerate(self.plan.routes):
            topic = self.topology.event_type(route.event_type).topic("valid")
            self._routes.setdefault(topic, []).append((route, encoders[i]))
        bootstrap = self.settings.kafka_bootstrap.split(",")
        client_id = f"{self.settings.worker_id}-fanout"
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, client_id=client_id
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=f"{self.settings.worker_id}.fanout",
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_poll_records=self.settings.batch_size,
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            rebalance_timeout_ms=int(self.settings.rebalance_timeout_s * 1000),
            heartbeat_interval_ms=int(min(1.0, self.settings.session_timeout_s / 3) * 1000),
        )
        await self.producer.start()
        for topic in sorted({route.subscription.topic for route in self.plan.routes}):
            # Topics are declared, never auto-created: a missing inbox is a setup error.
            try:
                found = await asyncio.wait_for(self.producer.partitions_for(topic), 15)
            except (TimeoutError, KafkaError):
                found = None
            if not found:
                raise RuntimeError(f"{topic}: inbox topic is missing; run `simpul topics apply`")
            self._partitions[topic] = sorted(found)
        self.consumer.subscribe(sorted(self._routes), listener=_Rebalance(self))
        await self.consumer.start()
        self._opened = True
        log.info("fan-out: %d routes over %d topics", len(self.plan.routes), len(self._routes))

    async def on_stop(self) -> None:
        self._stopping = True
        try:
            await asyncio.wait_for(self.batch_lock.acquire(), self.settings.stop_timeout_s)
        except TimeoutError:
            log.warning("fan-out batch still in flight; stopping without it")
        else:
            self.batch_lock.release()
        if self._opened:
            await self.consumer.stop()
            await self.producer.stop()

    @Service.task
    async def _consume(self) -> None:
        try:
            await self._open()
        except Exception as error:
            log.critical("fan-out cannot start: %s", error)
            await self.crash(error)
            return
        timeout_ms = int(self.settings.batch_seconds * 1000)
        while not self._stopping and not self.should_stop:
            batch = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.settings.batch_size
            )
            if not batch or self._stopping:
                continue
            async with self.batch_lock:
                try:
                    await self.process(batch)
                except Exception as error:
                    log.critical("unexpected fan-out failure; stopping the worker", exc_info=True)
                    await self.crash(error)
                    return

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        outgoing: list[OutMessage] = []
        entries: list[AuditEntry] = []
        sent: dict[tuple[str, str], int] = defaultdict(int)
        filtered: dict[tuple[str, str], int] = defaultdict(int)
        for tp, messages in batch.items():
            routes = self._routes[tp.topic]
            for m in messages:
                try:
                    schema_id, body = unframe(m.value)
                    payload = self.resolver.by_id(schema_id).decode_body(body)
                except InvalidMessage as error:
                    # simpul.valid holds only validated events; this is a bug or a hand-written
                    # message, and the ingest path already dead-lettered its like.
                    log.error(
                        "fan-out skips %s[%d]@%d: %s", tp.topic, tp.partition, m.offset, error
                    )
                    continue
                out, audit, skipped = fan_out(
                    routes,
                    payload,
                    m.key,
                    list(m.headers or ()),
                    m.timestamp / 1000 if m.timestamp else None,
                )
                outgoing += out
                entries += audit
                for entry in audit:
                    sent[(entry.subscription, entry.event_type)] += 1
                for route in skipped:
                    filtered[(route.subscription.name, route.event_type)] += 1
        await self._send_all(outgoing)
        await self._record(entries)
        await self._commit(batch)
        for (name, type_name), count in sent.items():
            metrics.FANOUT_EVENTS.labels(name, type_name, "sent").inc(count)
        for (name, type_name), count in filtered.items():
            metrics.FANOUT_EVENTS.labels(name, type_name, "filtered").inc(count)
        per_agency: dict[str, int] = defaultdict(int)
        for entry in entries:
            per_agency[entry.agency] += 1
        for agency, count in per_agency.items():
            metrics.DELIVERIES.labels(agency, "inbox", "delivered").inc(count)
        if entries:
            metrics.AUDIT_ROWS.labels("inbox").inc(len(entries))

    async def _send_all(self, outgoing: Sequence[OutMessage]) -> None:
        """One producer batch per partition, then wait for every ack (acks=all)."""
        groups: dict[tuple[str, int], list[OutMessage]] = defaultdict(list)
        for item in outgoing:
            partitions = self._partitions.get(item.topic)
            if partitions is None:
                partitions = self._partitions[item.topic] = sorted(
                    await self.producer.partitions_for(item.topic)
                )
            # Partition by the original business key even when the key itself is masked or
            # withheld: one entity's events stay in order on one partition.
            partition = (
                self._partitioner(item.partition_key, partitions, partitions)
                if item.partition_key is not None
                else random.choice(partitions)
            )
            groups[(item.topic, partition)].append(item)
        futures = []
        for (topic, partition), items in groups.items():
            batch = self.producer.create_batch()
            for item in items:
                args = {
                    "key": item.key,
                    "value": item.value,
                    "timestamp": item.timestamp,
                    "headers": item.headers,
                }
                if batch.append(**args) is None:
                    futures.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self.producer.create_batch()
                    batch.append(**args)
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        if futures:
            await asyncio.gather(*futures)

    async def _record(self, entries: list[AuditEntry]) -> None:
        """Append the audit rows; while the store is down, retry (the offsets wait too)."""
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self.audit.record, entries)
                return
            except TRANSIENT_ERRORS as error:
                log.warning("audit log unavailable (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.settings.store_retry_max_s)

    async def _commit(self, batch: dict[TopicPartition, list[Any]]) -> None:
        offsets = {
            tp: OffsetAndMetadata(messages[-1].offset + 1, "") for tp, messages in batch.items()
        }
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            log.warning("fan-out offset commit refused after a rebalance: %s", error)
        except KafkaError as error:
            log.warning("fan-out offset commit failed (%s); the batch will be re-sent", error)
