"""The one place a record is built from a consumed Kafka message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from simpul.deadletter import Origin
from simpul.envelope import Headers, without_simpul_headers


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class RawRecord:
    """A Kafka record as consumed, with its position so a dead letter can point back."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: float | None = None  # seconds since the epoch (producer CreateTime)

    @classmethod
    def from_message(
        cls, tp: TopicPartition, message: Any, *, trusted_headers: bool = False
    ) -> RawRecord:
        """The record of an aiokafka ``ConsumerRecord``. Headers named ``simpul_*`` are
        Simpul's: a producer's are dropped unless ``trusted_headers`` (a topic only Simpul
        writes, such as ``simpul.valid``)."""
        raw = message.headers or ()
        return cls(
            tp.topic,
            tp.partition,
            message.offset,
            message.key,
            message.value,
            list(raw) if trusted_headers else without_simpul_headers(raw),
            message.timestamp / 1000 if message.timestamp else None,
        )

    def origin(self) -> Origin:
        """Where it was read, for its dead letter."""
        return Origin(self.topic, self.partition, self.offset)
