"""The batch service's pipelined loop (streams/runtime/batching.py) on a real broker: the next
batch is prepared while the previous one completes, completions never overlap and run in
fetch order, every offset is committed, and a completion that fails stops the service."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from simpul.cli.services.broker import Broker
from simpul.settings import Settings
from streams.runtime.batching import Batch, BatchService
from tests.support.brokers import BROKER_ENGINE, TEST_SESSION_TIMEOUT_S

pytestmark = pytest.mark.integration

MESSAGES = 60


def _topic_with_messages(bootstrap: str) -> str:
    topic = f"simpul.test.batches-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for n in range(MESSAGES):
        producer.send(topic, value=b"%d" % n)
    producer.flush()
    producer.close()
    return topic


def _settings(bootstrap: str, group: str) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        broker_engine=BROKER_ENGINE,
        worker_id=group,
        session_timeout_s=TEST_SESSION_TIMEOUT_S,
        rebalance_timeout_s=TEST_SESSION_TIMEOUT_S,
    )


class Recorder(BatchService):
    """Prepares by noting the batch's offsets; completes slowly, noting start and end."""

    role: ClassVar[str] = "test"
    pipelined: ClassVar[bool] = True
    max_records: ClassVar[int | None] = 5

    def __init__(
        self,
        settings: Settings,
        topic: str,
        fail_at: int | None = None,
        prepare_s: float = 0.0,
    ) -> None:
        super().__init__(settings)
        self.topic = topic
        self.fail_at = fail_at
        self.prepare_s = prepare_s
        self.events: list[tuple[str, int]] = []
        self.completing = False
        self.prepared_while_completing = 0
        self.done = asyncio.Event()

    def topics(self) -> list[str]:
        return [self.topic]

    async def prepare(self, batch: Batch) -> Any:
        if self.completing:
            self.prepared_while_completing += 1
        first = min(m.offset for messages in batch.values() for m in messages)
        self.events.append(("prepare", first))
        await asyncio.sleep(self.prepare_s)  # a validation that waits (the registry, a thread)
        return batch

    async def complete(self, staged: Any) -> None:
        batch: Batch = staged
        first = min(m.offset for messages in batch.values() for m in messages)
        assert not self.completing, "two completions at once"
        self.completing = True
        self.events.append(("start", first))
        await asyncio.sleep(0.2)  # the store and the broker's acks
        if first == self.fail_at:
            raise RuntimeError("a bug in the sink")
        await self.commit(batch)
        self.events.append(("end", first))
        self.completing = False
        if max(m.offset for messages in batch.values() for m in messages) == MESSAGES - 1:
            self.done.set()


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def test_batches_are_prepared_while_the_last_completes_and_complete_in_order(
    broker: Broker,
) -> None:
    topic = _topic_with_messages(broker.bootstrap)
    group = f"batches-{uuid.uuid4().hex[:6]}"
    service = Recorder(_settings(broker.bootstrap, group), topic)

    async def run() -> None:
        await service.start()
        try:
            await asyncio.wait_for(service.done.wait(), 90)
        finally:
            await service.stop()

    asyncio.run(run())
    starts = [offset for kind, offset in service.events if kind == "start"]
    ends = [offset for kind, offset in service.events if kind == "end"]
    assert starts == sorted(starts) and ends == starts, service.events
    assert service.prepared_while_completing > 0, "no batch was prepared during a completion"
    assert _committed(broker.bootstrap, f"{group}.test", topic) == MESSAGES


@pytest.mark.parametrize(
    ("fail_at", "prepare_s"),
    [
        (20, 0.0),  # fails while the loop waits for it (drain)
        (20, 0.5),  # fails while the next batch is still being prepared
        (MESSAGES - 5, 0.0),  # the last batch fails while the loop waits for records
    ],
)
def test_a_completion_that_fails_stops_the_service_and_commits_nothing_past_it(
    broker: Broker, fail_at: int, prepare_s: float
) -> None:
    topic = _topic_with_messages(broker.bootstrap)
    group = f"batches-{uuid.uuid4().hex[:6]}"
    service = Recorder(_settings(broker.bootstrap, group), topic, fail_at, prepare_s)

    async def run() -> None:
        await service.start()
        try:
            await asyncio.wait_for(service.wait_until_stopped(), 90)
        finally:
            await service.stop()

    asyncio.run(run())
    assert isinstance(service.crash_reason, RuntimeError)
    assert ("start", fail_at) in service.events and ("end", fail_at) not in service.events
    assert not [e for e in service.events if e[0] == "start" and e[1] > fail_at]
    committed = _committed(broker.bootstrap, f"{group}.test", topic)
    assert committed is not None and committed <= fail_at
