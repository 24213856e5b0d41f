"""Joins with real parts: embedded broker, worker and joins processes, PostgreSQL store."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from simpul.citydata import make_nik, make_nip
from simpul.cli.services.broker import Broker
from simpul.identifiers import mask_identifiers
from simpul.publisher import PublisherPool
from streams.joins.state import derived_id
from tests.support.joins import JoinsProcess, assessment, employee, now, recipient
from tests.support.paths import REPO_ROOT
from tests.support.processes import wait_until
from tests.support.stack import TOPOLOGY_FILE, Stack, make_stack
from tests.support.topics import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHORT_WAIT_S = 5  # the allowance and SKTM joins: expiry is tested
LONG_WAIT_S = 300  # the deceased join: a restart happens while a death waits
RNG = random.Random(7271)


@pytest.fixture(scope="module")
def stack(broker: Broker, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("joins")
    raw = yaml.safe_load(TOPOLOGY_FILE.read_text())
    for join in raw["joins"]:
        join["wait_s"] = LONG_WAIT_S if join["name"] == "recipient-deceased" else SHORT_WAIT_S
    topology_file = workdir / "palu.yaml"
    topology_file.write_text(yaml.safe_dump(raw))
    stack = make_stack(broker, pg_url, workdir, topology_file)
    stack.start_worker()
    yield stack
    if stack.worker is not None:
        stack.stop_worker()


@pytest.fixture(scope="module")
def joins(stack: Stack) -> Iterator[JoinsProcess]:
    process = JoinsProcess(stack)
    process.start()
    yield process
    if process.process is not None:
        process.stop()


@pytest.fixture(scope="module")
def publish(stack: Stack) -> Iterator[Any]:
    pool = PublisherPool(stack.settings, stack.catalog())

    def send(agency: str, type_name: str, payload: dict[str, Any], when: dt.datetime) -> str:
        ce_id = str(uuid.uuid4())
        pool(agency).publish(type_name, payload, id=ce_id, time=when).get(30)
        return ce_id

    yield send
    pool.close()


def letter(nik: str, document_type: str = "SKTM") -> dict[str, Any]:
    return {
        "document_number": f"470/{uuid.uuid4().hex[:6]}/1002/2026",
        "document_type": document_type,
        "kelurahan_code": "7271021002",
        "resident_nik": nik,
        "purpose": "Keringanan biaya sekolah",
        "issued_at": now(),
    }


def death(nik: str) -> dict[str, Any]:
    return {
        "nik": nik,
        "date_of_death": dt.date(2026, 11, 20),
        "kelurahan_code": "7271021002",
        "certificate_number": f"7271-KM-{uuid.uuid4().hex[:6]}",
    }


def derived(stack: Stack, type_name: str, field: str, value: str) -> list[dict[str, Any]]:
    """Derived events of a type in the central store's event_log, with ce_id and source."""
    with stack.store.engine.connect() as conn:
        rows = conn.execute(
            text("select ce_id, source, payload from event_log where type = :t"), {"t": type_name}
        ).all()
    found = []
    for ce_id, source, payload in rows:
        data = payload if isinstance(payload, dict) else json.loads(payload)
        if data.get(field) == value:
            found.append({"ce_id": ce_id, "source": source, **data})
    return found


def nip() -> str:
    return make_nip(RNG)


def nik() -> str:
    return make_nik(RNG, "727102")


