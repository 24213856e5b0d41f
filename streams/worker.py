"""The Faust app: per event type, one thin agent that validates, dedups, stores and forwards.

Each batch crosses Faust once: decode -> validate -> dedup (pure functions) -> write the
central store and produce to ``simpul.valid.<type>`` / ``simpul.dlq.<type>`` -> only then
are the batch's offsets acknowledged, so Faust commits nothing the store does not have.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import faust
from faust.types import EventT
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.errors import InvalidMessage
from simpul.registry import SchemaResolver, SchemaStore
from simpul.settings import Settings
from simpul.topology import EventType, Topology
from sinks.central_store import TRANSIENT_ERRORS, CentralStore, StoredEvent, WriteResult
from streams import transport
from streams.pipeline import (
    BatchOutcome,
    DedupWindow,
    RawRecord,
    Rejected,
    agency_label,
    dead_letter_headers,
    process_batch,
)

log = logging.getLogger("simpul.worker")


def broker_urls(bootstrap: str) -> str:
    return ";".join(f"simpul://{host.strip()}" for host in bootstrap.split(",") if host.strip())


class Health:
    """What /health reports: the store's state and the last successful batch."""

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


class TypePipeline:
    """The work of one event type's agent, kept out of Faust's per-message path."""

    def __init__(
        self,
        app: faust.App,
        event_type: EventType,
        catalog: EventCatalog,
        store: CentralStore,
        settings: Settings,
        health: Health,
    ) -> None:
        self.app = app
        self.event_type = event_type
        self.catalog = catalog
        self.store = store
        self.settings = settings
        self.health = health
        self.dedup = DedupWindow(settings.dedup_window)
        self.valid_topic = event_type.topic("valid")
        self.dlq_topic = event_type.topic("dlq")

    async def handle(self, events: Sequence[EventT]) -> None:
        try:
            await self._handle(events)
        except asyncio.CancelledError:
            # take_events() acks the batch in a `finally`, even when cancelled mid-write; an
            # extra reference keeps Faust from committing offsets the store may not have.
            for event in events:
                event.message.incref()
            raise
        except Exception as error:
            for event in events:
                event.message.incref()
            log.critical(
                "unexpected failure in %s; stopping the worker", self.event_type.name, exc_info=True
            )
            await self.app.crash(error)

    async def _handle(self, events: Sequence[EventT]) -> None:
        records = [
            RawRecord(
                topic=e.message.topic,
                partition=e.message.partition,
                offset=e.message.offset,
                key=e.message.key,
                value=e.message.value,
                headers=list(e.message.headers or ()),
                timestamp=e.message.timestamp,
            )
            for e in events
        ]
        name = self.event_type.name
        for record in records:
            metrics.EVENTS_RECEIVED.labels(name, agency_label(record.headers)).inc()
        outcome = await asyncio.to_thread(
            process_batch, records, self.event_type, self.catalog, self.dedup
        )
        received_at = dt.datetime.now(dt.UTC)
        stored = [a.to_stored(self.event_type, received_at) for a in outcome.accepted]
        sends = self._forward(outcome)
        result = await self._write_with_retry(stored)
        record_of = {a.envelope.id: a.record for a in outcome.accepted}
        sends += self._dead_letter_store_rejects(result, record_of)
        await asyncio.gather(*sends)
        self._observe(outcome, result, records)

    def _forward(self, outcome: BatchOutcome) -> list[Awaitable[Any]]:
        producer = self.app.producer
        futures: list[Awaitable[Any]] = []
        now = dt.datetime.now(dt.UTC)
        for accepted in outcome.accepted:
            record = accepted.record
            futures.append(
                self._send(
                    producer,
                    self.valid_topic,
                    record.key,
                    record.value,
                    record.headers,
                    record.timestamp,
                )
            )
        for rejected in outcome.rejected:
            futures.append(self._send_dead_letter(rejected, now))
        return futures

    def _dead_letter_store_rejects(
        self, result: WriteResult, record_of: dict[str, RawRecord]
    ) -> list[Awaitable[Any]]:
        now = dt.datetime.now(dt.UTC)
        sends = []
        for event, reason in result.rejected:
            record = record_of.get(event.ce_id)
            if record is not None:
                sends.append(
                    self._send_dead_letter(
                        Rejected(record, InvalidMessage("store", "store.row", reason)), now
                    )
                )
        return sends

    async def _send_dead_letter(self, rejected: Rejected, now: dt.datetime) -> None:
        error = rejected.error
        headers = dead_letter_headers(rejected.record, error.stage, error.code, error.reason, now)
        metrics.EVENTS_DEAD_LETTERED.labels(
            self.event_type.name, rejected.agency, error.stage, error.code
        ).inc()
        log.info(
            "dead letter %s offset %s: %s",
            rejected.record.topic,
            rejected.record.offset,
            error.reason,
        )
        await self._send(
            self.app.producer,
            self.dlq_topic,
            rejected.record.key,
            rejected.record.value,
            headers,
            rejected.record.timestamp,
        )

    @staticmethod
    async def _send(
        producer: Any,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp: float | None,
    ) -> None:
        # producer.send() schedules; awaiting its future waits for the broker's ack (acks=all).
        future = await producer.send(topic, key, value, None, timestamp, headers)
        await future

    async def _write_with_retry(self, stored: list[StoredEvent]) -> WriteResult:
        if not stored:
            return WriteResult()
        delay = 0.5
        while True:
            started = time.perf_counter()
            try:
                result = await asyncio.to_thread(self.store.write_isolating_bad_rows, stored)
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
            metrics.STORE_BATCH_DURATION.observe(time.perf_counter() - started)
            metrics.STORE_BATCH_SIZE.observe(len(stored))
            metrics.STORE_UP.set(1)
            self.health.store_up, self.health.store_error = True, None
            self.health.store_down_since = None
            if result.rejected:
                metrics.STORE_ERRORS.labels("row").inc(len(result.rejected))
            return result

    def _observe(
        self, outcome: BatchOutcome, result: WriteResult, records: Sequence[RawRecord]
    ) -> None:
        name = self.event_type.name
        now = time.time()
        for accepted in outcome.accepted:
            metrics.EVENTS_VALID.labels(name, accepted.envelope.agency).inc()
        if outcome.duplicates:
            metrics.DUPLICATES_DROPPED.labels(name, "dedup").inc(len(outcome.duplicates))
        if result.duplicates:
            metrics.DUPLICATES_DROPPED.labels(name, "store").inc(len(result.duplicates))
        if result.inserted:
            metrics.EVENTS_STORED.labels(name).inc(len(result.inserted))
        latency = metrics.PUBLISH_TO_STORE_LATENCY.labels(name)
        for event in result.inserted:
            if event.published_at is not None:
                latency.observe(max(0.0, now - event.published_at.timestamp()))
        self.health.last_batch_at = now
        last_offsets: dict[int, int] = {}
        for record in records:
            last_offsets[record.partition] = max(
                record.offset, last_offsets.get(record.partition, -1)
            )
        consumer = self.app.consumer
        for partition, offset in last_offsets.items():
            tp = faust.types.TP(records[0].topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not known yet right after assignment
                highwater = None
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(partition)).set(
                    max(0, highwater - offset - 1)
                )


