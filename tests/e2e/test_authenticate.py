"""The worker authenticates first: forged, unsigned or tampered events never reach the store,
and Simpul's own headers cannot be supplied by a producer. Real broker, worker, PostgreSQL."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid

import pytest
from kafka import KafkaProducer
from sqlalchemy import text

from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.errors import PayloadError
from simpul.settings import Settings
from simpul.signing import create_key, load_signer, revoke_key
from tests.support.permits import dead_letter_for, number, permit, publisher, stored
from tests.support.processes import wait_until
from tests.support.signing import sign
from tests.support.stack import Stack
from tests.support.topics import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def deceased() -> dict[str, object]:
    return {
        "nik": "7271054507910003",
        "date_of_death": dt.date(2026, 11, 20),
        "kelurahan_code": "7271051001",
        "programs": ["PKH"],
        "certificate_number": "7271-KM-20112026-0001",
        "recipient_status": "ACTIVE",
        "death_event_id": str(uuid.uuid4()),
        "recipient_event_id": str(uuid.uuid4()),
    }


SELECT_REFUSED = "SELECT ce_id, code FROM dead_letters WHERE stage IN ('authenticate', 'headers')"


def audit_event(stack: Stack, ce_id: str) -> subprocess.CompletedProcess[str]:
    """`simpul audit event <ce_id>` as the data protection officer runs it."""
    return subprocess.run(
        [sys.executable, "-m", "simpul", "audit", "event", ce_id],
        env={**stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def plain_producer(stack: Stack) -> KafkaProducer:
    """Someone on the city network with a Kafka client and no keys."""
    return KafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap.split(","))


def test_forged_and_tampered_events_are_dead_lettered_never_stored(pg_stack: Stack) -> None:
    catalog = pg_stack.catalog()
    etype = catalog.topology.event_type("permit.issued")
    schema = catalog.latest_schema("permit.issued")
    payload = permit(number())
    key, value = str(payload["permit_number"]).encode(), schema.encode(payload)
    producer = plain_producer(pg_stack)
    cases: dict[str, tuple[str, str]] = {}

    unsigned = Envelope(type="permit.issued", source="/agency/dpmptsp")
    producer.send(etype.topic("in"), key=key, value=value, headers=unsigned.to_headers())
    cases[unsigned.id] = ("signature.missing", "event is not signed")

    # Signed by dinsos, claiming to be DPMPTSP.
    impostor = Envelope(type="permit.issued", source="/agency/dpmptsp")
    headers = sign("dinsos", impostor.to_headers(), key, value)
    producer.send(etype.topic("in"), key=key, value=value, headers=headers)
    cases[impostor.id] = ("key.wrong_source", "may not sign for ce_source '/agency/dpmptsp'")

    # Signed by DPMPTSP, then the value changed on the way (or by a man in the middle).
    tampered = Envelope(type="permit.issued", source="/agency/dpmptsp")
    headers = sign("dpmptsp", tampered.to_headers(), key, value)
    other = schema.encode({**payload, "business_name": "Toko Lain"})
    producer.send(etype.topic("in"), key=key, value=other, headers=headers)
    cases[tampered.id] = ("signature.invalid", "does not match the event")

    unknown = Envelope(type="permit.issued", source="/agency/dpmptsp")
    headers = [
        (k, b"dpmptsp-20990101-ffffff" if k == "ce_keyid" else v)
        for k, v in sign("dpmptsp", unknown.to_headers(), key, value)
    ]
    producer.send(etype.topic("in"), key=key, value=value, headers=headers)
    cases[unknown.id] = ("key.unknown", "is not known")

    repeated = Envelope(type="permit.issued", source="/agency/dpmptsp")
    headers = [*sign("dpmptsp", repeated.to_headers(), key, value), ("ce_source", b"/agency/x")]
    producer.send(etype.topic("in"), key=key, value=value, headers=headers)
    cases[repeated.id] = ("header.repeated", "ce_source: header repeated")

    # The attack: Simpul's own derived event, sent by a plain client.
    forged = Envelope(type="social.recipient.deceased", source="/agency/simpul")
    dschema = catalog.latest_schema("social.recipient.deceased")
    dkey = b"7271054507910003"
    producer.send(
        "simpul.in.social.recipient.deceased",
        key=dkey,
        value=dschema.encode(deceased()),
        headers=forged.to_headers(),
    )
    producer.flush(30)
    producer.close()

    # And a legitimate event sent after all of them: nothing legitimate is lost.
    good = str(uuid.uuid4())
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.publish("permit.issued", permit(number()), id=good)
    wait_until(lambda: stored(pg_stack, good), 60, "the legitimate event stored")

    for ce_id, (code, reason) in cases.items():
        letter = dead_letter_for(pg_stack, "permit.issued", ce_id)
        headers = letter["headers"]
        stage = "headers" if code == "header.repeated" else "authenticate"
        assert (headers["simpul_dlq_stage"], headers["simpul_dlq_code"]) == (stage, code)  # type: ignore[index]
        assert reason in headers["simpul_dlq_reason"]  # type: ignore[index]
        assert not stored(pg_stack, ce_id)
    letter = dead_letter_for(pg_stack, "social.recipient.deceased", forged.id)
    assert letter["headers"]["simpul_dlq_code"] == "signature.missing"  # type: ignore[index]
    assert not stored(pg_stack, forged.id)
    with make_engine(pg_stack.settings.store.database_url).connect() as conn:
        recorded = dict(conn.execute(text(SELECT_REFUSED)).all())
    assert {recorded.get(i) for i in cases} == {code for code, _ in cases.values()}


def test_key_revoked_while_the_worker_runs_is_refused_without_a_restart(pg_stack: Stack) -> None:
    settings = Settings()
    public, private = settings.public_keys_path, settings.paths.keys_dir
    extra = create_key(public, private, "dpmptsp", "agency")  # a second valid key: overlap
    signer = load_signer(public, private, "dpmptsp")
    assert signer.key_id == extra.key_id
    catalog = pg_stack.catalog()
    schema = catalog.latest_schema("permit.issued")

    def send(payload: dict[str, object]) -> str:
        envelope = Envelope(type="permit.issued", source="/agency/dpmptsp")
        key, value = str(payload["permit_number"]).encode(), schema.encode(payload)
        with publisher(pg_stack, "dpmptsp") as pub:
            pub.send_raw(
                "simpul.in.permit.issued",
                key,
                value,
                signer.sign(envelope.to_headers(), key, value),
            )
        return envelope.id

    before = send(permit(number()))
    wait_until(lambda: stored(pg_stack, before), 60, "event signed by the new key stored")
    revoke_key(public, private, extra.key_id)
    after = send(permit(number()))
    letter = dead_letter_for(pg_stack, "permit.issued", after)
    assert letter["headers"]["simpul_dlq_code"] == "key.revoked"  # type: ignore[index]
    # The agency's other key still works: revoking one key does not stop the agency.
    good = str(uuid.uuid4())
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.publish("permit.issued", permit(number()), id=good)
    wait_until(lambda: stored(pg_stack, good), 60, "event signed by the remaining key")


def test_producer_cannot_choose_simpul_headers(pg_stack: Stack) -> None:
    catalog = pg_stack.catalog()
    schema = catalog.latest_schema("permit.issued")
    payload = permit(number())  # kelurahan 7271021002: the kel-ujuna-permits subscription
    envelope = Envelope(type="permit.issued", source="/agency/dpmptsp")
    key, value = str(payload["permit_number"]).encode(), schema.encode(payload)
    spoofed = [
        ("simpul_subscription", b"kominfo-permit-statistics"),
        ("simpul_purpose", b"anything the sender likes"),
        ("simpul_dlq_reason", b"fake"),
    ]
    headers = [*spoofed, *sign("dpmptsp", envelope.to_headers(), key, value)]
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.send_raw("simpul.in.permit.issued", key, value, headers)
    wait_until(lambda: stored(pg_stack, envelope.id), 60, "event stored")

    def delivered() -> list[dict[str, bytes]]:
        return [
            dict(m.headers)
            for m in read_topic(pg_stack.settings.kafka.bootstrap, "simpul.out.kel-ujuna", 1000)
            if dict(m.headers).get("ce_id") == envelope.id.encode()
        ]

    (inbox,) = wait_until(delivered, 60, "delivery to kel-ujuna")
    assert inbox["simpul_subscription"] == b"kel-ujuna-permits"
    assert inbox["simpul_purpose"].startswith(b"Keep the kelurahan")
    out = [
        m
        for m in read_topic(pg_stack.settings.kafka.bootstrap, "simpul.out.kel-ujuna", 1000)
        if dict(m.headers).get("ce_id") == envelope.id.encode()
    ]
    names = [k for k, _ in out[0].headers]
    assert names.count("simpul_subscription") == 1 and "simpul_dlq_reason" not in names
    valid = [
        m
        for m in read_topic(pg_stack.settings.kafka.bootstrap, "simpul.valid.permit.issued", 1000)
        if dict(m.headers).get("ce_id") == envelope.id.encode()
    ]
    assert valid and not any(k.startswith("simpul_") for k, _ in valid[0].headers)


def test_audit_event_shows_the_signer_and_verifies_again(pg_stack: Stack) -> None:
    ce_id = str(uuid.uuid4())
    with publisher(pg_stack, "dpmptsp") as pub:
        pub.publish("permit.issued", permit(number()), id=ce_id)
    wait_until(lambda: stored(pg_stack, ce_id), 60, "event stored")

    shown = audit_event(pg_stack, ce_id)
    assert shown.returncode == 0, shown.stderr
    assert "signature verified" in shown.stdout and "dpmptsp-" in shown.stdout
    # An insider edits the stored payload: the evidence no longer matches.
    with make_engine(pg_stack.settings.store.database_url).begin() as conn:
        conn.execute(
            text(
                "UPDATE event_log SET payload = jsonb_set(payload::jsonb, '{business_name}', "
                "'\"Toko Palsu\"')::json WHERE ce_id = :id"
            ),
            {"id": ce_id},
        )
    changed = audit_event(pg_stack, ce_id)
    assert changed.returncode == 1
    assert "stored payload differs from the signed value" in changed.stderr
    missing = audit_event(pg_stack, "no-such-id")
    assert missing.returncode == 2


def test_batch_signed_events_are_stored_and_each_verifies_again_alone(pg_stack: Stack) -> None:
    numbers = [number() for _ in range(40)]
    refused_numbers = [number() for _ in range(3)]
    with publisher(pg_stack, "dpmptsp") as pub:
        # One bad payload refuses the whole batch before anything is sent, naming the field.
        bad = [permit(n) for n in refused_numbers]
        bad[1]["applicant_nik"] = "12345"
        with pytest.raises(PayloadError) as caught:
            pub.publish_many("permit.issued", bad)
        assert "applicant_nik" in str(caught.value)
        for future in pub.publish_many("permit.issued", [permit(n) for n in numbers]):
            future.get(timeout=30)
    engine = make_engine(pg_stack.settings.store.database_url)

    def rows() -> list[tuple[str, str, str | None]]:
        with engine.connect() as conn:
            return [
                (r.ce_id, r.signature, r.signature_proof)
                for r in conn.execute(
                    text(
                        "SELECT ce_id, signature, signature_proof FROM event_log "
                        "WHERE type = 'permit.issued' AND key = ANY(:keys)"
                    ),
                    {"keys": numbers},
                )
            ]

    wait_until(lambda: len(rows()) == 40, 60, "the 40 batch-signed permits stored")
    found = rows()
    with engine.connect() as conn:  # sent before the 40, so it would be stored by now
        assert not conn.scalar(
            text("SELECT count(*) FROM event_log WHERE key = ANY(:keys)"),
            {"keys": refused_numbers},
        )
    assert len({signature for _, signature, _ in found}) == 1  # one signature for the batch
    assert all(proof for _, _, proof in found)  # each keeps its own path to the root
    ce_id = found[7][0]

    shown = audit_event(pg_stack, ce_id)
    assert shown.returncode == 0, shown.stderr
    assert "signature verified" in shown.stdout and "dpmptsp-" in shown.stdout
    # An insider gives the event another event's path: it no longer verifies.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE event_log SET signature_proof = :proof WHERE ce_id = :id"),
            {"proof": found[8][2], "id": ce_id},
        )
    changed = audit_event(pg_stack, ce_id)
    assert changed.returncode == 1
    assert "signature.invalid" in changed.stderr
