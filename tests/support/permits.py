"""Permits published through a running stack, and what the stack did with them: stored, or a
dead letter read back from its topic."""

from __future__ import annotations

import datetime as dt
import uuid

from kafka import KafkaConsumer, TopicPartition

from simpul.publisher import Publisher
from tests.support.processes import wait_until
from tests.support.stack import Stack


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def permit(number: str, nik: str = "7271015203880002") -> dict[str, object]:
    return {
        "permit_number": number,
        "permit_type": "PBG",
        "nib": "9120001234567",
        "applicant_nik": nik,
        "business_name": "Kios Tenun Donggala Pettalolo",
        "kelurahan_code": "7271021002",
        "issued_at": now(),
        "valid_until": dt.date(2031, 1, 31),
        "signature_digest": "cd" * 32,
    }


def number() -> str:
    return f"503/{uuid.uuid4().hex[:8]}/DPMPTSP/2026"


def publisher(stack: Stack, agency: str) -> Publisher:
    return Publisher(agency, settings=stack.settings, catalog=stack.catalog())


def stored(stack: Stack, ce_id: str) -> bool:
    return ce_id in stack.store.event_ids()


def dead_letters(stack: Stack, type_name: str) -> list[dict[str, object]]:
    topic = f"simpul.dlq.{type_name}"
    consumer = KafkaConsumer(
        bootstrap_servers=stack.settings.kafka.bootstrap,
        consumer_timeout_ms=1500,
        auto_offset_reset="earliest",
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    letters = [
        {
            "key": m.key,
            "value": m.value,
            "headers": {k: v.decode(errors="replace") for k, v in m.headers},
        }
        for m in consumer
    ]
    consumer.close()
    return letters


def dead_letter_for(stack: Stack, type_name: str, ce_id: str) -> dict[str, object]:
    def find() -> dict[str, object] | None:
        return next(
            (d for d in dead_letters(stack, type_name) if d["headers"].get("ce_id") == ce_id), None
        )  # type: ignore[union-attr]

    return wait_until(find, 30, f"dead letter {ce_id}")
