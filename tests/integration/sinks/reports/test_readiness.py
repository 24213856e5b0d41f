"""`simpul readiness`: per agency connected or not, events/day, rejected share and reasons,
fields missing or malformed, freshness; and the weekly "N of M agencies connected"."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from simpul.cli.main import app
from simpul.db import make_engine
from simpul.settings import get_settings
from simpul.topology.model import load_topology
from sinks.central_store import CentralStore, StoredEvent
from sinks.dead_letters import dead_letters
from sinks.reports.readiness import build_readiness, field_problems, render_html
from tests.support.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """The CLI caches its settings per process; these tests set SIMPUL_* for each invocation."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


BATU = REPO_ROOT / "topology" / "batu.yaml"
# A Wednesday noon, so weeks start on the Monday before.
NOW = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)


def _event(source: str, at: dt.datetime) -> StoredEvent:
    payload = {"permit_number": str(uuid.uuid4())}
    return StoredEvent(
        ce_id=str(uuid.uuid4()),
        type="permit.issued",
        entity=None,  # event_log only: readiness reads nothing else
        source=f"/agency/{source}",
        key=payload["permit_number"],
        event_time=at,
        schema_id=1,
        payload=payload,
        published_at=at,
        received_at=at,
    )


def _dead(agency: str, code: str, reason: str, at: dt.datetime, offset: int) -> dict:  # type: ignore[type-arg]
    return {
        "topic": "simpul.in.permit.issued",
        "partition": 0,
        "offset": offset,
        "type": "permit.issued",
        "agency": agency,
        "stage": "validate",
        "code": code,
        "reason": reason,
        "ce_id": str(uuid.uuid4()),
        "dead_lettered_at": at,
    }


def _load(url: str) -> None:
    engine = make_engine(url)
    events = [_event("dpmptsp", NOW - dt.timedelta(hours=h)) for h in range(1, 15)]  # 14 in 7 d
    # desa-pandanrejo sent its monthly export once, 40 days ago: stale now (cadence 30d).
    events.append(_event("desa-pandanrejo", NOW - dt.timedelta(days=40)))
    events.append(_event("kel-sisir", NOW - dt.timedelta(days=2)))
    store = CentralStore(engine)
    # Stored_at is the store's clock; write, then set it to when each event "arrived".
    store.write(events)
    from sqlalchemy import update

    from sinks.central_store import event_log

    with engine.begin() as conn:
        for e in events:
            conn.execute(
                update(event_log).where(event_log.c.ce_id == e.ce_id).values(stored_at=e.event_time)
            )
        conn.execute(
            insert(dead_letters),
            [
                _dead("dpmptsp", "identifier.nib", "nib: expected 13 digits, got 12", NOW, 1),
                _dead("dpmptsp", "identifier.nib", "nib: expected 13 digits, got 11", NOW, 2),
                _dead(
                    "dpmptsp",
                    "schema.payload",
                    "kelurahan_code: missing; business_name: missing",
                    NOW,
                    3,
                ),
                _dead(
                    "dpmptsp",
                    "identifier.nib",
                    "nib: expected 13 digits",
                    NOW - dt.timedelta(days=9),
                    4,
                ),
            ],
        )


@pytest.mark.unit
def test_fields_are_counted_missing_apart_from_malformed() -> None:
    problems = field_problems(
        [
            "nib: expected 13 digits, got 12",
            "kelurahan_code: missing; nib: expected 13 digits",
            "ce_source: agency x may not produce y",
            "valid_until: is <None> of type <class 'NoneType'> must be int",
        ]
    )
    assert [(p.field, p.missing, p.malformed) for p in problems] == [
        ("nib", 0, 2),
        ("kelurahan_code", 1, 0),
        ("valid_until", 1, 0),
    ]


@pytest.mark.integration
def test_readiness_per_agency_and_weekly_history(store_url: str) -> None:
    _load(store_url)
    batu = load_topology(BATU)
    report = build_readiness(make_engine(store_url), batu, days=7, weeks=8, now=NOW)
    by_code = {a.code: a for a in report.agencies}
    ptsp = by_code["dpmptsp"]
    assert ptsp.connected and ptsp.events == 14 and ptsp.events_per_day == 2.0
    assert ptsp.rejected == 3 and ptsp.rejected_share == pytest.approx(3 / 17)
    assert ptsp.top_reasons == [("identifier.nib", 2), ("schema.payload", 1)]
    assert [(f.field, f.missing, f.malformed) for f in ptsp.fields][:1] == [("nib", 0, 2)]
    assert ptsp.freshness(NOW) == pytest.approx(1 / 1)  # an hour old, cadence 1h
    assert not by_code["dispendukcapil"].onboarded and by_code["dispendukcapil"].status == "never"
    assert by_code["desa-pandanrejo"].status == "stale"
    assert by_code["desa-pandanrejo"].freshness(NOW) == pytest.approx(40 / 30)
    # Week by week: the expected agencies are those that publish (PTSP, Dinsos, BKPSDM,
    # Dispendukcapil and the 24 kelurahan/desa offices).
    weeks = report.weeks
    assert len(weeks) == 8 and weeks[-1].week_start == dt.date(2026, 11, 23)
    expected = weeks[-1].expected
    # desa-pandanrejo's export of 16 Oct counts at the ends of the weeks from 12 Oct to
    # 2 Nov (within its 30 days); this week PTSP (an hour ago) and kel-sisir (2 days) count.
    assert [w.connected for w in weeks] == [0, 1, 1, 1, 1, 0, 0, 2]
    assert weeks[-1].label == f"2 of {expected} agencies connected"
    page = render_html(report)
    assert "identifier.nib (2)" in page and "not yet" in page


@pytest.mark.integration
def test_cli_readiness_json(tmp_path: Path) -> None:
    from simpul import dbmigrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    _load(url)
    env = {"SIMPUL_DATABASE_URL": url, "SIMPUL_TOPOLOGY_FILE": str(BATU)}
    result = CliRunner().invoke(app, ["readiness", "--json", "--weeks", "3"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["city"] == "Kota Batu" and len(data["weeks"]) == 3
    table = CliRunner().invoke(app, ["readiness"], env=env)
    assert "Data readiness: Kota Batu" in table.output
