"""The deliverer (`simpul deliver`): each agency inbox message POSTed to its subscription's URL.

Each endpoint (URL) gets its own bounded number of requests in flight, so a slow or failing
endpoint never holds back the others; when one endpoint has too many messages waiting, only
the partitions feeding it are paused. Failures are retried with exponential back-off and full
jitter (429/503 ``Retry-After`` is honoured, held to ``deliver_retry_max_s``); a permanent 4xx
or the last failed attempt sends the message to ``simpul.dlq.out.<agency>``. Signing and the
POST itself are the webhook sink's (``sinks/webhook.py``).

Delivery guarantee: at-least-once. An offset is committed only when every message before it
in its partition is finished (delivered or dead-lettered) and its audit row is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from mode import Service

from simpul import metrics
from simpul.codec import unframe
from simpul.deadletter import dead_letter_headers
from simpul.envelope import header
from simpul.errors import InvalidMessage
from simpul.registry.resolver import SchemaResolver
from simpul.settings import Settings
from simpul.topology.model import Topology
from simpul.topology.subscriptions import Subscription, inbox_topic, webhook_dlq_topic
from sinks.audit import AuditEntry, AuditLog, inbox_subjects
from sinks.central_store import TRANSIENT_ERRORS
from sinks.dead_letters import DeadLetterLog, DeadLetterRow
from sinks.webhook import WebhookSink, to_cloudevent, webhook_secrets
from streams.runtime.batching import Batch, BatchService
from streams.runtime.host import ProcessHost
from streams.runtime.records import RawRecord
from streams.runtime.retry import OUTAGE, RetryPolicy

log = logging.getLogger("simpul.deliver")

#: How often finished messages are audited and their offsets committed.
CHECKPOINT_S = 0.5


@dataclass
class Endpoint:
    url: str
    agency: str
    concurrency: asyncio.Semaphore
    pending: int = 0
    paused: set[TopicPartition] = field(default_factory=set)


@dataclass
class _Partition:
    """Offsets consumed and not yet finished; what may be committed is below the lowest."""

    pending: set[int] = field(default_factory=set)
    next_offset: int | None = None

    def committable(self) -> int | None:
        return min(self.pending) if self.pending else self.next_offset


@dataclass(frozen=True, slots=True)
class Job:
    record: RawRecord
    subscription: Subscription
    endpoint: Endpoint
    secret: bytes

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)


class WebhookDeliverer(BatchService):
    """Consumes the inbox topics of agencies with webhooks and POSTs each message."""

    role: ClassVar[str] = "deliver"
    #: A fetch is at most this many messages: an endpoint's partitions pause at
    #: ``deliver_max_pending`` waiting, so a larger fetch would overshoot that bound.
    max_records: ClassVar[int | None] = 500

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        resolver: SchemaResolver,
        audit: AuditLog,
        secrets: Mapping[str, bytes],
        *,
        now: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.topology = topology
        self.resolver = resolver
        self.audit = audit
        self.dead_letter_log = DeadLetterLog(audit.engine)
        self.secrets = secrets
        self.now = now
        self.retry = RetryPolicy(
            settings.deliver.retry_base_s, settings.deliver.retry_max_s, jitter="full"
        )
        self.subscriptions = {s.name: s for s in topology.subscriptions if s.webhook}
        self.endpoints: dict[str, Endpoint] = {}
        for sub in self.subscriptions.values():
            assert sub.webhook is not None
            if sub.webhook.url not in self.endpoints:
                self.endpoints[sub.webhook.url] = Endpoint(
                    sub.webhook.url, sub.agency, asyncio.Semaphore(settings.deliver.concurrency)
                )
        self.inboxes = sorted({inbox_topic(s.agency) for s in self.subscriptions.values()})
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.finished: list[AuditEntry] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.assigned = 0
        self.delivered = 0
        self.dead_lettered = 0
        self.sink = WebhookSink(
            settings.deliver.timeout_s,
            settings.deliver.concurrency * max(1, len(self.endpoints)),
        )

    # Lifecycle (the batch service runs the consumer, the rebalances and the stop)

    def topics(self) -> list[str]:
        return self.inboxes

    async def open(self) -> None:
        log.info("delivering %s to %d endpoints", ", ".join(self.inboxes), len(self.endpoints))

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.checkpoint()
        for tp in revoked:
            self.partitions.pop(tp, None)

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.assigned = len(self.consumer.assignment())

    async def on_stop(self) -> None:
        self._stopping = True
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.settings.process.stop_timeout_s)
        for task in self.tasks:
            task.cancel()
        if self._connected:
            async with self.batch_lock:
                await self.checkpoint()
        await super().on_stop()
        await self.sink.aclose()
        log.info("stopped: %d delivered, %d dead-lettered", self.delivered, self.dead_lettered)

    @Service.timer(CHECKPOINT_S)
    async def _checkpoint(self) -> None:
        if self._connected and not self._stopping:
            async with self.batch_lock:
                await self.checkpoint()

    # Processing

    async def process(self, batch: Batch) -> None:
        for tp, messages in batch.items():
            for m in messages:
                self._accept(tp, RawRecord.from_message(tp, m, trusted_headers=True))

    def _accept(self, tp: TopicPartition, record: RawRecord) -> None:
        state = self.partitions.setdefault(tp, _Partition())
        state.next_offset = record.offset + 1
        sub = self.subscriptions.get(header(record.headers, "simpul_subscription") or "")
        if sub is None or sub.webhook is None:
            return  # inbox-only subscription: nothing to POST, the offset is finished
        endpoint = self.endpoints[sub.webhook.url]
        state.pending.add(record.offset)
        endpoint.pending += 1
        metrics.WEBHOOK_PENDING.labels(endpoint.agency).set(endpoint.pending)
        if endpoint.pending >= self.settings.deliver.max_pending and tp not in endpoint.paused:
            endpoint.paused.add(tp)
            self.consumer.pause(tp)
        job = Job(record, sub, endpoint, self.secrets[sub.name])
        task = asyncio.ensure_future(self._deliver(job))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug, not a delivery failure: crash (exit 1) rather than hold the offset forever.
            log.critical("delivery task failed; stopping", exc_info=error)
            crash = asyncio.ensure_future(self.crash(error))
            self.tasks.add(crash)
            crash.add_done_callback(self.tasks.discard)

    async def _deliver(self, job: Job) -> None:
        outcome, detail = await self._attempts(job)
        if outcome == "dead_lettered":
            await self._dead_letter(job, detail or "")
            self.dead_lettered += 1
        else:
            self.delivered += 1
        metrics.DELIVERIES.labels(job.subscription.agency, "webhook", outcome).inc()
        headers = job.record.headers
        self.finished.append(
            AuditEntry(
                ce_id=header(headers, "ce_id") or "",
                event_type=header(headers, "ce_type") or "",
                agency=job.subscription.agency,
                subscription=job.subscription.name,
                purpose=job.subscription.purpose,
                fields=job.subscription.fields,
                channel="webhook",
                outcome=outcome,
                detail=detail,
            )
        )
        state = self.partitions.get(job.tp)
        if state is not None:
            state.pending.discard(job.record.offset)
        endpoint = job.endpoint
        endpoint.pending -= 1
        metrics.WEBHOOK_PENDING.labels(endpoint.agency).set(endpoint.pending)
        if endpoint.paused and endpoint.pending < self.settings.deliver.max_pending // 2:
            # A rebalance may have taken a paused partition away (and cleared its pause).
            held = self.consumer.assignment()
            self.consumer.resume(*(tp for tp in endpoint.paused if tp in held))
            endpoint.paused.clear()

    async def _attempts(self, job: Job) -> tuple[str, str | None]:
        try:
            body = await self._body(job)
        except InvalidMessage as error:
            return "dead_lettered", f"undecodable: {error.reason}"
        except (TypeError, ValueError, OverflowError) as error:
            # A value JSON cannot carry (a decimal, say): this message can never be POSTed.
            return "dead_lettered", f"not representable as JSON: {type(error).__name__}"
        agency = job.subscription.agency
        url = job.endpoint.url
        reason = "no attempt"
        attempts = self.settings.deliver.max_attempts
        for attempt in range(1, attempts + 1):
            async with job.endpoint.concurrency:
                started = time.perf_counter()
                try:
                    result = await self.sink.post(url, job.secret, body, attempt, int(self.now()))
                finally:
                    metrics.WEBHOOK_LATENCY.labels(agency).observe(time.perf_counter() - started)
            reason = result.reason
            if result.delivered:
                return "delivered", None
            if result.refused:
                return "dead_lettered", f"{reason}: refused by the endpoint (not retried)"
            if attempt == attempts:
                break
            metrics.WEBHOOK_RETRIES.labels(agency, result.label).inc()
            wait = self.retry.capped(
                self.retry.delay(attempt) if result.retry_after is None else result.retry_after
            )
            log.info("webhook %s: %s; attempt %d again in %.1fs", url, reason, attempt + 1, wait)
            await asyncio.sleep(wait)
        return "dead_lettered", f"{reason} after {attempts} attempts"

    async def _body(self, job: Job) -> bytes:
        schema_id, body = unframe(job.record.value)
        schema = self.resolver.cached(schema_id)
        if schema is not None:
            return to_cloudevent(job.record.headers, job.record.key, schema.decode_body(body))
        # The first lookup of an id reads the central store, in a thread: wait out an outage.
        schema = await OUTAGE.until_done(
            lambda: asyncio.to_thread(self.resolver.by_id, schema_id),
            TRANSIENT_ERRORS,
            lambda error, wait: log.warning(
                "schema store unavailable (%s); retrying in %.1fs", error, wait
            ),
        )
        return to_cloudevent(job.record.headers, job.record.key, schema.decode_body(body))

    async def _dead_letter(self, job: Job, reason: str) -> None:
        record = job.record
        topic = webhook_dlq_topic(job.subscription.agency)
        now = dt.datetime.now(dt.UTC)
        headers = dead_letter_headers(
            record.headers, "webhook", "webhook.failed", reason, now, record.origin()
        )
        log.warning("dead letter %s@%d to %s: %s", record.topic, record.offset, topic, reason)

        async def send() -> None:
            await self.producer.send_and_wait(
                topic, value=record.value, key=record.key, headers=headers
            )

        # The broker is away: the offset waits for it.
        await OUTAGE.until_done(
            send,
            (KafkaError,),
            lambda error, wait: log.warning(
                "dead letter not accepted (%s); retrying in %.1fs", error, wait
            ),
        )
        letter = DeadLetterRow(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            type=header(record.headers, "ce_type") or "unknown",
            agency=job.subscription.agency,
            stage="webhook",
            code="webhook.failed",
            reason=reason[:2000],
            ce_id=header(record.headers, "ce_id") or None,
            dead_lettered_at=now,
        )
        # The scorecard's count; the dead-letter topic above is the record of truth. A row not
        # written now stays in the sink's buffer and goes with the next dead letter's flush.
        self.dead_letter_log.add(letter)
        try:
            await asyncio.to_thread(self.dead_letter_log.flush)
        except Exception as error:
            log.warning("dead letter not yet recorded in the store's dead_letters: %s", error)

    async def checkpoint(self) -> None:
        """Write the audit rows of finished messages, then commit what is finished.

        The offsets are taken in the same event-loop turn as the audit entries, so a message
        finishing while the rows are written is neither committed nor left unaudited.
        """
        offsets = {}
        for tp, state in self.partitions.items():
            at = state.committable()
            if at is not None:
                offsets[tp] = OffsetAndMetadata(at, "")
        entries, self.finished = self.finished, []
        if entries:
            try:
                await asyncio.to_thread(self._record, entries)
            except Exception:
                self.finished = entries + self.finished
                log.warning("audit log unavailable; offsets wait", exc_info=True)
                return
            metrics.AUDIT_ROWS.labels("webhook").inc(len(entries))
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            log.warning("offset commit refused after a rebalance: %s", error)
        except KafkaError as error:
            log.warning("offset commit failed (%s); messages may be delivered again", error)

    def _record(self, entries: list[AuditEntry]) -> None:
        self.audit.record(inbox_subjects(self.audit.engine, entries))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "assigned_partitions": self.assigned,
            "delivered": self.delivered,
            "dead_lettered": self.dead_lettered,
            "endpoints": {
                e.url: {"agency": e.agency, "pending": e.pending, "paused": len(e.paused)}
                for e in self.endpoints.values()
            },
        }


def run_deliverer(settings: Settings, topology: Topology) -> None:
    """Run the deliverer in the foreground until SIGTERM/SIGINT, hosted with /metrics and
    /health; a `sinks.webhook.WebhookConfigError` before anything starts when a secret is
    missing."""
    from simpul.db import make_engine
    from simpul.registry.store import SchemaStore

    secrets = webhook_secrets(topology)
    engine = make_engine(settings.store.database_url)
    resolver = SchemaResolver(SchemaStore(engine))
    holder: dict[str, WebhookDeliverer] = {}

    def health() -> tuple[dict[str, Any], int]:
        deliverer = holder.get("service")
        return (deliverer.health() if deliverer else {"status": "starting"}), 200

    host = ProcessHost(settings, f"{settings.worker.id}-deliver", settings.deliver.web_port, health)

    class Deliverer(WebhookDeliverer):
        def __init__(self, **kwargs: Any) -> None:
            audit = AuditLog(
                engine,
                settings.audit_secret(),
                f"{settings.worker.id}.deliver",
                settings.audit.heads_file,
                settings.audit.export_s,
            )
            super().__init__(settings, topology, resolver, audit, secrets, **kwargs)
            holder["service"] = self

    host.service(Deliverer)
    host.run()
