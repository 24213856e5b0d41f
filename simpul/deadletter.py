"""Dead letters: the one place their ``simpul_dlq_*`` headers are written and read; list, replay.

Every writer (ingest, joins, webhook delivery, connectors) adds the headers with
`dead_letter_headers` and cuts an over-large letter with `fit_dead_letter`; every reader goes
through `DeadLetter`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from simpul.envelope import Headers, header
from simpul.errors import Stage
from simpul.identifiers import mask_identifiers
from simpul.kafka_clients import kafka_python_options
from simpul.settings import Settings
from simpul.topology.model import EventType

DLQ_HEADER_PREFIX = "simpul_dlq_"
REASON = "simpul_dlq_reason"
STAGE = "simpul_dlq_stage"
CODE = "simpul_dlq_code"
TOPIC = "simpul_dlq_topic"
PARTITION = "simpul_dlq_partition"
OFFSET = "simpul_dlq_offset"
TIME = "simpul_dlq_time"
TRUNCATED = "simpul_dlq_truncated"
CONNECTOR = "simpul_dlq_connector"
#: Every header a dead letter may carry beside the original ones.
DLQ_HEADERS = frozenset({REASON, STAGE, CODE, TOPIC, PARTITION, OFFSET, TIME, TRUNCATED, CONNECTOR})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the rejected message was read: a replay or a person finds it there."""

    topic: str
    partition: int
    offset: int


def dead_letter_headers(
    headers: Headers,
    stage: Stage,
    code: str,
    reason: str,
    now: dt.datetime | None = None,
    origin: Origin | None = None,
    connector: str | None = None,
) -> Headers:
    """The original headers plus where and why the message was rejected (a NIK or NIP in
    the reason masked). ``origin`` and ``now`` are left out for a record that was never on
    a topic (a connector's), ``connector`` names the connector that read it."""
    out: Headers = [
        *headers,
        (REASON, mask_identifiers(reason).encode()),
        (STAGE, stage.encode()),
        (CODE, code.encode()),
    ]
    if origin is not None:
        out += [
            (TOPIC, origin.topic.encode()),
            (PARTITION, str(origin.partition).encode()),
            (OFFSET, str(origin.offset).encode()),
        ]
    if now is not None:
        out.append((TIME, now.isoformat().encode()))
    if connector is not None:
        out.append((CONNECTOR, connector.encode()))
    return out


#: Largest dead letter produced (key, value and headers): under the producer's and the broker's
#: 1 MiB default, which a message near that limit plus the dead-letter headers would exceed.
MAX_DEAD_LETTER_BYTES = 1_000_000


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: Headers, limit: int = MAX_DEAD_LETTER_BYTES
) -> tuple[bytes | None, bytes | None, Headers]:
    """Key, value and headers cut to ``limit`` bytes, saying what was cut in
    ``simpul_dlq_truncated`` (the original sizes); unchanged when they fit."""

    def size(k: bytes | None, v: bytes | None, h: Headers) -> int:
        return len(k or b"") + len(v or b"") + sum(len(n) + len(x or b"") + 8 for n, x in h)

    if size(key, value, headers) <= limit:
        return key, value, headers
    note = f"value={len(value or b'')};key={len(key or b'')}".encode()
    ours = [(n, x) for n, x in headers if n in DLQ_HEADERS]
    theirs = [(n, x) for n, x in headers if n not in DLQ_HEADERS]
    cut: Headers = [*ours, (TRUNCATED, note)]
    for name, raw in theirs:  # the producer's headers, while they fit in a quarter
        if size(None, None, [*cut, (name, raw)]) > limit // 4:
            break
        cut.append((name, raw))
    key = key[:1024] if key is not None else None
    room = max(0, limit - size(key, None, cut))
    return key, (value[:room] if value is not None else None), cut


