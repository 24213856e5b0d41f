"""Dead letters: list them with their reasons, and replay them through validation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from simpul.envelope import Headers, header
from simpul.kafka_clients import kafka_python_options
from simpul.settings import Settings
from simpul.topology import EventType

DLQ_HEADER_PREFIX = "simpul_dlq_"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @property
    def reason(self) -> str:
        return header(self.headers, "simpul_dlq_reason") or "(no reason recorded)"

    @property
    def stage(self) -> str:
        return header(self.headers, "simpul_dlq_stage") or "?"

    @property
    def code(self) -> str:
        return header(self.headers, "simpul_dlq_code") or "?"

    @property
    def ce_id(self) -> str | None:
        return header(self.headers, "ce_id")

    @property
    def source(self) -> str | None:
        return header(self.headers, "ce_source")

    @property
    def original_headers(self) -> Headers:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_HEADER_PREFIX)]


def replay_group(event_type: EventType) -> str:
    return f"simpul-dlq-replay.{event_type.name}"


class DeadLetterReader:
    """Reads a type's dead letters, oldest first; with ``group`` (a consumer group id), only
    those after that group's committed position, and `commit` records progress.

    The read ends after ``idle_seconds`` without a new record rather than at the reported
    end offsets, because the embedded broker's high watermark can read low.
    """

    def __init__(
        self,
        bootstrap: str | Settings,
        event_type: EventType,
        *,
        group: str | None = None,
        idle_seconds: float = 1.5,
    ) -> None:
        self.topic = event_type.topic("dlq")
        self.consumer = KafkaConsumer(
            **kafka_python_options(bootstrap),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=int(idle_seconds * 1000),
            client_id="simpul-dlq",
        )
        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        for tp in tps:
            committed = self.consumer.committed(tp) if group else None
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        self.positions: dict[TopicPartition, int] = {}

    def __iter__(self) -> Iterator[DeadLetter]:
        # Idle alone can end too early on a busy machine (the first fetch after a seek is
        # slow); so go on while a partition is short of the end offset the broker reported
        # (which reads low on the embedded broker, so there the idle rule decides), for at
        # most 30 s.
        tps = list(self.consumer.assignment())
        ends = self.consumer.end_offsets(tps) if tps else {}
        deadline = time.monotonic() + 30
        while True:
            for message in self.consumer:
                self.positions[TopicPartition(self.topic, message.partition)] = message.offset + 1
                yield DeadLetter(
                    message.partition,
                    message.offset,
                    message.key,
                    message.value,
                    list(message.headers or []),
                )
            behind = [tp for tp in tps if self.consumer.position(tp) < ends.get(tp, 0)]
            if not behind or time.monotonic() > deadline:
                return

    def commit(self) -> None:
        if self.positions:
            self.consumer.commit(
                {tp: OffsetAndMetadata(o, "", -1) for tp, o in self.positions.items()}
            )

    def close(self) -> None:
        self.consumer.close()


def list_dead_letters(bootstrap: str | Settings, event_type: EventType) -> list[DeadLetter]:
    reader = DeadLetterReader(bootstrap, event_type)
    try:
        return list(reader)
    finally:
        reader.close()


def replay_dead_letters(
    bootstrap: str | Settings,
    event_type: EventType,
    *,
    ce_id: str | None = None,
    code: str | None = None,
) -> tuple[int, int]:
    """Send dead letters back to ``simpul.in.<type>`` with their original headers.

    An unfiltered replay records its progress in a consumer group, so running it twice
    replays nothing twice; a filtered one (by ``ce_id`` or reason ``code``) records nothing.
    Returns (replayed, skipped by the filters).
    """
    producer = KafkaProducer(**kafka_python_options(bootstrap), acks="all", linger_ms=5)
    reader = DeadLetterReader(bootstrap, event_type, group=replay_group(event_type))
    replayed = skipped = 0
    try:
        for letter in reader:
            if (ce_id and letter.ce_id != ce_id) or (code and letter.code != code):
                skipped += 1
                continue
            producer.send(
                event_type.topic("in"),
                key=letter.key,
                value=letter.value,
                headers=[
                    *letter.original_headers,
                    ("simpul_replayed_at", str(time.time()).encode()),
                ],
            )
            replayed += 1
        # Progress is recorded only for an unfiltered replay (a filtered one must not mark the
        # letters it skipped as done), and only after the broker has every replayed copy.
        producer.flush()
        if not (ce_id or code):
            reader.commit()
    finally:
        producer.close()
        reader.close()
    return replayed, skipped