def create_app(settings: Settings, topology: Topology) -> faust.App:
    """Build the worker's Faust app with one agent per declared event type."""
    transport.register()
    app = faust.App(
        settings.worker_id,
        broker=broker_urls(settings.kafka_bootstrap),
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=5,
        web_enabled=True,
        web_port=settings.worker_web_port,
        web_bind="0.0.0.0",
        store="memory://",
        datadir=str(settings.data_dir / f"faust-{settings.worker_id}"),
        stream_buffer_maxsize=max(4096, settings.batch_size * 2),
    )
    engine = make_engine(settings.database_url)
    resolver = SchemaResolver(SchemaStore(engine))
    catalog = EventCatalog(topology, resolver)
    store = CentralStore(engine)
    health = Health()
    metrics.STORE_UP.set(1)

    pipelines: dict[str, TypePipeline] = {}
    for event_type in topology.event_types:
        pipeline = TypePipeline(app, event_type, catalog, store, settings, health)
        pipelines[event_type.topic("in")] = pipeline
        topic = app.topic(
            event_type.topic("in"),
            key_type=bytes,
            value_type=bytes,
            partitions=event_type.partitions,
        )

        async def agent(stream: faust.StreamT, pipeline: TypePipeline = pipeline) -> None:
            async for events in stream.take_events(settings.batch_size, settings.batch_seconds):
                await pipeline.handle(events)

        app.agent(topic, name=f"simpul.validate.{event_type.name}")(agent)

    async def on_assigned(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        health.assigned_partitions = len(app.consumer.assignment())

    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        # A partition that moves to another worker must not keep a stale dedup window here.
        for tp in revoked:
            if (owner := pipelines.get(tp.topic)) is not None:
                owner.dedup.forget([tp.partition])

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health_page(web: Any, request: Any) -> Any:
        state = health.as_dict()
        return web.json(state, status=200 if health.store_up else 503)

    app.simpul_health = health  # type: ignore[attr-defined]
    app.simpul_catalog = catalog  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, topology: Topology) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT; exits after a clean stop."""
    from faust.worker import Worker

    app = create_app(settings, topology)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
