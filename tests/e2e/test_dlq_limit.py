"""The dead-letter limit on a live worker: an upstream outage pauses the type; a person
resumes it with `simpul dlq resume` once the cause is fixed, and nothing is lost."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from kafka import KafkaProducer

from simpul.cli.services.broker import EmbeddedBroker
from simpul.envelope import Envelope
from tests.support.paths import REPO_ROOT
from tests.support.permits import dead_letters
from tests.support.processes import wait_until
from tests.support.signing import sign
from tests.support.stack import Stack, make_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def limited_stack(
    broker: EmbeddedBroker, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A worker whose dead-letter limit pauses a type (small window for the test)."""
    stack = make_stack(broker, pg_url, tmp_path_factory.mktemp("limited"))
    stack.env.update(
        {
            "SIMPUL_DLQ_LIMIT_PAUSE": "true",
            "SIMPUL_DLQ_LIMIT_WINDOW": "50",
            "SIMPUL_DLQ_LIMIT_MIN_EVENTS": "20",
            "SIMPUL_DLQ_LIMIT_SHARE": "0.5",
        }
    )
    stack.start_worker()
    yield stack
    stack.stop()


def test_upstream_outage_pauses_the_type_and_resumes_by_command(limited_stack: Stack) -> None:
    """BKPSDM ships a new schema version before it is registered: every event carries an
    unknown schema id. The worker pauses hr.employee.updated instead of dead-lettering them
    all; once the schema is registered, `simpul dlq resume` stores every one."""
    import json
    import subprocess
    import sys

    from sqlalchemy import func, select
    from sqlalchemy import text as text_clause

    from simpul.codec import AvroSchema
    from simpul.db import make_engine
    from simpul.registry.store import schemas_table

    stack = limited_stack
    type_name = "hr.employee.updated"
    definition = json.loads((REPO_ROOT / "schemas" / f"{type_name}.v1.avsc").read_text())
    definition["fields"].append(
        {"name": "email", "type": ["null", "string"], "default": None, "doc": "Work e-mail."}
    )
    text = json.dumps(definition)
    # The id it will be given: far above every id in use, so the schemas the worker registers
    # meanwhile (subscribers' projections) cannot take it; the sequence is set just before.
    engine = make_engine(stack.settings.store.database_url)
    with engine.connect() as conn:
        next_id = (conn.scalar(select(func.max(schemas_table.c.id))) or 0) + 1000
    schema = AvroSchema.from_text(next_id, text)  # framed with the id it will be given
    ids = []
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap, acks="all")
    for n in range(120):
        nip = f"198507172010011{n + 1:03d}"  # born 1985-07-17, appointed 2010-01, male
        envelope = Envelope(type=type_name, source="/agency/bkpsdm")
        ids.append(envelope.id)
        payload = {
            "nip": nip,
            "name": f"Pegawai Uji {n}",
            "unit_code": "BKPSDM.02",
            "position": "Analis Kepegawaian",
            "grade": "III/c",
            "status": "ACTIVE",
            "updated_at": dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
            "email": None,
        }
        value = schema.encode(payload)
        producer.send(
            f"simpul.in.{type_name}",
            key=nip.encode(),
            value=value,
            headers=sign("bkpsdm", envelope.to_headers(), nip.encode(), value),  # authentic
        )
    producer.flush()
    producer.close()

    def paused() -> bool:
        return f'simpul_type_paused{{type="{type_name}"}} 1.0' in stack.metrics()

    wait_until(paused, 60, f"{type_name} paused")
    letters = [d for d in dead_letters(stack, type_name) if d["headers"].get("ce_id") in set(ids)]  # type: ignore[union-attr]
    assert len(letters) <= 50, f"{len(letters)} dead-lettered before the pause"
    assert 'simpul_dlq_limit_exceeded{type="hr.employee.updated"} 1.0' in stack.metrics()
    assert stack.health()["status"] == "ok"

    with engine.begin() as conn:
        conn.execute(
            text_clause("SELECT setval(pg_get_serial_sequence(:table, 'id'), :last)"),
            {"table": schemas_table.name, "last": next_id - 1},
        )
    with stack.registry_client() as client:
        assert client.register(f"simpul.in.{type_name}-value", text) == next_id
    resumed = subprocess.run(
        [sys.executable, "-m", "simpul", "dlq", "resume", type_name],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed {type_name}" in resumed.stdout
    dead = {d["headers"].get("ce_id") for d in letters}  # type: ignore[union-attr]

    def stored_the_rest() -> bool:
        return set(ids) - dead <= stack.store.event_ids(type_name)

    wait_until(stored_the_rest, 60, "the paused events stored after the resume")
    assert f'simpul_type_paused{{type="{type_name}"}} 0.0' in stack.metrics()
    again = subprocess.run(
        [sys.executable, "-m", "simpul", "dlq", "resume", type_name],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "is not paused" in again.stdout
