"""`simpul staff reconcile`: staff whose local SIMPEG record differs from BKN's, field by field,
read from the central store on both backends."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simpul.citydata import CityData
from simpul.cli.main import app
from simpul.db import make_engine
from simpul.settings import get_settings
from simpul.topology.model import load_topology
from sinks.central_store import CentralStore, StoredEvent
from sinks.reports.staff_reconciliation import Difference, reconcile
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """The CLI caches its settings per process; these tests set SIMPUL_* for each invocation."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)
KUPANG = REPO_ROOT / "topology" / "kupang.yaml"


def _event(source: str, record: dict[str, object], at: dt.datetime) -> StoredEvent:
    return StoredEvent(
        ce_id=str(uuid.uuid4()),
        type="hr.employee.updated",
        entity="employees",
        source=f"/agency/{source}",
        key=str(record["nip"]),
        event_time=at,
        schema_id=1,
        payload=record,
        published_at=at,
        received_at=at,
    )


def _load(url: str) -> list:  # type: ignore[type-arg]
    kupang = load_topology(KUPANG)
    staff = CityData(kupang, seed=5371, residents_count=10, employees_count=6).employees
    events = []
    for i, e in enumerate(staff):
        record = {
            "nip": e.nip,
            "name": e.name,
            "unit_code": e.unit_code,
            "position": "Analis Kepegawaian",
            "grade": "III/b",
            "status": "ACTIVE",
            "updated_at": (T0 + dt.timedelta(minutes=i)).isoformat(),
        }
        if i < 5:  # the sixth is not in SIMPEG yet
            events.append(_event("bkpp", record, T0 + dt.timedelta(minutes=i)))
        national = dict(record)
        if i == 1:
            national["grade"] = "III/c"  # promoted at BKN, not yet in SIMPEG
        if i == 2:
            national |= {"position": "Kepala Seksi", "status": "ON_LEAVE"}
        if i == 3:
            national["position"] = "analis  KEPEGAWAIAN"  # spacing and case only: the same
        if i != 4:  # the fifth is not in BKN's register
            events.append(_event("bkn", national, T0 + dt.timedelta(hours=1, minutes=i)))
    # An older SIMPEG record of the second employee does not count: the newest one does.
    events.append(_event("bkpp", {**events[1].payload, "grade": "II/a"}, T0 - dt.timedelta(days=9)))
    CentralStore(make_engine(url)).write(events)
    return staff


def test_reconcile_lists_each_field_that_differs(store_url: str) -> None:
    staff = _load(store_url)
    report = reconcile(make_engine(store_url), "bkpp", "bkn")
    assert report.compared == 4
    assert report.matching == 2
    assert report.differences == [
        Difference(staff[1].nip, "grade", "III/b", "III/c"),
        Difference(staff[2].nip, "position", "Analis Kepegawaian", "Kepala Seksi"),
        Difference(staff[2].nip, "status", "ACTIVE", "ON_LEAVE"),
    ]
    assert report.only_local == [staff[4].nip]
    assert report.only_national == [staff[5].nip]
    assert "4 staff in both registers: 2 match, 2 differ (3 fields)" in report.summary()


def test_cli_masks_nip_and_names_unless_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    from simpul import dbmigrate

    dbmigrate.upgrade(url)
    staff = _load(url)
    env = {"SIMPUL_DATABASE_URL": url, "SIMPUL_TOPOLOGY_FILE": str(KUPANG)}
    runner = CliRunner()
    result = runner.invoke(app, ["staff", "reconcile", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["local"], data["national"]) == ("bkpp", "bkn")
    assert len(data["differences"]) == 3
    assert all(e.nip not in result.output for e in staff)
    assert data["differences"][0]["nip"].startswith(staff[1].nip[:4])
    full = runner.invoke(app, ["staff", "reconcile", "--json", "--show-personal"], env=env)
    assert staff[1].nip in full.output
    table = runner.invoke(app, ["staff", "reconcile"], env=env)
    assert "2 differ (3 fields)" in table.output
    wrong = runner.invoke(app, ["staff", "reconcile", "--national", "dinsos"], env=env)
    assert wrong.exit_code == 2 and "does not produce hr.employee.updated" in wrong.output