def strip_dead_letter_headers(headers: Headers) -> Headers:
    """Headers as the agency sent them, for a replay."""
    return [(k, v) for k, v in headers if not k.startswith(DLQ_HEADER_PREFIX)]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @property
    def reason(self) -> str:
        return header(self.headers, REASON) or "(no reason recorded)"

    @property
    def stage(self) -> str:
        return header(self.headers, STAGE) or "?"

    @property
    def code(self) -> str:
        return header(self.headers, CODE) or "?"

    @property
    def ce_id(self) -> str | None:
        return header(self.headers, "ce_id")

    @property
    def source(self) -> str | None:
        return header(self.headers, "ce_source")

    @property
    def original_headers(self) -> Headers:
        return strip_dead_letter_headers(self.headers)


def replay_group(event_type: EventType) -> str:
    return f"simpul-dlq-replay.{event_type.name}"


class DeadLetterReader:
    """Reads a type's dead letters, oldest first; with ``group`` (a consumer group id), only
    those after that group's committed position, and `commit` records progress.

    The read ends after ``idle_seconds`` without a new record, and not before it reached the
    end offsets reported at the start (unless ``max_seconds`` pass): the embedded broker's high
    watermark can read low, so the end offsets alone would stop short there, and on Apache
    Kafka a consumer's first fetch can take longer than the idle time, so the idle time alone
    could read nothing.
    """

    def __init__(
        self,
        bootstrap: str | Settings,
        event_type: EventType,
        *,
        group: str | None = None,
        idle_seconds: float = 1.5,
        max_seconds: float = 30.0,
    ) -> None:
        self.topic = event_type.topic("dlq")
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.consumer = KafkaConsumer(
            **kafka_python_options(bootstrap),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
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
        self.ends: dict[TopicPartition, int] = self.consumer.end_offsets(tps) if tps else {}
        self.positions: dict[TopicPartition, int] = {}

    def _behind(self) -> bool:
        return any(self.consumer.position(tp) < end for tp, end in self.ends.items())

    def __iter__(self) -> Iterator[DeadLetter]:
        started = idle_since = time.monotonic()
        while True:
            batch = self.consumer.poll(timeout_ms=200)
            for tp, messages in batch.items():
                for message in messages:
                    self.positions[tp] = message.offset + 1
                    yield DeadLetter(
                        message.partition,
                        message.offset,
                        message.key,
                        message.value,
                        list(message.headers or []),
                    )
            now = time.monotonic()
            if batch:
                idle_since = now
            elif now - idle_since >= self.idle_seconds and (
                now - started >= self.max_seconds or not self._behind()
            ):
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


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay sent back (the ``ce_id`` of each letter) and how many it left alone."""

    replayed: list[str | None]
    skipped: int


def replay(
    bootstrap: str | Settings,
    event_type: EventType,
    *,
    ce_id: str | None = None,
    code: str | None = None,
    agency: str | None = None,
) -> ReplayReport:
    """Send dead letters back to ``simpul.in.<type>`` with their original headers.

    An unfiltered replay records its progress in a consumer group, so running it twice
    replays nothing twice; a filtered one (by ``ce_id``, reason ``code`` or sending
    ``agency``) records nothing.
    """
    filtered = bool(ce_id or code or agency)
    source = f"/agency/{agency}" if agency else None
    producer = KafkaProducer(**kafka_python_options(bootstrap), acks="all", linger_ms=5)
    reader = DeadLetterReader(bootstrap, event_type, group=replay_group(event_type))
    replayed: list[str | None] = []
    skipped = 0
    try:
        for letter in reader:
            if (
                (ce_id and letter.ce_id != ce_id)
                or (code and letter.code != code)
                or (source and letter.source != source)
            ):
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
            replayed.append(letter.ce_id)
        # Progress is recorded only for an unfiltered replay (a filtered one must not mark the
        # letters it skipped as done), and only after the broker has every replayed copy.
        producer.flush()
        if not filtered:
            reader.commit()
    finally:
        producer.close()
        reader.close()
    return ReplayReport(replayed, skipped)


def replay_dead_letters(
    bootstrap: str | Settings,
    event_type: EventType,
    *,
    ce_id: str | None = None,
    code: str | None = None,
) -> tuple[int, int]:
    """`replay`, counted: (replayed, skipped by the filters)."""
    report = replay(bootstrap, event_type, ce_id=ce_id, code=code)
    return len(report.replayed), report.skipped
