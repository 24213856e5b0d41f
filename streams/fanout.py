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
from collections.abc import Sequence
from typing import Any, ClassVar

from aiokafka.errors import KafkaError

from simpul import metrics
from simpul.codec import AvroSchema, unframe
from simpul.envelope import header, without_simpul_headers
from simpul.errors import InvalidMessage
from simpul.registry import SchemaResolver, SchemaStore
from simpul.settings import Settings
from simpul.signing import KEYID_HEADER, SIGNATURE_HEADER
from simpul.subscriptions import Route, SubscriptionPlan, out_key, project
from simpul.topology import Topology
from sinks.audit import AuditEntry, AuditLog
from sinks.central_store import TRANSIENT_ERRORS
from streams.batching import Batch, BatchService, Outgoing

log = logging.getLogger("simpul.fanout")

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


def fan_out(
    routes: Sequence[tuple[Route, AvroSchema]],
    payload: dict[str, Any],
    key: bytes | None,
    headers: list[tuple[str, bytes]],
    timestamp: float | None,
) -> tuple[list[Outgoing], list[AuditEntry], list[Route]]:
    """One decoded event to the messages its subscribers get, their audit rows, and the
    routes that filtered it out. Pure."""
    out, audit, filtered = [], [], []
    ce_id = header(headers, "ce_id") or ""
    # Simpul's own headers only, and no signature: it covers the event, not the projection.
    base = [
        (k, v)
        for k, v in without_simpul_headers(headers)
        if k not in (SIGNATURE_HEADER, KEYID_HEADER)
    ]
    for route, encoder in routes:
        sub = route.subscription
        if not sub.matches(payload):
            filtered.append(route)
            continue
        projected = project(payload, sub.fields, route.masks)
        out.append(
            Outgoing(
                sub.topic,
                out_key(route, payload, key),
                encoder.encode(projected),
                [
                    *base,
                    (SUBSCRIPTION_HEADER, sub.name.encode()),
                    (PURPOSE_HEADER, sub.purpose.encode()),
                ],
                timestamp,
                # Partition by the original business key even when the key itself is masked
                # or withheld: one entity's events stay in order on one partition.
                partition_key=key,
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


class FanoutService(BatchService):
    """Consumes ``simpul.valid.<type>`` of every subscribed type in batches."""

    role: ClassVar[str] = "fanout"

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
        super().__init__(settings, **kwargs)
        self.topology = topology
        self.plan = plan
        self.store = store
        self.resolver = resolver
        self.audit = audit
        self._routes: dict[str, list[tuple[Route, AvroSchema]]] = {}

    def topics(self) -> list[str]:
        return sorted(self._routes)

    async def on_start(self) -> None:
        """Connects in `open` instead, so that the worker's ingest path does not wait for it."""

    async def open(self) -> None:
        """Register the derived schemas and connect; runs in the service's task."""
        encoders = await asyncio.to_thread(register_out_schemas, self.store, self.plan)
        for i, route in enumerate(self.plan.routes):
            topic = self.topology.event_type(route.event_type).topic("valid")
            self._routes.setdefault(topic, []).append((route, encoders[i]))
        await self.start_producer()
        for topic in sorted({route.subscription.topic for route in self.plan.routes}):
            # Topics are declared, never auto-created: a missing inbox is a setup error.
            try:
                found = await asyncio.wait_for(self.producer.partitions_for(topic), 15)
            except (TimeoutError, KafkaError):
                found = None
            if not found:
                raise RuntimeError(f"{topic}: inbox topic is missing; run `simpul topics apply`")
            self._partitions[topic] = sorted(found)
        await self.start_consumer()
        log.info("fan-out: %d routes over %d topics", len(self.plan.routes), len(self._routes))

    async def process(self, batch: Batch) -> None:
        outgoing: list[Outgoing] = []
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
        await self.send_all(outgoing)
        await self._record(entries)
        await self.commit(batch)
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
