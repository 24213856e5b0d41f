"""`simpul audit subject` at scale: millions of audit rows in PostgreSQL, with and without the
subject index, in the same run (the ratio is the figure; absolute times move with the load).

    .venv/bin/python bench/audit_subject.py [--rows 2000000] [--people 300000]

Creates a throw-away database next to SIMPUL_TEST_PG_URL's, migrates it, fills
``delivery_audit`` in SQL (realistic shape: a few deliveries per person, Palu agencies),
times ``receipts_for`` for random people with the index, drops the index, times again, and
drops the database. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
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
from simpul.db import make_engine  # noqa: E402
from sinks.audit import receipts_for, subject_hash  # noqa: E402

KEY = "bench-audit-key-0123456789"
ROUTES = [
    ("dinsos", "dinsos-sktm", "kelurahan.document.issued", "Check poverty letters (SKTM)"),
    ("dinsos", "dinsos-deaths", "population.death.registered", "Stop social assistance"),
    ("kel-ujuna", "kel-ujuna-permits", "permit.issued", "Local business register"),
    ("kominfo", "kominfo-permit-statistics", "permit.issued", "Satu Data statistics"),
    ("kel-mamboro", "kel-mamboro-documents", "kelurahan.document.issued", "Resident register"),
]


def nik(i: int) -> str:
    return f"727101{(i % 28) + 1:02d}0{(i % 9) + 1}9{(i // 100_000) % 10}{i % 10_000:04d}"


def fill(url: str, rows: int, people: int) -> None:
    """``rows`` audit rows in SQL (generate_series), a few deliveries per person: the people's
    subject hashes (HMACs of their NIKs, as `receipts_for` computes them) are copied in once,
    each row takes one of them; the non-constraint indexes are dropped around the fill and
    rebuilt with the same names and definitions (a bulk build is far faster than millions
    of index inserts, and leaves the same indexes)."""
    import psycopg

    plain = url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(plain) as conn:
        conn.execute("CREATE UNLOGGED TABLE bench_people (i integer PRIMARY KEY, h text)")
        with conn.cursor().copy("COPY bench_people (i, h) FROM STDIN") as copy:
            for i in range(people):
                copy.write_row((i, subject_hash(KEY, nik(i))))
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'delivery_audit' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        ).fetchall()
        for index_name, _ in indexes:
            conn.execute(f"DROP INDEX {index_name}")
        conn.commit()
        routes = ", ".join(
            "(" + ", ".join("'" + part.replace("'", "''") + "'" for part in route) + ")"
            for route in ROUTES
        )
        fields = json.dumps(["document_number", "resident_nik", "issued_at"])
        step = 1_000_000
        for low in range(1, rows + 1, step):
            high = min(rows, low + step - 1)
            conn.execute(
                "INSERT INTO delivery_audit (chain_id, seq, ce_id, event_type, agency, "
                "subscription, purpose, fields, channel, outcome, detail, subject_hash, "
                "recorded_at, prev_hash, row_hash) "
                "SELECT 'bench-chain', s.i, md5(s.i::text)::uuid::text, r.etype, r.agency, "
                "r.sub, r.purpose, %(fields)s, CASE WHEN s.i %% 3 = 0 THEN 'webhook' "
                "ELSE 'inbox' END, 'delivered', NULL, p.h, "
                "timestamptz '2026-01-01' + s.i * interval '7 seconds', "
                "repeat('0', 64), repeat('0', 64) "
                "FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS s(i) "
                f"JOIN (SELECT row_number() OVER () - 1 AS n, * FROM (VALUES {routes}) "
                "AS v(agency, sub, etype, purpose)) r "
                f"ON r.n = s.i %% {len(ROUTES)} "
                "JOIN bench_people p ON p.i = (s.i * 2654435761) %% %(people)s",
                {"fields": fields, "low": low, "high": high, "people": people},
            )
            conn.commit()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("DROP TABLE bench_people")
        conn.commit()


def timed(engine: object, people: int, repeat: int, rng: random.Random) -> list[float]:
    times = []
    for _ in range(repeat):
        person = nik(rng.randrange(people))
        began = time.perf_counter()
        receipts_for(engine, KEY, person)  # type: ignore[arg-type]
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--people", type=int, default=300_000)
    args = parser.parse_args()
    name = f"simpul_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url().rsplit("/", 1)[0] + f"/{name}"
    try:
        dbmigrate.upgrade(url)
        began = time.perf_counter()
        fill(url, args.rows, args.people)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE delivery_audit"))
        print(f"filled {args.rows:,} rows in {time.perf_counter() - began:.1f}s")
        rng = random.Random(1)
        timed(engine, args.people, 5, rng)  # warm the cache and the pool
        indexed = timed(engine, args.people, 200, rng)
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_delivery_audit_subject_hash"))
            conn.execute(text("ANALYZE delivery_audit"))
        timed(engine, args.people, 1, rng)
        scanned = timed(engine, args.people, 10, rng)
        engine.dispose()
        p50_i, p50_s = statistics.median(indexed), statistics.median(scanned)
        print(
            f"audit subject over {args.rows:,} rows ({args.people:,} people):\n"
            f"  with the subject_hash index : p50 {p50_i * 1000:.2f} ms, "
            f"max {max(indexed) * 1000:.2f} ms ({len(indexed)} lookups)\n"
            f"  without it (sequential scan): p50 {p50_s * 1000:.1f} ms ({len(scanned)} lookups)\n"
            f"  ratio: the index answers {p50_s / p50_i:,.0f}× faster"
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
