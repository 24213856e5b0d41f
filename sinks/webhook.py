"""Webhook delivery: each agency inbox message POSTed to its subscription's URL, signed.

The body is a CloudEvents 1.0 structured-mode JSON document
(``Content-Type: application/cloudevents+json``). The signature header is
``Simpul-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>``;
docs/subscriptions.md has verification snippets for Python and PHP.

Each endpoint (URL) gets its own bounded number of requests in flight, so a slow or failing
endpoint never holds back the others; when one endpoint has too many messages waiting, only
the partitions feeding it are paused. Failures are retried with exponential back-off and full
jitter (429/503 ``Retry-After`` is honoured); a permanent 4xx or the last failed attempt sends
the message to ``simpul.dlq.out.<agency>``.

Delivery guarantee: at-least-once. An offset is committed only when every message before it
in its partition is finished (delivered or dead-lettered) and its audit row is written.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import email.utils
import hashlib
import hmac
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from simpul import metrics
from simpul.codec import unframe
from simpul.envelope import header
from simpul.errors import InvalidMessage
from simpul.installation import known_development_secret
from simpul.kafka_clients import aiokafka_options
from simpul.registry.store import SchemaResolver
from simpul.settings import Settings
from simpul.topology.model import Topology
from simpul.topology.subscriptions import Subscription, inbox_topic, webhook_dlq_topic
from sinks.audit import AuditEntry, AuditLog, inbox_subjects
from sinks.central_store import TRANSIENT_ERRORS
from sinks.dead_letters import DeadLetterLog, DeadLetterRow

log = logging.getLogger("simpul.deliver")

SIGNATURE_HEADER = "Simpul-Signature"
CONTENT_TYPE = "application/cloudevents+json"
#: Statuses worth another attempt; any other 4xx is the subscriber refusing the message.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookConfigError(ValueError):
    """A webhook's secret is missing; the message names the topology field."""


