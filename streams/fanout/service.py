"""The fan-out: each valid event to each subscriber's ``simpul.out.<agency>``, with its audit rows.

The worker fans out from the ingest batch it has just decoded and validated (`InboxFanout`,
called by ``streams/ingest/service.py``): apply each subscription's filter, projection and
masks with the pure functions of `simpul.topology.subscriptions`, encode under the
subscription's derived schema, produce with acks=all beside the forward to ``simpul.valid``,
append the audit rows, and only
then commit the ingest batch's offsets. Consuming ``simpul.valid`` a second time and decoding
every event again cost more CPU than ingest itself (bench/run.py).

Delivery guarantee: at-least-once. A crash before the commit re-sends the batch to the
inboxes (consumers dedup by ``ce_id``) and records it again in the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from simpul import metrics
from simpul.codec import AvroSchema
from simpul.envelope import header, without_simpul_headers
from simpul.registry.store import SchemaStore
from simpul.signing import KEYID_HEADER, PROOF_HEADER, SIGNATURE_HEADER
from simpul.topology.subscriptions import project
from sinks.audit import AuditEntry, AuditLog
from streams.fanout.plan import Route, SubscriptionPlan, out_key
from streams.runtime.batching import Outgoing

log = logging.getLogger("simpul.fanout")

SUBSCRIPTION_HEADER = "simpul_subscription"
PURPOSE_HEADER = "simpul_purpose"
_SIGNATURE_HEADERS = frozenset((SIGNATURE_HEADER, KEYID_HEADER, PROOF_HEADER))


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
    # No sender's simpul_* headers, and no signature: it covers the event, not the projection.
    base = without_simpul_headers(headers, also=_SIGNATURE_HEADERS)
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


@dataclass(slots=True)
class FanoutBatch:
    """What one batch fans out: messages to the inboxes, their audit rows, and the counts."""

    outgoing: list[Outgoing] = field(default_factory=list)
    entries: list[AuditEntry] = field(default_factory=list)
    sent: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    filtered: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def add(
        self,
        routes: Sequence[tuple[Route, AvroSchema]],
        payload: dict[str, Any],
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp: float | None,
    ) -> None:
        try:
            out, audit, skipped = fan_out(routes, payload, key, headers, timestamp)
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            # A projection or mask that cannot apply to this event: its subscribers do not
            # get it, the others still do. The error's text may quote the payload, so only
            # its type is logged.
            log.error("fan-out skips an event: %s in a projection", type(error).__name__)
            for route, _ in routes:
                metrics.FANOUT_EVENTS.labels(
                    route.subscription.name, route.event_type, "failed"
                ).inc()
            return
        self.outgoing += out
        self.entries += audit
        for entry in audit:
            self.sent[(entry.subscription, entry.event_type)] += 1
        for route in skipped:
            self.filtered[(route.subscription.name, route.event_type)] += 1

    def observe(self) -> None:
        """The fan-out metrics, once the batch is delivered and audited."""
        for (name, type_name), count in self.sent.items():
            metrics.FANOUT_EVENTS.labels(name, type_name, "sent").inc(count)
        for (name, type_name), count in self.filtered.items():
            metrics.FANOUT_EVENTS.labels(name, type_name, "filtered").inc(count)
        per_agency: dict[str, int] = defaultdict(int)
        for entry in self.entries:
            per_agency[entry.agency] += 1
        for agency, count in per_agency.items():
            metrics.DELIVERIES.labels(agency, "inbox", "delivered").inc(count)
        if self.entries:
            metrics.AUDIT_ROWS.labels("inbox").inc(len(self.entries))


class InboxFanout:
    """The subscriptions' routes and the audit chain of one worker's ingest path.

    `open` registers the derived schemas (blocking: run it in a thread); `routes_for` gives an
    event type's routes, empty when nobody subscribed to it.
    """

    def __init__(self, plan: SubscriptionPlan, store: SchemaStore, audit: AuditLog) -> None:
        self.plan = plan
        self.store = store
        self.audit = audit
        self._routes: dict[str, list[tuple[Route, AvroSchema]]] = {}

    def open(self) -> None:
        encoders = register_out_schemas(self.store, self.plan)
        for i, route in enumerate(self.plan.routes):
            self._routes.setdefault(route.event_type, []).append((route, encoders[i]))

    def inbox_topics(self) -> list[str]:
        return sorted({route.subscription.topic for route in self.plan.routes})

    def routes_for(self, event_type: str) -> list[tuple[Route, AvroSchema]]:
        return self._routes.get(event_type, [])


async def inbox_partitions(
    producer: AIOKafkaProducer, topics: Sequence[str]
) -> dict[str, list[int]]:
    """Each inbox topic's partitions; a missing inbox is a setup error (topics are declared,
    never auto-created)."""
    found_all = {}
    for topic in topics:
        try:
            found = await asyncio.wait_for(producer.partitions_for(topic), 15)
        except (TimeoutError, KafkaError):
            found = None
        if not found:
            raise RuntimeError(f"{topic}: inbox topic is missing; run `simpul topics apply`")
        found_all[topic] = sorted(found)
    return found_all
