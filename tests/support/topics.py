"""Reading topics back with a plain client, the way an outside auditor would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from simpul.topology.model import Topology


def read_topic(bootstrap: str, topic: str, idle_ms: int = 2000) -> Iterator[Any]:
    """Every record of `topic` from the beginning, up to the end offsets taken at the start
    (or until nothing arrives for `idle_ms`)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        consumer_timeout_ms=idle_ms,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    try:
        for tp in parts:
            if consumer.position(tp) >= ends[tp]:
                consumer.pause(tp)
        while len(consumer.paused()) < len(parts):
            batch = consumer.poll(timeout_ms=idle_ms)
            if not batch:
                return
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if consumer.position(tp) >= ends[tp]:
                    consumer.pause(tp)
    finally:
        consumer.close()


def dead_letter_origins(bootstrap: str, topology: Topology) -> dict[tuple[str, str, str], dict]:
    """Distinct dead letters by their origin (topic, partition, offset), with their headers.

    The dead-letter topic is at-least-once too: a worker killed after producing a dead letter
    but before committing produces it again; the origin identifies the copies.
    """
    origins: dict[tuple[str, str, str], dict] = {}
    for et in topology.event_types:
        for message in read_topic(bootstrap, et.topic("dlq")):
            headers = {k: v.decode(errors="replace") for k, v in message.headers}
            origin = (
                headers["simpul_dlq_topic"],
                headers["simpul_dlq_partition"],
                headers["simpul_dlq_offset"],
            )
            origins[origin] = headers
    return origins


def ce_ids_on(bootstrap: str, topics: list[str]) -> set[str]:
    """Distinct ce_ids on `topics`, read from the beginning with a plain client."""
    return {
        dict(message.headers)["ce_id"].decode()
        for topic in topics
        for message in read_topic(bootstrap, topic)
    }
