"""The ``rest`` connector kind against a fake BKN register served over real HTTP: pages, the
changed-since cursor (inclusive, ties broken by NIP), resume from the stored position."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from connectors.base import BatchOutcome, ConnectorContext, resolve_kind
from connectors.kinds.rest import RestSourceConnector
from simpul import dbmigrate
from simpul.citydata import CityData
from simpul.db import make_engine
from simpul.settings import Settings
from simpul.topology.connectors import ConnectorConfigError, ConnectorSpec
from simpul.topology.model import load_topology
from tests.support.fake_bkn import BKN_MAPPING, FakeBkn, bkn_record
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)


def _spec(url: str, **extra: object) -> ConnectorSpec:
    return ConnectorSpec.model_validate(
        {
            "name": "siasn-bkn-pns",
            "connector.class": "rest",
            "event.type": "hr.employee.updated",
            "agency": "bkpp",
            "url": url,
            "page.size": 3,
            "cursor.field": "tglPerubahan",
            "id.field": "nipBaru",
            "field.mapping": BKN_MAPPING,
            **extra,
        }
    )


def _connector(tmp_path: Path, spec: ConnectorSpec) -> RestSourceConnector:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    cls, options = resolve_kind(spec, "connectors.0")
    assert cls is RestSourceConnector
    connector = RestSourceConnector(spec, options, ConnectorContext(Settings(), make_engine(url)))
    connector.start()
    return connector


@pytest.fixture(scope="module")
def employees() -> list:  # type: ignore[type-arg]
    kupang = load_topology(REPO_ROOT / "topology" / "kupang.yaml")
    return CityData(kupang, seed=53, residents_count=10, employees_count=20).employees


def test_reads_every_page_oldest_first_then_only_what_changed(tmp_path: Path, employees) -> None:  # type: ignore[no-untyped-def]
    with FakeBkn() as bkn:
        for i, employee in enumerate(employees[:7]):
            bkn.add(bkn_record(employee, T0 + dt.timedelta(minutes=i // 2)))  # ties in pairs
        connector = _connector(tmp_path, _spec(bkn.url))
        first = connector.poll()
        assert [r.data["nipBaru"] for r in first] == sorted(
            [e.nip for e in employees[:7]],
            key=lambda nip: (next(i for i, e in enumerate(employees) if e.nip == nip) // 2, nip),
        )
        assert [q["page"] for q in bkn.requests] == [["1"], ["2"], ["3"]]  # 3 + 3 + 1
        connector.commit(BatchOutcome(done=list(first), published=list(first)))
        assert connector.poll() == []  # the cursor is inclusive, but nothing is new
        assert bkn.requests[-1]["updated_since"] == [first[-1].data["tglPerubahan"]]
        # A change at the same second as the cursor, with a higher NIP, is not lost.
        last = first[-1].data
        tie = bkn_record(employees[19], dt.datetime.fromisoformat(last["tglPerubahan"]))
        changed = bkn_record(employees[0], T0 + dt.timedelta(hours=2), golRuangAkhir="III/c")
        bkn.add(changed)
        bkn.add(tie)
        again = [r.data["nipBaru"] for r in connector.poll()]
        expected_tie = [tie["nipBaru"]] if tie["nipBaru"] > last["nipBaru"] else []
        assert again == [*expected_tie, employees[0].nip]
        connector.stop()


def test_a_restarted_connector_resumes_from_the_stored_cursor(tmp_path: Path, employees) -> None:  # type: ignore[no-untyped-def]
    with FakeBkn() as bkn:
        for i, employee in enumerate(employees[:4]):
            bkn.add(bkn_record(employee, T0 + dt.timedelta(minutes=i)))
        connector = _connector(tmp_path, _spec(bkn.url))
        batch = connector.poll()
        connector.commit(BatchOutcome(done=batch[:2], published=batch[:2]))
        connector.stop()
        restarted = _connector(tmp_path, _spec(bkn.url))
        assert restarted.position() == {
            "since": (T0 + dt.timedelta(minutes=1)).isoformat(),
            "id": employees[1].nip,
        }
        assert [r.data["nipBaru"] for r in restarted.poll()] == [e.nip for e in employees[2:4]]
        # identities (hence ce_ids) are the same on a re-read
        assert restarted.poll()[0].identity == batch[2].identity
        restarted.stop()


def test_an_unreadable_item_is_reported_once(tmp_path: Path, employees) -> None:  # type: ignore[no-untyped-def]
    with FakeBkn() as bkn:
        bkn.add(bkn_record(employees[0], T0))
        bkn.records.append({**bkn_record(employees[1], T0), "tglPerubahan": "kemarin"})
        connector = _connector(tmp_path, _spec(bkn.url))
        records = connector.poll()
        problems = [r.problem for r in records if r.problem]
        assert problems == ["page 1 item 2: tglPerubahan is not an ISO 8601 time"]
        assert [r.problem for r in connector.poll() if r.problem] == []
        connector.stop()


def test_the_token_comes_from_the_environment(tmp_path: Path, employees, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with FakeBkn(token="rahasia-uji-123") as bkn:
        bkn.add(bkn_record(employees[0], T0))
        spec = _spec(bkn.url, **{"auth.token.env": "SIMPUL_TEST_BKN_TOKEN"})
        with pytest.raises(ValueError, match=r"auth\.token\.env: environment variable"):
            _connector(tmp_path, spec)
        monkeypatch.setenv("SIMPUL_TEST_BKN_TOKEN", "salah")
        wrong = _connector(tmp_path, spec)
        with pytest.raises(ValueError, match="answered 401 on page 1"):
            wrong.poll()
        monkeypatch.setenv("SIMPUL_TEST_BKN_TOKEN", "rahasia-uji-123")
        right = _connector(tmp_path, spec)
        assert len(right.poll()) == 1


def test_options_are_checked_naming_the_key() -> None:
    with pytest.raises(ConnectorConfigError, match=r"connectors\.0\.url"):
        resolve_kind(_spec("ftp://bkn.go.id"), "connectors.0")
    with pytest.raises(ConnectorConfigError, match=r"connectors\.0\.page\.size"):
        resolve_kind(_spec("https://apimws.bkn.go.id/pns", **{"page.size": 0}), "connectors.0")
