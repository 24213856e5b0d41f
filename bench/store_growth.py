"""Store throughput as event_log grows: the same batch writes on an empty store and after
pre-filling millions of rows in SQL (generate_series), in one run, as ratios to empty.

    .venv/bin/python bench/store_growth.py [--sizes 0,1000000,4000000] [--events 20000]

Creates a throw-away PostgreSQL database next to SIMPUL_TEST_PG_URL's, migrates it, and at
each size writes ``--events`` fresh social.recipient.updated events through
`CentralStore.write` in batches of 1 000 (event_log insert + state upsert, the worker's
path), then adds rows up to the next size. Results go to bench/results/store-growth-*.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.private_pg import admin_url  # noqa: E402
from simpul import dbmigrate  # noqa: E402
from simpul.citydata import PaluData  # noqa: E402
from simpul.db import make_engine  # noqa: E402
from simpul.topology.model import load_topology  # noqa: E402
from sinks.central_store import CentralStore, StoredEvent  # noqa: E402

TYPE = "social.recipient.updated"
TYPES = [
    "hr.employee.updated",
    "hr.performance.assessed",
    "permit.issued",
    "kelurahan.document.issued",
    "social.recipient.updated",
    "population.death.registered",
]
SOURCES = ["bkpsdm", "dpmptsp", "dinsos", "dukcapil", "kel-ujuna", "kel-mamboro"]


def prefill(engine: object, start: int, stop: int) -> float:
    """Rows start..stop-1 in SQL: random-looking ce_ids (UUID text, as producers send), keys
    and payloads of a realistic size, a year of event times."""
    types = "ARRAY[" + ",".join(f"'{t}'" for t in TYPES) + "]"
    sources = "ARRAY[" + ",".join(f"'/agency/{s}'" for s in SOURCES) + "]"
    began = time.perf_counter()
    # Indexes dropped and rebuilt around the fill: a bulk build is far faster than millions
    # of index inserts, and leaves the same indexes (names and definitions) behind.
    with engine.begin() as conn:  # type: ignore[attr-defined]
        definitions = conn.execute(
            text(
                "select indexname, indexdef from pg_indexes where tablename = 'event_log' "
                "and indexname <> 'pk_event_log'"
            )
        ).all()
        for index_name, _ in definitions:
            conn.execute(text(f"DROP INDEX {index_name}"))
        conn.execute(text("ALTER TABLE event_log DROP CONSTRAINT pk_event_log"))
    step = 1_000_000
    for low in range(start, stop, step):
        high = min(stop, low + step)
        with engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(
                text(
                    "INSERT INTO event_log (ce_id, type, source, key, event_time, schema_id, "
                    "payload, published_at, received_at, stored_at) "
                    f"SELECT md5(i::text)::uuid::text, ({types})[1 + i % 6], "
                    f"({sources})[1 + i % 6], lpad((i * 7919 % 100000000)::text, 16, '7'), "
                    "t, 1, jsonb_build_object('nik', lpad((i * 7919)::text, 16, '7'), "
                    "'kelurahan_code', '7271021002', 'status', 'ACTIVE', "
                    "'programs', jsonb_build_array('PKH', 'BPNT'), 'updated_at', t), "
                    "t, t, t FROM (SELECT i, timestamptz '2025-11-01' + "
                    "(i % 31536000) * interval '1 second' AS t "
                    "FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint) - 1) AS i) s"
                ),
                {"low": low, "high": high},
            )
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("SET maintenance_work_mem = '256MB'"))
        conn.execute(text("ALTER TABLE event_log ADD CONSTRAINT pk_event_log PRIMARY KEY (ce_id)"))
        for _, definition in definitions:
            conn.execute(text(definition))
        conn.execute(text("ANALYZE event_log"))
    return time.perf_counter() - began


def events(data: PaluData, count: int) -> list[StoredEvent]:
    event_type = data.topology.event_type(TYPE)
    now = dt.datetime.now(dt.UTC)
    out = []
    for _ in range(count):
        payload = data.payload(TYPE, now)
        out.append(
            StoredEvent(
                ce_id=str(uuid.uuid4()),
                type=TYPE,
                entity=event_type.entity,
                source="/agency/dinsos",
                key=payload["nik"],
                event_time=now,
                schema_id=1,
                payload=payload,
                published_at=now,
                received_at=now,
            )
        )
    return out


def write_rate(store: CentralStore, batch: list[StoredEvent], size: int = 1000) -> float:
    began = time.perf_counter()
    for i in range(0, len(batch), size):
        store.write(batch[i : i + size])
    return len(batch) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1000000,4000000")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    name = f"simpul_bench_growth_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url().rsplit("/", 1)[0] + f"/{name}"
    topology = load_topology(ROOT / "topology" / "palu.yaml")
    data = PaluData(topology, seed=3, residents_count=50_000)
    rows: list[dict[str, float]] = []
    try:
        dbmigrate.upgrade(url)
        engine = make_engine(url)
        store = CentralStore(engine)
        filled = 0
        for size in sizes:
            fill_s = prefill(engine, filled, size) if size > filled else 0.0
            filled = max(filled, size)
            rates = [write_rate(store, events(data, args.events)) for _ in range(args.repeat)]
            with engine.connect() as conn:
                total = conn.scalar(text("select count(*) from event_log"))
                index_mb = conn.scalar(text("select pg_indexes_size('event_log') / 1048576.0"))
            rows.append(
                {
                    "prefilled_rows": size,
                    "rows_at_end": total,
                    "prefill_seconds": fill_s,
                    "events_per_s_median": statistics.median(rates),
                    "events_per_s_all": rates,
                    "index_mb": float(index_mb),
                }
            )
            print(
                f"{size:>12,} rows: {statistics.median(rates):>8,.0f} events/s "
                f"(runs {', '.join(f'{r:,.0f}' for r in rates)}), indexes {index_mb:,.0f} MB, "
                f"pre-filled in {fill_s:.0f}s",
                flush=True,
            )
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    empty = rows[0]["events_per_s_median"]
    for row in rows:
        row["ratio_to_first"] = row["events_per_s_median"] / empty
        print(f"{row['prefilled_rows']:>12,} rows: {row['ratio_to_first']:.2f}× the first size")
    out = ROOT / "bench" / "results" / f"store-growth-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
