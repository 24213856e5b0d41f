"""The joins process (`simpul joins`): derived events from ``simpul.valid.*``, state in changelogs.

It runs apart from the ingest worker so that the ingest hot path keeps its whole CPU budget;
scale it like the worker (one consumer group, partitions spread over processes).

* Inputs: each join's right type's ``simpul.valid`` topic (keyed by the join key), and its
  left type's — re-keyed through ``simpul.join.<name>.left`` first when the left type's key is
  not the join key, so both sides of a key meet on the same partition number. The consumer
  group uses the range assignor, which gives one process the same partition numbers of every
  topic (co-partitioning).
* State: per join and partition, the latest right event per key and the waiting left events,
  written to ``simpul.join.<name>.state`` (same partition) before the input offsets are
  committed. When partitions are assigned, their state is rebuilt from that changelog; the end
  of what to read is a marker record this process writes first, because the embedded broker's
  reported end offsets can read low.
* Output: a derived event is published as an ordinary Simpul event (Avro, Confluent framing,
  CloudEvents headers, ``ce_source: /agency/simpul``) to ``simpul.in.<output type>``, so the
  ingest validates, deduplicates, stores and forwards it like any other.

Delivery guarantee: at-least-once. Derived events have deterministic ``ce_id`` s (uuid5 of
join, left and right ``ce_id``), so a re-derivation after a crash is dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from mode import Service

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.codec import unframe
from simpul.db import make_engine
from simpul.deadletter import dead_letter_headers
from simpul.envelope import Envelope, Headers, header
from simpul.errors import InvalidMessage
from simpul.settings import Settings
from simpul.signing import signer_for
from simpul.topology.model import Topology
from sinks.dead_letters import DeadLetterLog, DeadLetterRow
from streams.ingest.pipeline import RawRecord, agency_label
from streams.joins.state import Effects, JoinEvent, JoinLogic, JoinPartition, StateChange
from streams.runtime.batching import Batch, BatchService, Outgoing
from streams.runtime.host import ProcessHost

log = logging.getLogger("simpul.joins")

_SINCE = "simpul_join_since"
_ORIGIN = "simpul_join_origin"
_MARKER_KEY = b"\x00restore-marker"
RESTORE_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Send:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    partition: int | None = None
    #: For a dead letter: its row in the store's ``dead_letters`` table (the scorecard's source).
    letter: DeadLetterRow | None = None


class JoinService(BatchService):
    """Runs every join of the topology over the partitions this process is assigned."""

    role: ClassVar[str] = "joins"

    def __init__(
        self, settings: Settings, topology: Topology, catalog: EventCatalog, **kwargs: Any
    ) -> None:
        super().__init__(settings, **kwargs)
        self.topology = topology
        self.catalog = catalog
        # Derived events are Simpul's own: the joins gateway signs them for /agency/simpul.
        self.signer = signer_for(settings, "joins")
        self.dead_letter_log = DeadLetterLog(make_engine(settings.store.database_url))
        self.logics = [
            JoinLogic(j, topology.event_type(j.output), settings.joins.wait_s)
            for j in topology.joins
        ]
        #: input topic -> (role, join): role is "left", "right" or "repartition"
        self.routes: dict[str, list[tuple[str, JoinLogic]]] = defaultdict(list)
        for logic in self.logics:
            left_type = topology.event_type(logic.join.left.type)
            if logic.join.needs_repartition(left_type):
                self.routes[left_type.topic("valid")].append(("repartition", logic))
                self.routes[logic.join.repartition_topic()].append(("left", logic))
            else:
                self.routes[left_type.topic("valid")].append(("left", logic))
            right_type = topology.event_type(logic.join.right.type)
            self.routes[right_type.topic("valid")].append(("right", logic))
        self.states: dict[tuple[str, int], JoinPartition] = {}
        self.loaded: set[int] = set()
        self.last_batch_at: float | None = None

    # Lifecycle

    def topics(self) -> list[str]:
        return sorted(self.routes)

    def consumer_options(self) -> dict[str, Any]:
        # One process gets the same partition numbers of every input topic (co-partitioning).
        return {"partition_assignment_strategy": (RangePartitionAssignor,)}

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.forget({tp.partition for tp in revoked})

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        # The restore runs after the group settled, so it does not count against the
        # rebalance timeout; the embedded broker's first join waits for it.
        try:
            await self.restore({tp.partition for tp in assigned})
        except Exception as error:
            # Joining against a partial state would give wrong answers: stop, to be restarted.
            log.critical("join state restore failed; stopping", exc_info=True)
            await self.crash(error)

    @Service.task
    async def _expire(self) -> None:
        while not self._stopping and not self.should_stop:
            await self.sleep(self.settings.joins.check_s)
            if self._stopping:
                return
            async with self.batch_lock:
                try:
                    sends = await asyncio.to_thread(self._expire_sync, time.time())
                    await self._send(sends)
                except Exception as error:
                    log.critical("unexpected failure expiring join waits", exc_info=True)
                    await self.crash(error)
                    return

    # Processing

    async def process(self, batch: Batch) -> None:
        sends = await asyncio.to_thread(self._process_sync, batch)
        await self._send(sends)
        await self.commit(batch)
        self.last_batch_at = time.time()

    def _process_sync(self, batch: Batch) -> list[Send]:
        now = time.time()
        sends: list[Send] = []
        effects: dict[tuple[JoinLogic, int], Effects] = defaultdict(Effects)
        # Right sides first: a left event in the same batch then finds its partner at once.
        order = {"right": 0, "repartition": 1, "left": 2}
        work = sorted(
            (
                (role, logic, tp, msgs)
                for tp, msgs in batch.items()
                for role, logic in self.routes[tp.topic]
            ),
            key=lambda item: order[item[0]],
        )
        decoded: dict[TopicPartition, list[JoinEvent]] = {}
        for role, logic, tp, messages in work:
            if tp not in decoded:
                decoded[tp] = self._decode_all(tp, messages, now)
            events = decoded[tp]
            if role == "repartition":
                sends += [
                    Send(
                        logic.join.repartition_topic(),
                        logic.left_key(e.payload).encode(),
                        e.record.value,
                        e.record.headers,
                    )
                    for e in events
                    if logic.join.left.matches(e.payload)
                ]
                continue
            state = self._state(logic, tp.partition)
            handle = logic.on_left if role == "left" else logic.on_right
            for event in events:
                handle(state, event, effects[(logic, tp.partition)])
        for (logic, partition), effect in effects.items():
            sends += self._effect_sends(logic, partition, effect)
        return sends

    def _expire_sync(self, now: float) -> list[Send]:
        sends: list[Send] = []
        for logic in self.logics:
            pending = 0
            for partition in sorted(self.loaded):
                state = self._state(logic, partition)
                effects = Effects()
                logic.expire(state, now, effects)
                sends += self._effect_sends(logic, partition, effects)
                pending += state.pending_count
            metrics.JOIN_PENDING.labels(logic.name).set(pending)
        return sends

    def _decode_all(self, tp: TopicPartition, messages: list[Any], now: float) -> list[JoinEvent]:
        events = []
        for m in messages:
            record = RawRecord.from_message(tp, m, trusted_headers=True)
            try:
                events.append(self._decode(record, now))
            except InvalidMessage as error:
                # simpul.valid holds validated events only; this would be a bug or tampering.
                log.error(
                    "skipping undecodable %s[%d]@%d: %s",
                    tp.topic,
                    tp.partition,
                    m.offset,
                    error.reason,
                )
        return events

    def _decode(self, record: RawRecord, since: float) -> JoinEvent:
        schema_id, body = unframe(record.value)
        payload = self.catalog.resolver.by_id(schema_id).decode_body(body)
        return JoinEvent(record, Envelope.from_headers(record.headers), payload, since)

    def _state(self, logic: JoinLogic, partition: int) -> JoinPartition:
        state = self.states.get((logic.name, partition))
        if state is None:
            state = self.states[(logic.name, partition)] = JoinPartition()
        return state

    def _effect_sends(self, logic: JoinLogic, partition: int, effects: Effects) -> list[Send]:
        sends = [self._changelog_send(logic, partition, change) for change in effects.changes]
        now = dt.datetime.now(dt.UTC)
        derived_at: list[int] = []  # signed together below: one signature per batch
        for derived in effects.derived:
            output = self.topology.event_type(derived.type)
            schema = self.catalog.latest_schema(derived.type)
            problems = self.catalog.payload_problems(output, schema, derived.payload)
            if problems:
                reason = f"join {logic.name}: derived {derived.type} is invalid: " + "; ".join(
                    problems
                )
                sends.append(self._dead_letter(logic, derived.left, "join.output", reason, now))
                continue
            key, value = derived.key.encode(), schema.encode(derived.payload)
            derived_at.append(len(sends))
            sends.append(Send(output.topic("in"), key, value, derived.envelope.to_headers()))
            metrics.JOIN_DERIVED.labels(logic.name).inc()
        if derived_at:
            unsigned = [(sends[i].headers, sends[i].key, sends[i].value) for i in derived_at]
            for i, headers in zip(derived_at, self.signer.sign_batch(unsigned), strict=True):
                sends[i] = replace(sends[i], headers=headers)
        for left, reason in effects.expired:
            sends.append(self._dead_letter(logic, left, "join.timeout", reason, now))
        if effects.waits:
            metrics.JOIN_WAITS.labels(logic.name).inc(effects.waits)
        for outcome, count in effects.timeouts.items():
            metrics.JOIN_EXPIRED.labels(logic.name, outcome).inc(count)
        return sends

    def _dead_letter(
        self, logic: JoinLogic, left: JoinEvent, code: str, reason: str, now: dt.datetime
    ) -> Send:
        left_type = self.topology.event_type(logic.join.left.type)
        metrics.EVENTS_DEAD_LETTERED.labels(
            left_type.name, agency_label(left.record.headers), "join", code
        ).inc()
        log.info("dead letter %s %s: %s", left_type.name, left.envelope.id, reason)
        # The left type's own key, so a replay to simpul.in passes the key check.
        key = str(left.payload[left_type.key]).encode()
        headers = dead_letter_headers(
            left.record.headers, "join", code, reason, now, left.record.origin()
        )
        agency = self.topology.agency_for_source(left.envelope.source)
        letter = DeadLetterRow(
            topic=left.record.topic,
            partition=left.record.partition,
            offset=left.record.offset,
            type=left_type.name,
            agency=agency.code if agency else "unknown",
            stage="join",
            code=code,
            reason=reason[:2000],
            ce_id=left.envelope.id,
            dead_lettered_at=now,
        )
        return Send(left_type.topic("dlq"), key, left.record.value, headers, letter=letter)

    def _changelog_send(self, logic: JoinLogic, partition: int, change: StateChange) -> Send:
        topic = logic.join.state_topic()
        event = change.event
        if event is None:
            return Send(topic, change.key, None, [], partition)
        record = event.record
        headers = [
            *record.headers,
            (_SINCE, repr(event.since).encode()),
            (_ORIGIN, f"{record.topic}:{record.partition}:{record.offset}".encode()),
        ]
        return Send(topic, change.key, record.value, headers, partition)

    async def _send(self, sends: list[Send]) -> None:
        # In per-partition batches, one future each (`send_all`): one send per message was
        # the joins process's largest cost (socket writes and event-loop turns).
        await self.send_all(
            [
                Outgoing(s.topic, s.key, s.value, list(s.headers), None, s.key, s.partition)
                for s in sends
            ]
        )
        if letters := [s.letter for s in sends if s.letter is not None]:
            # After the broker has the dead letters, before the offsets are committed.
            self.dead_letter_log.add_all(letters)
            await asyncio.to_thread(self.dead_letter_log.flush)

    # Partition ownership and state rebuild

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            for logic in self.logics:
                self.states.pop((logic.name, partition), None)
        self.loaded -= partitions

    async def restore(self, partitions: set[int]) -> None:
        """Rebuild the state of newly assigned partitions from the joins' changelogs."""
        fresh = sorted(partitions - self.loaded)
        if not fresh or not self.logics:
            self.loaded |= partitions
            return
        started = time.monotonic()
        tps = [TopicPartition(logic.join.state_topic(), p) for logic in self.logics for p in fresh]
        # The marker's offset is the end of what this process must read.
        futures = [
            await self.producer.send(tp.topic, key=_MARKER_KEY, value=None, partition=tp.partition)
            for tp in tps
        ]
        ends = {
            tp: meta.offset for tp, meta in zip(tps, await asyncio.gather(*futures), strict=True)
        }
        records: dict[TopicPartition, list[Any]] = defaultdict(list)
        reader = self.reader("restore")
        await reader.start()
        try:
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            remaining = set(tps)
            while remaining:
                if time.monotonic() - started > RESTORE_TIMEOUT_S:
                    raise RuntimeError(f"join state restore did not reach the end of {remaining}")
                batch = await reader.getmany(*remaining, timeout_ms=500)
                for tp, messages in batch.items():
                    for m in messages:
                        if m.offset >= ends[tp]:
                            remaining.discard(tp)
                            break
                        if m.key != _MARKER_KEY:
                            records[tp].append(m)
        finally:
            await reader.stop()
        async with self.batch_lock:
            counts = await asyncio.to_thread(self._restore_sync, records, fresh)
            self.loaded |= partitions
        log.info(
            "restored join state of partitions %s in %.2fs: %s",
            fresh,
            time.monotonic() - started,
            ", ".join(f"{name} {count}" for name, count in counts.items()),
        )

    def _restore_sync(
        self, records: dict[TopicPartition, list[Any]], fresh: list[int]
    ) -> dict[str, int]:
        by_topic = {logic.join.state_topic(): logic for logic in self.logics}
        counts: dict[str, int] = {}
        for logic in self.logics:
            for p in fresh:
                self.states[(logic.name, p)] = JoinPartition()
        for tp, messages in records.items():
            logic = by_topic[tp.topic]
            state = self._state(logic, tp.partition)
            for m in messages:
                event = None if m.value is None else self._from_changelog(m)
                logic.restore(state, m.key, event)
            counts[logic.name] = counts.get(logic.name, 0) + len(messages)
            metrics.JOIN_RESTORED.labels(logic.name).inc(len(messages))
        return counts

    def _from_changelog(self, m: Any) -> JoinEvent:
        headers = list(m.headers or ())
        since = float(header(headers, _SINCE) or time.time())
        topic, partition, offset = (header(headers, _ORIGIN) or "?:0:0").rsplit(":", 2)
        original = [(k, v) for k, v in headers if k not in (_SINCE, _ORIGIN)]
        record = RawRecord(topic, int(partition), int(offset), None, m.value, original)
        return self._decode(record, since)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "joins": [logic.name for logic in self.logics],
            "assigned_partitions": (
                len(self.consumer.assignment()) if hasattr(self, "consumer") else 0
            ),
            "loaded_partitions": sorted(self.loaded),
            "pending": sum(s.pending_count for s in self.states.values()),
            "last_batch_at": self.last_batch_at,
        }


def run_joins(settings: Settings, topology: Topology) -> None:
    """Run the joins in the foreground until SIGTERM/SIGINT, hosted with /metrics and /health."""
    from simpul.registry.client import make_resolver

    if not topology.joins:
        raise SystemExit("the topology declares no joins")
    catalog = EventCatalog(topology, make_resolver(settings))
    holder: dict[str, JoinService] = {}

    def health() -> tuple[dict[str, Any], int]:
        service = holder.get("service")
        return (service.health() if service else {"status": "starting"}), 200

    host = ProcessHost(settings, f"{settings.worker.id}-joins", settings.joins.web_port, health)

    class Joins(JoinService):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(settings, topology, catalog, **kwargs)
            holder["service"] = self

    host.service(Joins)
    host.run()
