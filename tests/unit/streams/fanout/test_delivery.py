"""Pure parts of fan-out and webhook delivery: messages, signatures, back-off, Retry-After."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import random

import pytest

from simpul.codec import AvroSchema, unframe
from simpul.signing import KEYID_HEADER, PROOF_HEADER, SIGNATURE_HEADER
from simpul.topology.model import load_topology, parse_topology
from sinks.webhook import (
    WebhookConfigError,
    retry_after,
    sign,
    to_cloudevent,
    webhook_secrets,
)
from streams.fanout.plan import Route, SubscriptionPlan
from streams.fanout.service import fan_out
from streams.runtime.retry import RetryPolicy
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

PALU = REPO_ROOT / "topology" / "palu.yaml"

HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"id-1"),
    ("ce_source", b"/agency/kel-ujuna"),
    ("ce_type", b"kelurahan.document.issued"),
    ("ce_time", b"2026-11-25T01:02:03.000Z"),
    ("content-type", b"application/avro"),
]
SKTM = {
    "document_number": "470/00012/1002/2026",
    "document_type": "SKTM",
    "kelurahan_code": "7271021002",
    "resident_nik": "7271015203880002",
    "purpose": "Keringanan biaya sekolah",
    "issued_at": dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.UTC),
}


def _document_routes() -> tuple[SubscriptionPlan, list[tuple[Route, AvroSchema]]]:
    """Palu's plan and the routes of ``kelurahan.document.issued``, each with its encoder."""
    plan = SubscriptionPlan.build(load_topology(PALU), REPO_ROOT / "schemas")
    routes = [
        (r, AvroSchema.from_text(100 + i, json.dumps(r.schema)))
        for i, r in enumerate(plan.routes_for("kelurahan.document.issued"))
    ]
    return plan, routes


def test_fan_out_sends_to_matching_subscriptions_only_with_audit_rows() -> None:
    plan, routes = _document_routes()
    out, audit, filtered = fan_out(routes, SKTM, b"470/00012/1002/2026", HEADERS, 1.0)
    assert [m.topic for m in out] == ["simpul.out.dinsos"]
    assert [r.subscription.name for r in filtered] == ["kel-mamboro-documents"]
    schema_id, body = unframe(out[0].value)
    assert schema_id == routes[0][1].id
    record = routes[0][1].decode_body(body)
    assert record["resident_nik"] == "7271••••••••0002" and "purpose" not in record
    headers = dict(out[0].headers)
    assert headers["simpul_subscription"] == b"dinsos-sktm" and headers["ce_id"] == b"id-1"
    assert audit[0].subject == "7271015203880002" and audit[0].channel == "inbox"
    assert audit[0].fields == plan.routes_for("kelurahan.document.issued")[0].subscription.fields


def test_fan_out_passes_on_cloudevents_headers_without_signature_or_senders_simpul_ones() -> None:
    _, routes = _document_routes()
    sent = [
        *HEADERS,
        (SIGNATURE_HEADER, b"sig"),
        (KEYID_HEADER, b"kel-ujuna-1"),
        (PROOF_HEADER, b"0.1."),
        ("simpul_subscription", b"forged"),
        ("x-trace", b"t-1"),
    ]
    out, _, _ = fan_out(routes, SKTM, b"470/00012/1002/2026", sent, 1.0)
    names = [name for name, _ in out[0].headers]
    assert names == [*(n for n, _ in HEADERS), "x-trace", "simpul_subscription", "simpul_purpose"]
    assert dict(out[0].headers)["simpul_subscription"] == b"dinsos-sktm"


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"id-1"}'
    expected = hmac.new(b"s3cret", b"1764000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", 1764000000, body) == f"t=1764000000,v1={expected}"


def test_cloudevent_is_structured_json_with_subject_and_extensions() -> None:
    headers = [*HEADERS, ("simpul_subscription", b"dinsos-sktm"), ("simpul_purpose", b"p")]
    event = json.loads(to_cloudevent(headers, b"470/1", {"issued_at": SKTM["issued_at"]}))
    assert event == {
        "specversion": "1.0",
        "id": "id-1",
        "source": "/agency/kel-ujuna",
        "type": "kelurahan.document.issued",
        "time": "2026-11-25T01:02:03.000Z",
        "datacontenttype": "application/json",
        "subject": "470/1",
        "simpulsubscription": "dinsos-sktm",
        "simpulpurpose": "p",
        "data": {"issued_at": "2026-11-25T01:02:03Z"},
    }


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(1)
    policy = RetryPolicy(1.0, 10.0, jitter="full")
    waits = [policy.delay(attempt, rng) for attempt in range(1, 12) for _ in range(50)]
    assert all(0 <= w <= 10.0 for w in waits)
    assert max(policy.delay(1, rng) for _ in range(100)) <= 1.0
    assert max(policy.delay(8, rng) for _ in range(100)) > 5.0  # grows to the cap
    assert min(policy.delay(8, rng) for _ in range(100)) < 1.0  # full jitter: from zero
    assert policy.capped(3600.0) == 10.0  # a Retry-After is held to the cap


def test_outage_backoff_doubles_within_a_fifth_of_plan() -> None:
    rng = random.Random(2)
    policy = RetryPolicy(0.5, 4.0)
    for attempt, planned in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = [policy.delay(attempt, rng) for _ in range(100)]
        assert all(0.8 * planned <= w <= 1.2 * planned for w in waits)


def test_until_done_retries_only_the_named_failures() -> None:
    policy = RetryPolicy(0.001, 0.002)
    calls: list[int] = []
    told: list[tuple[str, float]] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("store away")
        return "written"

    result = asyncio.run(
        policy.until_done(flaky, (ConnectionError,), lambda e, w: told.append((str(e), w)))
    )
    assert result == "written" and len(calls) == 3
    assert [reason for reason, _ in told] == ["store away", "store away"]

    async def broken() -> str:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        asyncio.run(
            policy.until_done(broken, (ConnectionError,), lambda e, w: told.append((str(e), w)))
        )
    assert len(told) == 2  # a failure not named is not retried


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("7") == 7.0
    now = 1_764_000_000.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_missing_webhook_secret_names_the_field() -> None:
    topology = load_topology(PALU)
    with pytest.raises(WebhookConfigError, match=r"subscriptions\.2\.webhook\.secret_env: "):
        webhook_secrets(topology, environ={})
    assert webhook_secrets(topology, environ={"SIMPUL_WEBHOOK_SECRET_DINSOS": "x"}) == {
        "dinsos-sktm": b"x"
    }
    assert parse_topology({**_raw(), "subscriptions": []}).subscriptions == []


def _raw() -> dict[str, object]:
    import yaml

    return yaml.safe_load(PALU.read_text())


def test_bytes_are_base64_in_the_store_json_and_the_webhook_body() -> None:
    from simpul.db import dumps

    raw = bytes(range(250, 256)) + b"\x00simpul"
    encoded = base64.b64encode(raw).decode()
    assert json.loads(dumps({"digest": raw})) == {"digest": encoded}
    assert json.loads(dumps({"digest": raw, "big": 2**70})) == {"digest": encoded, "big": 2**70}
    event = json.loads(to_cloudevent([("ce_id", b"e-1")], None, {"digest": raw}))
    assert event["data"] == {"digest": encoded}
