"""Raw records and payloads for the validation path's pure-function tests: a recipient of the
social register, a record as the worker reads it from Kafka, signed by its agency."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from simpul import dbmigrate
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import SchemaStore, register_all
from simpul.topology.model import Topology
from streams.ingest.pipeline import RawRecord
from tests.support.signing import sign
from tests.support.stack import SCHEMAS_DIR

NOW = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)


def sqlite_catalog(directory: Path, topology: Topology) -> EventCatalog:
    """An event catalogue over a fresh SQLite registry holding the repository's schemas."""
    url = f"sqlite:///{directory / 'registry.db'}"
    dbmigrate.upgrade(url)
    store = SchemaStore(make_engine(url))
    register_all(store, topology, SCHEMAS_DIR)
    return EventCatalog(topology, SchemaResolver(store))


def recipient(**changes: object) -> dict[str, object]:
    payload = {
        "nik": "7271054507910003",
        "programs": ["PKH", "BPNT"],
        "disability_category": None,
        "kelurahan_code": "7271051001",
        "status": "ACTIVE",
        "updated_at": NOW,
    }
    payload.update(changes)
    return payload


def record(
    catalog: EventCatalog,
    payload: dict[str, object],
    *,
    source: str = "dinsos",
    type_name: str = "social.recipient.updated",
    key: str | None = None,
    offset: int = 0,
    ce_id: str | None = None,
) -> RawRecord:
    schema = catalog.latest_schema(type_name)
    envelope = Envelope(
        type=type_name, source=f"/agency/{source}", time=NOW, **({"id": ce_id} if ce_id else {})
    )
    rec = RawRecord(
        topic=f"simpul.in.{type_name}",
        partition=0,
        offset=offset,
        key=(key or str(payload["nik"])).encode(),
        value=schema.encode(payload),
        headers=envelope.to_headers(),
        timestamp=NOW.timestamp(),
    )
    return signed(rec, source) if source in AGENCIES_WITH_KEYS else rec


AGENCIES_WITH_KEYS = {"dinsos", "dpmptsp", "kel-ujuna", "kominfo"}


def signed(rec: RawRecord, owner: str) -> RawRecord:
    return dataclasses.replace(rec, headers=sign(owner, rec.headers, rec.key, rec.value))
