"""The central store is idempotent and keeps the newest state, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from simpul import dbmigrate
from simpul.cli.db import central_store_metadata
from simpul.db import make_engine
from sinks.central_store import CentralStore, StoredEvent, newest_per_key

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def employee_event(nip: str, at: dt.datetime, grade: str, ce_id: str | None = None) -> StoredEvent:
    return StoredEvent(
        ce_id=ce_id or str(uuid.uuid4()),
        type="hr.employee.updated",
        entity="employees",
        source="/agency/bkpsdm",
        key=nip,
        event_time=at,
        schema_id=1,
        payload={
            "nip": nip,
            "name": "Nur Lamasitudju",
            "unit_code": "5.01.01",
            "position": "Analis Kepegawaian",
            "grade": grade,
            "status": "ACTIVE",
            "updated_at": at,
        },
        published_at=at,
        received_at=at,
    )


NIP = "198503122010011001"


def test_duplicate_ce_id_is_stored_once(store_url: str) -> None:
    store = CentralStore(make_engine(store_url))
    event = employee_event(NIP, T0, "III/a")
    first = store.write([event, event])
    second = store.write([event])
    assert (len(first.inserted), len(first.duplicates)) == (1, 1)
    assert (len(second.inserted), len(second.duplicates)) == (0, 1)
    assert store.counts_by_type() == {"hr.employee.updated": 1}


def test_older_update_does_not_overwrite_newer(store_url: str) -> None:
    store = CentralStore(make_engine(store_url))
    newer = employee_event(NIP, T0 + dt.timedelta(hours=1), "III/b")
    older = employee_event(NIP, T0, "III/a")
    store.write([newer])
    store.write([older])
    row = store.state_row("employees", NIP)
    assert row is not None and row["grade"] == "III/b" and row["ce_id"] == newer.ce_id
    assert store.counts_by_type() == {"hr.employee.updated": 2}  # both are in the log


def test_state_is_the_same_whatever_the_arrival_order(store_url: str) -> None:
    store = CentralStore(make_engine(store_url))
    events = [employee_event(NIP, T0 + dt.timedelta(minutes=m), f"g{m}") for m in (3, 1, 4, 2)]
    tie = employee_event(NIP, T0 + dt.timedelta(minutes=4), "tie", ce_id="zzzz")
    store.write(events[:2])
    store.write([tie, *events[2:]])
    row = store.state_row("employees", NIP)
    assert row is not None and row["grade"] == "tie"  # equal time: the larger ce_id wins
    assert newest_per_key([*events, tie], "nip") == [tie]


def test_bad_row_is_isolated_and_the_rest_written(store_url: str) -> None:
    store = CentralStore(make_engine(store_url))
    good = employee_event(NIP, T0, "III/a")
    bad = employee_event("198503122010011002", T0, "III/a")
    bad.payload["name"] = None  # violates NOT NULL on both backends
    result = store.write_isolating_bad_rows([good, bad])
    assert [e.ce_id for e in result.inserted] == [good.ce_id]
    assert [e.ce_id for e, _ in result.rejected] == [bad.ce_id]
    assert result.rejected[0][1].startswith("(store):")
    assert store.event_ids() == {good.ce_id}


def test_migrations_match_the_models(store_url: str) -> None:
    engine = make_engine(store_url)
    assert dbmigrate.current(store_url) == dbmigrate.head()
    assert dbmigrate.upgrade(store_url) == dbmigrate.head()  # running it again is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), central_store_metadata())
    assert diff == []
