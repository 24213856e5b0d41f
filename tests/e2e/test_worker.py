"""The whole path with real parts: embedded broker, worker process, PostgreSQL central store."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid

import pytest

from simpul.codec import frame
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.errors import PayloadError
from simpul.registry.store import SchemaStore
from tests.support.paths import REPO_ROOT
from tests.support.permits import dead_letter_for, now, number, permit, publisher, stored
from tests.support.processes import wait_until
from tests.support.signing import auth
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.smoke
def test_published_event_is_stored_with_current_state(pg_stack: Stack) -> None:
    ce_id = str(uuid.uuid4())
    payload = permit(number())
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.publish("permit.issued", payload, id=ce_id)
    wait_until(lambda: stored(pg_stack, ce_id), 60, "event in event_log")
    row = pg_stack.store.state_row("permits", str(payload["permit_number"]))
    assert row is not None
    assert row["applicant_nik"] == payload["applicant_nik"] and row["ce_id"] == ce_id
    assert row["valid_until"] == dt.date(2031, 1, 31)


@pytest.mark.smoke
def test_same_ce_id_twice_is_stored_once(pg_stack: Stack) -> None:
    ce_id = str(uuid.uuid4())
    payload = permit(number())
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.publish("permit.issued", payload, id=ce_id)
        pub.publish("permit.issued", payload, id=ce_id)
        marker = str(uuid.uuid4())
        pub.publish("permit.issued", permit(str(payload["permit_number"])), id=marker)
    wait_until(lambda: stored(pg_stack, marker), 60, "marker stored")
    ids = pg_stack.store.event_ids("permit.issued")
    assert ce_id in ids
    with make_engine(pg_stack.settings.store.database_url).connect() as conn:
        from sqlalchemy import text

        count = conn.scalar(text("select count(*) from event_log where ce_id = :id"), {"id": ce_id})
    assert count == 1
    assert 'simpul_duplicates_dropped_total{stage="dedup",type="permit.issued"}' in (
        pg_stack.metrics()
    )


def test_older_update_does_not_overwrite_newer(pg_stack: Stack) -> None:
    nip = "199001152015031002"
    base = {
        "nip": nip,
        "name": "Rahmat Tombolotutu",
        "unit_code": "2.18.01",
        "position": "Penata Perizinan",
        "status": "ACTIVE",
    }
    t_new, t_old = now(), now() - dt.timedelta(days=30)
    newer, older = str(uuid.uuid4()), str(uuid.uuid4())
    with publisher(pg_stack, "bkpsdm") as pub:
        pub.publish(
            "hr.employee.updated",
            {**base, "grade": "III/c", "updated_at": t_new},
            id=newer,
            time=t_new,
        )
        pub.publish(
            "hr.employee.updated",
            {**base, "grade": "III/a", "updated_at": t_old},
            id=older,
            time=t_old,
        )
    wait_until(lambda: stored(pg_stack, newer) and stored(pg_stack, older), 60, "both stored")
    row = pg_stack.store.state_row("employees", nip)
    assert row is not None and row["grade"] == "III/c" and row["ce_id"] == newer


@pytest.mark.smoke
def test_invalid_nik_is_dead_lettered_and_the_next_event_stored(pg_stack: Stack) -> None:
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.publish(
            "permit.issued", permit(number(), nik="727101520388000"), id=bad, validate=False
        )
        pub.publish("permit.issued", permit(number()), id=good)
    wait_until(lambda: stored(pg_stack, good), 60, "valid event after poison")
    letter = dead_letter_for(pg_stack, "permit.issued", bad)
    headers = letter["headers"]
    assert headers["simpul_dlq_reason"] == "applicant_nik: expected 16 digits, got 15"  # type: ignore[index]
    assert headers["simpul_dlq_stage"] == "validate"  # type: ignore[index]
    assert not stored(pg_stack, bad)


def test_agency_not_allowed_is_dead_lettered(pg_stack: Stack) -> None:
    ce_id = str(uuid.uuid4())
    with publisher(pg_stack, "dinsos") as pub:
        pub.publish("permit.issued", permit(number()), id=ce_id, validate=False)
    letter = dead_letter_for(pg_stack, "permit.issued", ce_id)
    assert letter["headers"]["simpul_dlq_stage"] == "authorize"  # type: ignore[index]
    assert letter["headers"]["simpul_dlq_reason"] == (  # type: ignore[index]
        "ce_source: agency dinsos may not produce permit.issued"
    )


def test_undecodable_bytes_are_dead_lettered_with_original_bytes(pg_stack: Stack) -> None:
    envelope = Envelope(type="permit.issued", source="/agency/dpmptsp")
    schema_id = pg_stack.catalog().latest_schema("permit.issued").id
    value = frame(schema_id, b"\xff\xfe not avro at all")
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.send_signed("simpul.in.permit.issued", b"503/x", value, envelope.to_headers())
    letter = dead_letter_for(pg_stack, "permit.issued", envelope.id)
    assert letter["value"] == value and letter["key"] == b"503/x"
    assert letter["headers"]["simpul_dlq_stage"] == "decode"  # type: ignore[index]
    assert letter["headers"]["ce_source"] == "/agency/dpmptsp"  # type: ignore[index]


def test_publisher_refuses_invalid_payload_locally(pg_stack: Stack) -> None:
    with publisher(pg_stack, "dpmptsp") as pub:
        with pytest.raises(PayloadError) as caught:
            pub.publish("permit.issued", {**permit(number()), "nib": "123", "score": 1})
        assert "nib: expected 13 digits, got 3" not in caught.value.problems  # Avro first
        assert "score: not a field of PermitIssued" in caught.value.problems
        with pytest.raises(PayloadError) as ids:
            pub.publish("permit.issued", {**permit(number()), "nib": "123"})
        assert ids.value.problems == ["nib: expected 13 digits, got 3"]
        with pytest.raises(PayloadError) as types:
            pub.publish("permit.issued", {**permit(number()), "issued_at": "today"})
        assert any(p.startswith("issued_at:") for p in types.value.problems)
        with pytest.raises(PermissionError, match="dpmptsp may not produce"):
            pub.publish("social.recipient.updated", {})


def test_replay_after_a_fix_stores_the_event(pg_stack: Stack) -> None:
    """A schema version used before it was registered dead-letters; after registering, replay."""
    definition = json.loads((REPO_ROOT / "schemas" / "permit.issued.v1.avsc").read_text())
    definition["fields"].append(
        {
            "name": "fee_idr",
            "type": ["null", "long"],
            "default": None,
            "doc": "Retribution paid, in rupiah.",
        }
    )
    from simpul.codec import AvroSchema

    text = json.dumps(definition)
    registry = SchemaStore(make_engine(pg_stack.settings.store.database_url))
    next_id = max(registry.subject_ids("simpul.in.permit.issued-value")) + 100
    v2 = AvroSchema.from_text(next_id, text)
    payload = {**permit(number()), "fee_idr": 250_000}
    envelope = Envelope(type="permit.issued", source="/agency/dpmptsp")
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.send_signed(
            "simpul.in.permit.issued",
            str(payload["permit_number"]).encode(),
            v2.encode(payload),
            envelope.to_headers(),
        )
    letter = dead_letter_for(pg_stack, "permit.issued", envelope.id)
    assert letter["headers"]["simpul_dlq_reason"] == (  # type: ignore[index]
        f"value: schema id {next_id} is not registered"
    )
    # The fix: register the new version under the id the agency used (as a registry would).
    from sqlalchemy import insert

    from simpul.codec import normalize
    from simpul.registry.store import fingerprint, schemas_table, subject_versions_table

    with registry.engine.begin() as conn:
        conn.execute(
            insert(schemas_table).values(
                id=next_id, fingerprint=fingerprint(text), schema=normalize(text)
            )
        )
        conn.execute(
            insert(subject_versions_table).values(
                subject="simpul.in.permit.issued-value", version=2, schema_id=next_id, deleted=False
            )
        )
    listing = subprocess.run(
        [sys.executable, "-m", "simpul", "dlq", "list", "permit.issued", "--json"],
        env=pg_stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {"ce_id": envelope.id, "stage": "decode", "code": "schema.unknown_id"}.items() <= next(
        item for item in listed if item["ce_id"] == envelope.id
    ).items()
    replay = subprocess.run(
        [sys.executable, "-m", "simpul", "dlq", "replay", "permit.issued", "--ce-id", envelope.id],
        env=pg_stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "replayed 1 dead letters" in replay.stdout
    wait_until(lambda: stored(pg_stack, envelope.id), 60, "replayed event stored")
    row = pg_stack.store.state_row("permits", str(payload["permit_number"]))
    assert row is not None and row["ce_id"] == envelope.id


def test_metrics_and_health_are_served(pg_stack: Stack) -> None:
    text = pg_stack.metrics()
    for name in (
        "simpul_events_received_total",
        "simpul_events_valid_total",
        "simpul_events_dead_lettered_total",
        "simpul_store_batch_events_bucket",
        "simpul_store_batch_duration_seconds_bucket",
        "simpul_publish_to_store_latency_seconds_bucket",
        "simpul_consumer_lag_messages",
    ):
        assert name in text, name
    import urllib.request

    url = f"http://127.0.0.1:{pg_stack.settings.worker.web_port}/health"
    request = urllib.request.Request(url, headers=auth())
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["store"] == "up"