@pytest.mark.smoke
def test_assessment_before_employee_is_joined_when_the_employee_arrives(
    stack: Stack, joins: JoinsProcess, publish: Any
) -> None:
    employee_nip, boss = nip(), nip()
    waits_before = joins.metric("simpul_join_waits_total", join="tpp-allowance-basis")
    left = publish("bkpsdm", "hr.performance.assessed", assessment(employee_nip, boss), now())
    wait_until(
        lambda: joins.metric("simpul_join_waits_total", join="tpp-allowance-basis") > waits_before,
        60,
        "the assessment waiting",
    )
    assert not derived(stack, "hr.allowance.basis", "nip", employee_nip)
    right = publish("bkpsdm", "hr.employee.updated", employee(employee_nip, "III/c", now()), now())

    rows = wait_until(
        lambda: derived(stack, "hr.allowance.basis", "nip", employee_nip), 60, "allowance basis"
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["grade"] == "III/c" and row["score"] == 110.5 and row["rating"] == "ABOVE"
    assert row["assessment_event_id"] == left and row["employee_event_id"] == right
    assert row["ce_id"] == derived_id("tpp-allowance-basis", left, right)
    assert row["source"] == "/agency/simpul"


def test_a_later_employee_update_is_used_by_the_next_assessment(
    stack: Stack, joins: JoinsProcess, publish: Any
) -> None:
    employee_nip, boss = nip(), nip()
    first = now()
    publish("bkpsdm", "hr.employee.updated", employee(employee_nip, "III/a", first), first)
    a1 = assessment(employee_nip, boss)
    publish("bkpsdm", "hr.performance.assessed", a1, now())
    wait_until(
        lambda: derived(stack, "hr.allowance.basis", "assessment_id", a1["assessment_id"]),
        60,
        "first basis",
    )
    later = first + dt.timedelta(minutes=5)
    update = publish("bkpsdm", "hr.employee.updated", employee(employee_nip, "III/b", later), later)
    state_topic = "simpul.join.tpp-allowance-basis.state"
    wait_until(
        lambda: any(
            ("ce_id", update.encode()) in m.headers
            for m in read_topic(stack.settings.kafka.bootstrap, state_topic, 500)
        ),
        60,
        "the update in the join's table",
    )
    a2 = assessment(employee_nip, boss)
    publish("bkpsdm", "hr.performance.assessed", a2, now())
    second = wait_until(
        lambda: derived(stack, "hr.allowance.basis", "assessment_id", a2["assessment_id"]),
        60,
        "second basis",
    )
    first_basis = derived(stack, "hr.allowance.basis", "assessment_id", a1["assessment_id"])
    assert first_basis[0]["grade"] == "III/a"
    assert second[0]["grade"] == "III/b" and second[0]["employee_event_id"] == update


def test_assessment_of_an_unknown_employee_is_dead_lettered_when_the_wait_runs_out(
    stack: Stack, joins: JoinsProcess, publish: Any
) -> None:
    unknown = nip()
    ce_id = publish("bkpsdm", "hr.performance.assessed", assessment(unknown, nip()), now())

    def letter_for_it() -> dict[str, str] | None:
        topic = "simpul.dlq.hr.performance.assessed"
        for m in read_topic(stack.settings.kafka.bootstrap, topic, 500):
            headers = {k: v.decode() for k, v in m.headers}
            if headers.get("ce_id") == ce_id:
                return {**headers, "key": m.key.decode()}
        return None

    letter_headers = wait_until(letter_for_it, 60, "join dead letter")
    assert letter_headers["simpul_dlq_stage"] == "join"
    assert letter_headers["simpul_dlq_code"] == "join.timeout"
    # The NIP is personal data: the reason carries it masked (issue 15).
    assert mask_identifiers(unknown) in letter_headers["simpul_dlq_reason"]
    assert unknown not in letter_headers["simpul_dlq_reason"]
    assert "hr.employee.updated" in letter_headers["simpul_dlq_reason"]
    assert letter_headers["key"] == unknown
    assert not derived(stack, "hr.allowance.basis", "nip", unknown)
    assert joins.metric("simpul_join_expired_total", join="tpp-allowance-basis") >= 1
    # The scorecard's source: the store's dead_letters table has it too, with its agency.
    with stack.store.engine.connect() as conn:
        row = conn.execute(
            text("select agency, stage, code, type from dead_letters where ce_id = :id"),
            {"id": ce_id},
        ).one()
    assert tuple(row) == ("bkpsdm", "join", "join.timeout", "hr.performance.assessed")


def test_sktm_for_a_non_recipient_requests_verification_and_for_an_active_one_does_not(
    stack: Stack, joins: JoinsProcess, publish: Any
) -> None:
    active, graduated, unknown, domisili = nik(), nik(), nik(), nik()
    office = "kel-ujuna"
    publish("dinsos", "social.recipient.updated", recipient(active, "ACTIVE", now()), now())
    publish("dinsos", "social.recipient.updated", recipient(graduated, "GRADUATED", now()), now())
    wait_until(
        lambda: (
            stack.store.state_row("recipients", active)
            and stack.store.state_row("recipients", graduated)
        ),
        60,
        "recipients stored",
    )
    for resident in (active, graduated, unknown):
        publish(office, "kelurahan.document.issued", letter(resident), now())
    publish(office, "kelurahan.document.issued", letter(domisili, "DOMISILI"), now())

    graduated_rows = wait_until(
        lambda: derived(stack, "social.verification.requested", "nik", graduated), 60, "graduated"
    )
    assert graduated_rows[0]["recipient_status"] == "GRADUATED"
    # No DTKS entry at all: decided when the wait runs out.
    unknown_rows = wait_until(
        lambda: derived(stack, "social.verification.requested", "nik", unknown), 60, "unknown"
    )
    assert unknown_rows[0]["recipient_status"] is None
    assert unknown_rows[0]["recipient_event_id"] is None
    assert not derived(stack, "social.verification.requested", "nik", active)
    assert not derived(stack, "social.verification.requested", "nik", domisili)


def test_a_waiting_death_survives_a_killed_joins_process(
    stack: Stack, joins: JoinsProcess, publish: Any
) -> None:
    deceased = nik()
    death_id = publish("dukcapil", "population.death.registered", death(deceased), now())
    wait_until(
        lambda: joins.metric("simpul_join_pending", join="recipient-deceased") >= 1,
        60,
        "the death waiting",
    )
    joins.stop(signal.SIGKILL)
    joins.start()  # rebuilds the waiting death from the changelog
    assert joins.health()["pending"] >= 1
    recipient_id = publish(
        "dinsos", "social.recipient.updated", recipient(deceased, "ACTIVE", now()), now()
    )
    rows = wait_until(
        lambda: derived(stack, "social.recipient.deceased", "nik", deceased), 60, "deceased"
    )
    assert len(rows) == 1
    assert rows[0]["death_event_id"] == death_id
    assert rows[0]["recipient_event_id"] == recipient_id
    assert rows[0]["programs"] == ["PKH", "PBI_JK"]
    assert rows[0]["date_of_death"] == "2026-11-20"


def test_joins_process_help_names_the_command(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simpul", "joins", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=stack.env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0 and "derived events" in result.stdout
