"""BKD's payroll basis: the TPP basis carries the salary account reference (masked when
delivered), and `simpul payroll control` totals it per unit for the month."""

from __future__ import annotations

import csv
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simpul.cli.main import app
from simpul.db import make_engine
from simpul.settings import get_settings
from simpul.topology.model import Topology, load_topology
from sinks.central_store import CentralStore, StoredEvent
from sinks.reports.payroll import HASH_MODULUS, PayrollError, account_number, payroll_control
from streams.fanout.plan import SubscriptionPlan
from streams.joins.state import Effects, JoinPartition
from tests.support.join_events import assessment, employee, logic
from tests.support.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """The CLI caches its settings per process; these tests set SIMPUL_* for each invocation."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


KUPANG = REPO_ROOT / "topology" / "kupang.yaml"
T0 = dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def kupang() -> Topology:
    return load_topology(KUPANG)


@pytest.mark.unit
def test_the_tpp_basis_carries_the_employees_salary_account(kupang: Topology) -> None:
    join, state, effects = logic(kupang, "tpp-allowance-basis"), JoinPartition(), Effects()
    right = employee("III/b")
    right.payload["bank_account_ref"] = "BPD53-0012345678"
    join.on_right(state, right, effects)
    join.on_left(state, assessment(), effects)
    (out,) = effects.derived
    assert out.payload["bank_account_ref"] == "BPD53-0012345678"
    # BKD receives it masked: bank and the last four digits only.
    (route,) = SubscriptionPlan.build(kupang, REPO_ROOT / "schemas").routes_for(
        "hr.allowance.basis"
    )
    masks = route.subscription.masks()
    assert "bank_account_ref" in masks and masks["bank_account_ref"].keep_last == 4


def _basis(nip: str, unit: str, grade: str, rating: str, ref: str | None, period: str) -> dict:  # type: ignore[type-arg]
    return {
        "assessment_id": f"EKIN-{period}-{nip[-6:]}",
        "nip": nip,
        "period": period,
        "rating": rating,
        "score": 90.0,
        "name": "Yohana Ndolu",
        "unit_code": unit,
        "position": "Analis Keuangan",
        "grade": grade,
        "employment_status": "ACTIVE",
        "assessment_event_id": str(uuid.uuid4()),
        "employee_event_id": str(uuid.uuid4()),
        "bank_account_ref": ref,
    }


def _stored(type_name: str, source: str, payload: dict, at: dt.datetime) -> StoredEvent:  # type: ignore[type-arg]
    return StoredEvent(
        ce_id=str(uuid.uuid4()),
        type=type_name,
        entity=None if type_name == "hr.allowance.basis" else "employees",
        source=f"/agency/{source}",
        key=payload["nip"],
        event_time=at,
        schema_id=1,
        payload=payload,
        published_at=at,
        received_at=at,
    )


def _employee(nip: str, ref: str | None) -> dict:  # type: ignore[type-arg]
    return {
        "nip": nip,
        "name": "Maria Ndolu",
        "unit_code": "1.02.01",
        "position": "Dokter Ahli Madya",
        "grade": "IV/a",
        "status": "ACTIVE",
        "updated_at": T0.isoformat(),
        "bank_account_ref": ref,
    }


# Generated civil servants of Kota Kupang (NIP: birth, appointment, sex, serial).
A, B, C, D = (
    "198703142010012001",
    "199001022015031004",
    "198511302009022002",
    "197912252005011003",
)


def _load(url: str) -> None:
    events = [
        _stored(
            "hr.allowance.basis",
            "simpul",
            _basis(A, "5.02.01", "III/b", "AS_EXPECTED", "BPD53-0000001001", "2026-11"),
            T0,
        ),
        _stored(
            "hr.allowance.basis",
            "simpul",
            _basis(B, "5.02.01", "III/a", "BELOW", "BPD53-0000002002", "2026-11"),
            T0,
        ),
        # C's basis has no account (the latest master record was BKN's), SIMPEG's older one has.
        _stored(
            "hr.allowance.basis",
            "simpul",
            _basis(C, "1.02.01", "IV/a", "ABOVE", None, "2026-11"),
            T0,
        ),
        _stored(
            "hr.employee.updated",
            "bkpp",
            _employee(C, "BPD53-0000003003"),
            T0 - dt.timedelta(days=40),
        ),
        _stored(
            "hr.employee.updated",
            "bkn",
            _employee(C, None),
            T0 - dt.timedelta(days=1),
        ),
        # D has no account anywhere and a rank the policy does not pay: not payable.
        _stored(
            "hr.allowance.basis",
            "simpul",
            _basis(D, "1.02.01", "IV/e", "AS_EXPECTED", None, "2026-11"),
            T0,
        ),
        # An earlier assessment of A for the month is replaced by the later one; October is apart.
        _stored(
            "hr.allowance.basis",
            "simpul",
            _basis(A, "5.02.01", "III/b", "BELOW", "BPD53-0000001001", "2026-11"),
            T0 - dt.timedelta(hours=5),
        ),
        _stored(
            "hr.allowance.basis",
            "simpul",
            _basis(A, "5.02.01", "III/b", "ABOVE", "BPD53-0000001001", "2026-10"),
            T0,
        ),
    ]
    CentralStore(make_engine(url)).write(events)


@pytest.mark.integration
def test_control_totals_per_unit(store_url: str, kupang: Topology) -> None:
    _load(store_url)
    report = payroll_control(make_engine(store_url), kupang, "2026-11")
    units = {u.unit_code: u for u in report.units}
    bkd, dinkes = units["5.02.01"], units["1.02.01"]
    assert (bkd.staff, bkd.payable, bkd.amount) == (2, 2, 2_700_000 + round(2_500_000 * 0.7))
    assert bkd.account_hash_total == (1001 + 2002) % HASH_MODULUS
    assert (dinkes.staff, dinkes.payable, dinkes.amount) == (2, 1, 4_000_000)
    assert dinkes.account_hash_total == 3003
    assert (dinkes.no_account, dinkes.no_amount) == (1, 1)
    assert report.total_amount == 2_700_000 + 1_750_000 + 4_000_000


@pytest.mark.unit
def test_bad_period_and_missing_policy_are_explained(kupang: Topology) -> None:
    engine = make_engine("sqlite://")
    with pytest.raises(PayrollError, match="expected YYYY-MM"):
        payroll_control(engine, kupang, "2026-13")
    palu = load_topology(REPO_ROOT / "topology" / "palu.yaml")
    with pytest.raises(PayrollError, match="declares no TPP policy"):
        payroll_control(engine, palu, "2026-11")
    assert account_number("BPD53-0012345678") == 12345678


@pytest.mark.integration
def test_cli_prints_and_writes_the_control_totals(tmp_path: Path) -> None:
    from simpul import dbmigrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    _load(url)
    env = {"SIMPUL_DATABASE_URL": url, "SIMPUL_TOPOLOGY_FILE": str(KUPANG)}
    out = tmp_path / "tpp-2026-11.csv"
    runner = CliRunner()
    result = runner.invoke(
        app, ["payroll", "control", "--period", "2026-11", "--json", "--out", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["total_amount"] == 8_450_000
    rows = list(csv.DictReader(out.open()))
    assert [(r["unit_code"], r["amount"]) for r in rows] == [
        ("1.02.01", "4000000"),
        ("5.02.01", "4450000"),
    ]
    table = runner.invoke(app, ["payroll", "control", "--period", "2026-11"], env=env)
    assert "4 staff, Rp 8.450.000 payable in 2 units" in table.output
    assert A not in table.output  # totals only, no NIP