# --- pure functions --------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Simpul-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_cloudevent(
    headers: Iterable[tuple[str, bytes]], key: bytes | None, record: Mapping[str, Any]
) -> bytes:
    """The structured-mode CloudEvent for one inbox message (attributes from the ce_ headers)."""
    event: dict[str, Any] = {
        "specversion": header(headers, "ce_specversion") or "1.0",
        "id": header(headers, "ce_id"),
        "source": header(headers, "ce_source"),
        "type": header(headers, "ce_type"),
        "time": header(headers, "ce_time"),
        "datacontenttype": "application/json",
    }
    if key is not None:
        event["subject"] = key.decode("utf-8", errors="replace")
    event["simpulsubscription"] = header(headers, "simpul_subscription")
    event["simpulpurpose"] = header(headers, "simpul_purpose")
    event["data"] = dict(record)
    return json.dumps(
        event, default=_json_default, ensure_ascii=False, separators=(",", ":")
    ).encode()


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^(attempt-1))] (AWS architecture blog)."""
    return (rng or random).uniform(0, min(cap, base * 2 ** (attempt - 1)))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- the deliverer ---------------------------------------------------------------------------


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
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    subscription: Subscription
    endpoint: Endpoint
    secret: bytes


def webhook_secrets(
    topology: Topology, environ: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """Each webhook subscription's secret from its environment variable, or an error naming
    the field."""
    environ = os.environ if environ is None else environ
    secrets, missing = {}, []
    for i, sub in enumerate(topology.subscriptions):
        if sub.webhook is None:
            continue
        value = environ.get(sub.webhook.secret_env, "")
        if value and known_development_secret(value):
            missing.append(
                f"  subscriptions.{i}.webhook.secret_env: {sub.webhook.secret_env} holds a "
                "published development value; generate one with `simpul secrets init`"
            )
        elif not value:
            missing.append(
                f"  subscriptions.{i}.webhook.secret_env: environment variable "
                f"{sub.webhook.secret_env} is not set"
            )
        secrets[sub.name] = value.encode()
    if missing:
        raise WebhookConfigError("webhook secrets missing:\n" + "\n".join(missing))
    return secrets


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, deliverer: WebhookDeliverer) -> None:
        self.deliverer = deliverer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.deliverer.checkpoint()
        for tp in revoked:
            self.deliverer.partitions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.deliverer.assigned = len(self.deliverer.consumer.assignment())


class WebhookDeliverer:
    """Consumes the inbox topics of agencies with webhooks and POSTs each message."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        resolver: SchemaResolver,
        audit: AuditLog,
        secrets: Mapping[str, bytes],
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.resolver = resolver
        self.audit = audit
        self.dead_letter_log = DeadLetterLog(audit.engine)
        self.secrets = secrets
        self.now = now
        self.subscriptions = {s.name: s for s in topology.subscriptions if s.webhook}
        self.endpoints: dict[str, Endpoint] = {}
        for sub in self.subscriptions.values():
            assert sub.webhook is not None
            if sub.webhook.url not in self.endpoints:
                self.endpoints[sub.webhook.url] = Endpoint(
                    sub.webhook.url, sub.agency, asyncio.Semaphore(settings.deliver.concurrency)
                )
        self.topics = sorted({inbox_topic(s.agency) for s in self.subscriptions.values()})
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.finished: list[AuditEntry] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.assigned = 0
        self.delivered = 0
        self.dead_lettered = 0
        self.stopping = asyncio.Event()
        self.failed = False
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer
        self.client: httpx.AsyncClient

    async def start(self) -> None:
        bootstrap = aiokafka_options(self.settings)
        client_id = f"{self.settings.worker.id}-deliver"
        self.producer = AIOKafkaProducer(**bootstrap, acks="all", client_id=client_id)
        self.consumer = AIOKafkaConsumer(
            **bootstrap,
            group_id=f"{self.settings.worker.id}.deliver",
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.settings.client_tuning().consumer_options(),
        )
        self.client = httpx.AsyncClient(
            timeout=self.settings.deliver.timeout_s,
            limits=httpx.Limits(
                max_connections=self.settings.deliver.concurrency * max(1, len(self.endpoints))
            ),
            headers={"User-Agent": "Simpul-Webhook/1"},
        )
        await self.producer.start()
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))
        await self.consumer.start()
        log.info("delivering %s to %d endpoints", ", ".join(self.topics), len(self.endpoints))

    async def stop(self) -> None:
        self.stopping.set()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.settings.process.stop_timeout_s)
        for task in self.tasks:
            task.cancel()
        await self.checkpoint()
        await self.consumer.stop()
        await self.producer.stop()
        await self.client.aclose()

    async def run(self) -> None:
        last_checkpoint = time.monotonic()
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
            for tp, messages in batch.items():
                for m in messages:
                    self._accept(tp, m)
            if time.monotonic() - last_checkpoint >= 0.5:
                await self.checkpoint()
                last_checkpoint = time.monotonic()

    def _accept(self, tp: TopicPartition, message: Any) -> None:
        state = self.partitions.setdefault(tp, _Partition())
        state.next_offset = message.offset + 1
        headers = list(message.headers or ())
        sub = self.subscriptions.get(header(headers, "simpul_subscription") or "")
        if sub is None or sub.webhook is None:
            return  # inbox-only subscription: nothing to POST, the offset is finished
        endpoint = self.endpoints[sub.webhook.url]
        state.pending.add(message.offset)
        endpoint.pending += 1
        metrics.WEBHOOK_PENDING.labels(endpoint.agency).set(endpoint.pending)
        if endpoint.pending >= self.settings.deliver.max_pending and tp not in endpoint.paused:
            endpoint.paused.add(tp)
            self.consumer.pause(tp)
        job = Job(
            tp,
            message.offset,
            message.key,
            message.value,
            headers,
            sub,
            endpoint,
            self.secrets[sub.name],
        )
        task = asyncio.ensure_future(self._deliver(job))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug, not a delivery failure: stop (exit 1) rather than hold the offset forever.
            log.critical("delivery task failed; stopping", exc_info=error)
            self.failed = True
            self.stopping.set()

    async def _deliver(self, job: Job) -> None:
        outcome, detail = await self._attempts(job)
        if outcome == "dead_lettered":
            await self._dead_letter(job, detail)
            self.dead_lettered += 1
        else:
            self.delivered += 1
        metrics.DELIVERIES.labels(job.subscription.agency, "webhook", outcome).inc()
        ce_type = header(job.headers, "ce_type") or ""
        self.finished.append(
            AuditEntry(
                ce_id=header(job.headers, "ce_id") or "",
                event_type=ce_type,
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
            state.pending.discard(job.offset)
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
        for attempt in range(1, self.settings.deliver.max_attempts + 1):
            wait: float | None = None
            async with job.endpoint.concurrency:
                timestamp = int(self.now())
                started = time.perf_counter()
                try:
                    response = await self.client.post(
                        url,
                        content=body,
                        headers={
                            "Content-Type": CONTENT_TYPE,
                            SIGNATURE_HEADER: sign(job.secret, timestamp, body),
                            "Simpul-Attempt": str(attempt),
                        },
                    )
                except httpx.TimeoutException:
                    status, label = None, "timeout"
                    reason = f"timed out ({self.settings.deliver.timeout_s:g}s)"
                except httpx.TransportError as error:
                    status, label = None, "connect"
                    reason = f"{type(error).__name__}: {error}"
                else:
                    status, label = response.status_code, str(response.status_code)
                    reason = f"HTTP {status}"
                    if status in (429, 503):
                        wait = retry_after(response.headers.get("Retry-After"))
                finally:
                    metrics.WEBHOOK_LATENCY.labels(agency).observe(time.perf_counter() - started)
            if status is not None and 200 <= status < 300:
                return "delivered", None
            if status is not None and status not in RETRYABLE:
                return "dead_lettered", f"{reason}: refused by the endpoint (not retried)"
            if attempt == self.settings.deliver.max_attempts:
                break
            metrics.WEBHOOK_RETRIES.labels(agency, label).inc()
            if wait is None:
                wait = backoff(
                    attempt, self.settings.deliver.retry_base_s, self.settings.deliver.retry_max_s
                )
            log.info("webhook %s: %s; attempt %d again in %.1fs", url, reason, attempt + 1, wait)
            await asyncio.sleep(min(wait, self.settings.deliver.retry_max_s))
        return "dead_lettered", f"{reason} after {self.settings.deliver.max_attempts} attempts"

    async def _body(self, job: Job) -> bytes:
        schema_id, body = unframe(job.value)
        delay = 0.5
        while True:  # the schema lookup reads the central store: wait out an outage
            try:
                schema = await asyncio.to_thread(self.resolver.by_id, schema_id)
                break
            except TRANSIENT_ERRORS as error:
                log.warning("schema store unavailable (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        return to_cloudevent(job.headers, job.key, schema.decode_body(body))

    async def _dead_letter(self, job: Job, reason: str | None) -> None:
        topic = webhook_dlq_topic(job.subscription.agency)
        headers = [
            *job.headers,
            ("simpul_dlq_reason", (reason or "").encode()),
            ("simpul_dlq_stage", b"webhook"),
            ("simpul_dlq_code", b"webhook.failed"),
            ("simpul_dlq_topic", job.tp.topic.encode()),
            ("simpul_dlq_partition", str(job.tp.partition).encode()),
            ("simpul_dlq_offset", str(job.offset).encode()),
            ("simpul_dlq_time", dt.datetime.now(dt.UTC).isoformat().encode()),
        ]
        log.warning("dead letter %s@%d to %s: %s", job.tp.topic, job.offset, topic, reason)
        delay = 0.5
        while True:
            try:
                await self.producer.send_and_wait(
                    topic, value=job.value, key=job.key, headers=headers
                )
                break
            except KafkaError as error:  # the broker is away: the offset waits for it
                log.warning("dead letter not accepted (%s); retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        letter = DeadLetterRow(
            topic=job.tp.topic,
            partition=job.tp.partition,
            offset=job.offset,
            type=header(job.headers, "ce_type") or "unknown",
            agency=job.subscription.agency,
            stage="webhook",
            code="webhook.failed",
            reason=(reason or "")[:2000],
            ce_id=header(job.headers, "ce_id") or None,
            dead_lettered_at=dt.datetime.now(dt.UTC),
        )
        try:  # the scorecard's count; the dead-letter topic above is the record of truth
            await asyncio.to_thread(self.dead_letter_log.record, [letter])
        except Exception as error:
            log.warning("dead letter not recorded in the store's dead_letters: %s", error)

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


async def serve(settings: Settings, topology: Topology) -> None:
    """Run the deliverer and its /metrics and /health page until SIGTERM/SIGINT."""
    import signal

    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

    from simpul.db import make_engine
    from simpul.httpauth import aiohttp_options
    from simpul.registry.store import SchemaStore

    disable_created_metrics()
    secrets = webhook_secrets(topology)
    engine = make_engine(settings.store.database_url)
    deliverer = WebhookDeliverer(
        settings,
        topology,
        SchemaResolver(SchemaStore(engine)),
        AuditLog(
            engine,
            settings.audit_secret(),
            f"{settings.worker.id}.deliver",
            settings.audit.heads_file,
            settings.audit.export_s,
        ),
        secrets,
    )

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def health_page(request: web.Request) -> web.Response:
        return web.json_response(deliverer.health())

    site_app = web.Application(**aiohttp_options(settings))
    site_app.router.add_get("/metrics", metrics_page)
    site_app.router.add_get("/health", health_page)
    runner = web.AppRunner(site_app)
    await runner.setup()
    await web.TCPSite(runner, settings.http.bind_host, settings.deliver.web_port).start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, deliverer.stopping.set)
    await deliverer.start()
    try:
        await deliverer.run()
    finally:
        await deliverer.stop()
        await runner.cleanup()
        log.info(
            "stopped: %d delivered, %d dead-lettered", deliverer.delivered, deliverer.dead_lettered
        )
    if deliverer.failed:
        raise SystemExit(1)
