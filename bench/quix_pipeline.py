"""`make bench` rival: a Quix Streams pipeline doing the storage job on the same topics.

Consume Confluent-framed Avro, decode, drop duplicates by ``ce_id`` (a per-partition window,
like Simpul's), insert into ``event_log`` and upsert the current-state table through Simpul's
own `CentralStore` (the same SQL, so the pipelines differ only in what surrounds it), from a
`BatchingSink` that Quix flushes at each checkpoint before it commits the offsets. Quix's
defaults are kept (commit every 5 s, at-least-once): the bench does not tune the rival.

Usage: quix_pipeline.py BOOTSTRAP DATABASE_URL TOPIC[,TOPIC...] MARKER TOTAL

For the bench's clock it writes Unix times: MARKER.first on its first message, MARKER.last
on message TOTAL, and one line per sink write to MARKER.writes (so the bench can leave out
the idle wait for the last checkpoint, which a steady stream would not have).
"""

from __future__ import annotations

import datetime as dt
import io
import sys
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import fastavro
from quixstreams import Application, message_context
from quixstreams.models.serializers import Deserializer
from quixstreams.sinks import BatchingSink, SinkBatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpul.db import make_engine  # noqa: E402
from simpul.registry.resolver import SchemaResolver  # noqa: E402
from simpul.registry.store import SchemaStore  # noqa: E402
from simpul.topology.model import load_topology  # noqa: E402
from sinks.central_store import CentralStore, StoredEvent  # noqa: E402

TOPOLOGY = load_topology(ROOT / "topology" / "palu.yaml")


class ConfluentAvro(Deserializer):  # type: ignore[misc]
    """Byte 0x00, 4-byte schema id, Avro body; schemas by id from the central store."""

    def __init__(self, schemas: dict[int, Any]) -> None:
        super().__init__()
        self.schemas = schemas

    def __call__(self, value: bytes, ctx: Any) -> Any:
        schema = self.schemas[int.from_bytes(value[1:5], "big")]
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), schema, None)


class CentralStoreSink(BatchingSink):  # type: ignore[misc]
    def __init__(self, url: str, writes: Path) -> None:
        super().__init__()
        self.store = CentralStore(make_engine(url))
        self.writes = writes

    def write(self, batch: SinkBatch) -> None:
        with self.writes.open("a") as log:
            log.write(f"{time.time()!r}\n")
        received = dt.datetime.now(dt.UTC)
        events = []
        for item in batch:
            headers = {k: v.decode() for k, v in item.headers or ()}
            event_type = TOPOLOGY.event_type(headers["ce_type"])
            events.append(
                StoredEvent(
                    ce_id=headers["ce_id"],
                    type=event_type.name,
                    entity=event_type.entity,
                    source=headers["ce_source"],
                    key=str(item.value[event_type.key]),
                    event_time=dt.datetime.fromisoformat(headers["ce_time"]),
                    schema_id=0,
                    payload=item.value,
                    published_at=dt.datetime.fromtimestamp(item.timestamp / 1000, dt.UTC),
                    received_at=received,
                )
            )
        self.store.write(events)


def main() -> None:
    bootstrap, url, topics = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    marker, total = sys.argv[4], int(sys.argv[5])
    consumed = [0]
    resolver = SchemaResolver(SchemaStore(make_engine(url)))
    schemas = {}
    for event_type in TOPOLOGY.event_types:
        schema = resolver.latest(event_type.subject)
        schemas[schema.id] = schema.parsed
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        auto_create_topics=False,
        loglevel="WARNING",
        state_dir=f"/tmp/quix-state-{uuid.uuid4().hex[:6]}",
    )
    seen: dict[tuple[str, int], OrderedDict[str, None]] = {}

    def first_time(value: Any, key: Any, timestamp: int, headers: Any) -> bool:
        consumed[0] += 1
        if consumed[0] == 1:
            Path(f"{marker}.first").write_text(repr(time.time()))
        if consumed[0] == total:
            Path(f"{marker}.last").write_text(repr(time.time()))
        ce_id = next(v for k, v in headers if k == "ce_id").decode()
        ctx = message_context()
        window = seen.setdefault((ctx.topic, ctx.partition), OrderedDict())
        if ce_id in window:
            return False
        window[ce_id] = None
        if len(window) > 100_000:
            window.popitem(last=False)
        return True

    sink = CentralStoreSink(url, Path(f"{marker}.writes"))
    deserializer = ConfluentAvro(schemas)
    for name in topics:
        topic = app.topic(name, key_deserializer="bytes", value_deserializer=deserializer)
        sdf = app.dataframe(topic)
        sdf = sdf.filter(first_time, metadata=True)
        sdf.sink(sink)
    app.run()


if __name__ == "__main__":
    main()
