"""`make bench`: throughput of Simpul's processing steps, as ratios to a baseline of the same run.

This first benchmark measures the path without a broker: the baseline is bare fastavro
decoding of the same framed messages; then the full pure pipeline (headers, authorization,
schema, decode, identifiers, dedup) and the central store write on SQLite and PostgreSQL.
Ratios, not absolute numbers, are what to compare across machines. Broker-level runs against
bare Faust belong to issue 4.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import fastavro
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.private_pg import admin_url  # noqa: E402
from simpul import dbmigrate  # noqa: E402
from simpul.catalog import EventCatalog  # noqa: E402
from simpul.citydata import PaluData  # noqa: E402
from simpul.db import make_engine  # noqa: E402
from simpul.envelope import Envelope  # noqa: E402
from simpul.registry.resolver import SchemaResolver  # noqa: E402
from simpul.registry.store import SchemaStore, register_all  # noqa: E402
from simpul.settings import Settings  # noqa: E402
from simpul.signing import KeyRing  # noqa: E402
from simpul.topology.model import load_topology  # noqa: E402
from sinks.central_store import CentralStore  # noqa: E402
from streams.ingest.pipeline import DedupWindow, RawRecord, process_batch  # noqa: E402
from tests.support.signing import install_test_keys, sign  # noqa: E402

install_test_keys(ROOT / "topology" / "palu.yaml")

N = 20_000
BATCH = 1000
TYPE = "social.recipient.updated"


def best_of(runs: int, fn) -> float:  # type: ignore[no-untyped-def]
    """Best wall time of several runs: the least disturbed by the machine's noise."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    topology = load_topology(ROOT / "topology" / "palu.yaml")
    workdir = Path(tempfile.mkdtemp(prefix="simpul-bench-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    dbmigrate.upgrade(url)
    registry = SchemaStore(make_engine(url))
    register_all(registry, topology, ROOT / "schemas")
    catalog = EventCatalog(topology, SchemaResolver(registry))
    event_type = topology.event_type(TYPE)
    schema = catalog.latest_schema(TYPE)
    data = PaluData(topology, seed=1)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    records = []
    for i in range(N):
        payload = data.payload(TYPE, now)
        envelope = Envelope(type=TYPE, source="/agency/dinsos", time=now)
        key, value = payload["nik"].encode(), schema.encode(payload)
        records.append(
            RawRecord(
                f"simpul.in.{TYPE}",
                i % 4,
                i,
                key,
                value,
                sign("dinsos", envelope.to_headers(), key, value),
                now.timestamp(),
            )
        )
    keyring = KeyRing(Settings().public_keys_path)

    def baseline() -> None:
        for r in records:
            fastavro.schemaless_reader(io.BytesIO(r.value[5:]), schema.parsed, None)

    def pipeline() -> None:
        dedup = DedupWindow(200_000)
        for i in range(0, N, BATCH):
            process_batch(records[i : i + BATCH], event_type, catalog, dedup, keyring)

    outcome = process_batch(records, event_type, catalog, DedupWindow(200_000), keyring)
    assert len(outcome.accepted) == N, outcome.rejected[:1]

    def store_run(store_url: str):  # type: ignore[no-untyped-def]
        def run() -> None:
            store = CentralStore(make_engine(store_url))
            received = dt.datetime.now(dt.UTC)
            events = [a.to_stored(event_type, received) for a in outcome.accepted]
            events = [
                e.__class__(
                    **{**{f: getattr(e, f) for f in e.__slots__}, "ce_id": str(uuid.uuid4())}
                )
                for e in events
            ]
            for i in range(0, N, BATCH):
                store.write(events[i : i + BATCH])

        return run

    results = {
        "baseline: fastavro decode only": best_of(3, baseline),
        "pipeline: validate + decode + identifiers + dedup": best_of(3, pipeline),
        "store: SQLite batch write (event_log + state upsert)": best_of(2, store_run(url)),
    }
    pg_db = f"simpul_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_db}"'))
        pg_url = admin_url().rsplit("/", 1)[0] + f"/{pg_db}"
        dbmigrate.upgrade(pg_url)
        results["store: PostgreSQL batch write (event_log + state upsert)"] = best_of(
            2, store_run(pg_url)
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{pg_db}" WITH (FORCE)'))
    except Exception as error:  # no PostgreSQL: report and go on
        print(f"PostgreSQL skipped: {error}")

    base_rate = N / results["baseline: fastavro decode only"]
    rows = []
    print(f"\n{N} events of {TYPE}, batches of {BATCH}, best of several runs\n")
    print(f"{'step':58} {'events/s':>10} {'vs baseline':>12}")
    for name, seconds in results.items():
        rate = N / seconds
        rows.append(
            {
                "step": name,
                "seconds": round(seconds, 4),
                "events_per_s": round(rate),
                "ratio_to_baseline": round(rate / base_rate, 3),
            }
        )
        print(f"{name:58} {rate:>10,.0f} {rate / base_rate:>11.2f}x")
    out = ROOT / "bench" / "results" / f"pipeline-{dt.datetime.now():%Y%m%dT%H%M%S}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": sys.version.split()[0],
                "events": N,
                "batch": BATCH,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
