"""Subscriptions end to end: real broker, worker, PostgreSQL, `simpul deliver` and a real
HTTP server that fails, times out, rate-limits and recovers."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro
import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select, text

from simpul.citydata import PaluData
from simpul.cli.services.broker import Broker, free_port
from simpul.codec import unframe
from simpul.db import make_engine
from simpul.publisher import Publisher
from simpul.registry.store import SchemaStore
from sinks.audit import delivery_audit, receipts_for
from tests.support.paths import REPO_ROOT
from tests.support.processes import SimpulProcess, wait_until
from tests.support.signing import auth
from tests.support.stack import TOPOLOGY_FILE, Stack, make_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUDIT_KEY = "e2e-audit-key-0123456789"
SECRETS = {
    "SIMPUL_WEBHOOK_SECRET_DINSOS": "dinsos-secret",
    "SIMPUL_WEBHOOK_SECRET_BKD": "bkd-secret",
    "SIMPUL_WEBHOOK_SECRET_UJUNA": "ujuna-secret",
    "SIMPUL_WEBHOOK_SECRET_MAMBORO": "mamboro-secret",
    "SIMPUL_WEBHOOK_SECRET_KOMINFO": "kominfo-secret",
    "SIMPUL_WEBHOOK_SECRET_DEATHS": "deaths-secret",
}
HOOKS = {  # subscription -> (path, secret variable)
    "dinsos-sktm": ("/dinsos", "SIMPUL_WEBHOOK_SECRET_DINSOS"),
    "bkd-tpp-employees": ("/bkd", "SIMPUL_WEBHOOK_SECRET_BKD"),
    "kel-ujuna-permits": ("/ujuna", "SIMPUL_WEBHOOK_SECRET_UJUNA"),
    "kel-mamboro-documents": ("/mamboro", "SIMPUL_WEBHOOK_SECRET_MAMBORO"),
    "kominfo-permit-statistics": ("/kominfo", "SIMPUL_WEBHOOK_SECRET_KOMINFO"),
    "dinsos-deaths": ("/gone", "SIMPUL_WEBHOOK_SECRET_DEATHS"),
}


@dataclass
class Hit:
    path: str
    at: float
    headers: dict[str, str]
    body: bytes
    status: int


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops connections when the deliverer opens one per
    # endpoint at once; a dropped SYN is retried after 1 s and would look like a timeout.
    request_queue_size = 128
    daemon_threads = True


class Endpoints:
    """A real HTTP server whose paths misbehave on purpose."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.port = free_port()
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with endpoints.lock:
                    seen = sum(1 for h in endpoints.hits if h.path == self.path)
                    status, extra, delay = endpoints.behaviour(self.path, seen)
                    endpoints.hits.append(
                        Hit(self.path, time.time(), dict(self.headers), body, status)
                    )
                if delay:  # a slow endpoint is the behaviour under test (the timeout)
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out, as intended

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def behaviour(path: str, seen: int) -> tuple[int, dict[str, str], float]:
        if path == "/bkd" and seen < 2:
            return 500, {}, 0  # fails twice, then recovers
        if path == "/ujuna" and seen == 0:
            return 429, {"Retry-After": "2"}, 0
        if path == "/kominfo" and seen == 0:
            return 200, {}, 4.0  # answers after the client's 1.5 s timeout
        if path == "/gone":
            return 410, {}, 0  # a permanent refusal: dead letter at once, no retry
        if path == "/mamboro":
            return 500, {}, 0.3  # slow and never recovers: dead letter
        return 200, {}, 0

    def on(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def endpoints() -> Iterator[Endpoints]:
    running = Endpoints()
    yield running
    running.close()


@pytest.fixture(scope="module")
def stack(
    broker: Broker,
    pg_url: str,
    endpoints: Endpoints,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("subscriptions")
    raw = yaml.safe_load(TOPOLOGY_FILE.read_text())
    for sub in raw["subscriptions"]:
        if sub["name"] in HOOKS:
            path, secret_env = HOOKS[sub["name"]]
            sub["webhook"] = {
                "url": f"http://127.0.0.1:{endpoints.port}{path}",
                "secret_env": secret_env,
            }
    topology_file = workdir / "palu-webhooks.yaml"
    topology_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    stack = make_stack(broker, pg_url, workdir, topology_file)
    stack.env["SIMPUL_AUDIT_KEY"] = AUDIT_KEY
    stack.start_worker()
    yield stack
    if stack.worker is not None:
        stack.stop_worker()


@dataclass
class Published:
    sktm: dict[str, Any]
    pindah: dict[str, Any]
    domisili: dict[str, Any]
    employee: dict[str, Any]
    permit_ujuna: dict[str, Any]
    permit_talise: dict[str, Any]
    death: dict[str, Any]
    ids: dict[str, str]


@pytest.fixture(scope="module")
def published(stack: Stack) -> Published:
    data = PaluData(stack.topology, seed=99)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    catalog = stack.catalog()

    def doc(kel: str, kind: str) -> dict[str, Any]:
        payload = data.payload("kelurahan.document.issued", now)
        return {**payload, "kelurahan_code": kel, "document_type": kind}

    def permit(kel: str) -> dict[str, Any]:
        return {**data.payload("permit.issued", now), "kelurahan_code": kel}

    plan = Published(
        sktm=doc("7271021002", "SKTM"),
        pindah=doc("7271041001", "PINDAH"),
        domisili=doc("7271021002", "DOMISILI"),
        employee=data.payload("hr.employee.updated", now),
        permit_ujuna=permit("7271021002"),
        permit_talise=permit("7271081003"),
        death=data.payload("population.death.registered", now),
        ids={},
    )
    sends = [
        ("sktm", "kel-ujuna", "kelurahan.document.issued"),
        ("pindah", "kel-mamboro", "kelurahan.document.issued"),
        ("domisili", "kel-ujuna", "kelurahan.document.issued"),
        ("employee", "bkpsdm", "hr.employee.updated"),
        ("permit_ujuna", "dpmptsp", "permit.issued"),
        ("permit_talise", "dpmptsp", "permit.issued"),
        ("death", "dukcapil", "population.death.registered"),
    ]
    for name, agency, type_name in sends:
        with Publisher(agency, settings=stack.settings, catalog=catalog) as publisher:
            ce_id = f"e2e-{name}-{os.urandom(4).hex()}"
            publisher.publish(type_name, getattr(plan, name), id=ce_id).get(30)
            plan.ids[name] = ce_id
    return plan


def read_topic(stack: Stack, topic: str, at_least: int) -> list[Any]:
    store = SchemaStore(make_engine(stack.settings.store.database_url))

    def fetch() -> list[Any] | None:
        consumer = KafkaConsumer(
            bootstrap_servers=stack.settings.kafka.bootstrap, consumer_timeout_ms=1500
        )
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        messages = list(consumer)
        consumer.close()
        return messages if len(messages) >= at_least else None

    messages = wait_until(fetch, 60, f"{at_least} messages in {topic}", every=0.5)
    decoded = []
    for m in messages:
        schema_id, body = unframe(m.value)
        schema = fastavro.parse_schema(json.loads(store.schema(schema_id) or "{}"))
        record = fastavro.schemaless_reader(io.BytesIO(bytes(body)), schema, None)
        decoded.append((m, record, {k: v.decode() for k, v in m.headers}))
    return decoded


@pytest.mark.smoke
def test_each_inbox_gets_exactly_its_projection_masked(stack: Stack, published: Published) -> None:
    dinsos = read_topic(stack, "simpul.out.dinsos", 2)
    by_subscription = {h["simpul_subscription"]: (m, r, h) for m, r, h in dinsos}
    assert len(dinsos) == 2  # the DOMISILI letter and the move are not for Dinsos
    _, death, _ = by_subscription["dinsos-deaths"]
    assert death == {
        "nik": published.death["nik"],  # unmasked: stopping assistance needs the NIK
        "date_of_death": published.death["date_of_death"],
        "kelurahan_code": published.death["kelurahan_code"],
    }
    message, record, headers = by_subscription["dinsos-sktm"]
    assert set(record) == {
        "document_number",
        "document_type",
        "kelurahan_code",
        "resident_nik",
        "issued_at",
    }
    nik = published.sktm["resident_nik"]
    assert record["resident_nik"] == f"{nik[:4]}••••••••{nik[-4:]}"
    assert headers["ce_id"] == published.ids["sktm"]
    assert headers["simpul_subscription"] == "dinsos-sktm"
    assert headers["simpul_purpose"].startswith("Check poverty letters")
    assert message.key == published.sktm["document_number"].encode()
    assert nik.encode() not in message.value

    ujuna = read_topic(stack, "simpul.out.kel-ujuna", 1)
    assert [r["permit_number"] for _, r, _ in ujuna] == [published.permit_ujuna["permit_number"]]
    assert set(ujuna[0][1]) == {
        "permit_number",
        "permit_type",
        "business_name",
        "kelurahan_code",
        "issued_at",
        "valid_until",
    }
    kominfo = read_topic(stack, "simpul.out.kominfo", 2)
    assert len(kominfo) == 2
    assert all(set(r) == {"permit_type", "kelurahan_code", "issued_at"} for _, r, _ in kominfo)
    assert all(m.key is None for m, _, _ in kominfo)  # permit_number is not in the projection
    bkd = read_topic(stack, "simpul.out.bkd", 1)
    assert "name" not in bkd[0][1] and bkd[0][1]["nip"] == published.employee["nip"]
    mamboro = read_topic(stack, "simpul.out.kel-mamboro", 1)
    assert [h["ce_id"] for _, _, h in mamboro] == [published.ids["pindah"]]

    subjects = SchemaStore(make_engine(stack.settings.store.database_url))
    assert subjects.latest("simpul.out.dinsos-simpul.sub.dinsos_sktm.KelurahanDocumentIssued")


def test_inbox_deliveries_are_audited_by_subject(stack: Stack, published: Published) -> None:
    engine = make_engine(stack.settings.store.database_url)

    def inbox_rows() -> list[Any] | None:
        with engine.connect() as conn:
            rows = conn.execute(
                select(delivery_audit).where(delivery_audit.c.channel == "inbox")
            ).all()
        return list(rows) if len(rows) >= 7 else None

    rows = wait_until(inbox_rows, 60, "inbox audit rows")
    assert sorted((r.subscription, r.ce_id) for r in rows) == sorted(
        [
            ("dinsos-sktm", published.ids["sktm"]),
            ("kel-mamboro-documents", published.ids["pindah"]),
            ("bkd-tpp-employees", published.ids["employee"]),
            ("kel-ujuna-permits", published.ids["permit_ujuna"]),
            ("kominfo-permit-statistics", published.ids["permit_ujuna"]),
            ("kominfo-permit-statistics", published.ids["permit_talise"]),
            ("dinsos-deaths", published.ids["death"]),
        ]
    )
    receipts = receipts_for(engine, AUDIT_KEY, published.sktm["resident_nik"])
    assert [(r.agency, r.channel) for r in receipts] == [("dinsos", "inbox")]
    assert "resident_nik" in receipts[0].fields


def _snippet(language: str) -> str:
    text = (REPO_ROOT / "docs" / "subscriptions.md").read_text()
    match = re.search(rf"<!-- snippet:{language} -->\n```{language}\n(.*?)```", text, re.S)
    assert match, f"docs/subscriptions.md has no {language} snippet"
    return match.group(1)


@pytest.fixture(scope="module")
def deliverer(
    stack: Stack, published: Published, endpoints: Endpoints
) -> Iterator[tuple[SimpulProcess, int]]:
    port = free_port()
    env = {
        **stack.env,
        **SECRETS,
        "SIMPUL_DELIVER_WEB_PORT": str(port),
        "SIMPUL_DELIVER_MAX_ATTEMPTS": "4",
        "SIMPUL_DELIVER_RETRY_BASE_S": "0.4",
        "SIMPUL_DELIVER_TIMEOUT_S": "1.5",
    }
    process = SimpulProcess(["deliver"], env, stack.workdir / "deliver.log")
    yield process, port
    process.stop()


@pytest.mark.smoke
def test_webhooks_retry_honour_retry_after_and_dead_letter(
    stack: Stack, published: Published, endpoints: Endpoints, deliverer: Any
) -> None:
    process, port = deliverer
    wait_until(lambda: len(endpoints.on("/mamboro")) >= 4, 90, "mamboro's 4 attempts")
    wait_until(lambda: len(endpoints.on("/bkd")) >= 3, 60, "bkd recovered")
    wait_until(lambda: len(endpoints.on("/ujuna")) >= 2, 60, "ujuna after Retry-After")
    wait_until(lambda: len(endpoints.on("/kominfo")) >= 3, 60, "kominfo after the timeout")

    dinsos = endpoints.on("/dinsos")
    assert [h.status for h in dinsos] == [200]
    event = json.loads(dinsos[0].body)
    assert dinsos[0].headers["Content-Type"] == "application/cloudevents+json"
    assert event["id"] == published.ids["sktm"] and event["specversion"] == "1.0"
    assert event["type"] == "kelurahan.document.issued"
    assert event["simpulsubscription"] == "dinsos-sktm"
    nik = published.sktm["resident_nik"]
    assert event["data"]["resident_nik"] == f"{nik[:4]}••••••••{nik[-4:]}"
    assert nik not in dinsos[0].body.decode()

    assert [h.status for h in endpoints.on("/bkd")] == [500, 500, 200]
    ujuna = endpoints.on("/ujuna")
    assert [h.status for h in ujuna] == [429, 200]
    assert ujuna[1].at - ujuna[0].at >= 1.9  # Retry-After: 2 honoured, not the 0.4 s back-off
    # kominfo: the first request timed out (two messages: one slow request, then the rest).
    assert len(endpoints.on("/kominfo")) == 3
    # The dead endpoint did not hold back the others: Dinsos got its event before Mamboro's
    # last attempt.
    assert dinsos[0].at < endpoints.on("/mamboro")[-1].at
    assert all(
        h.headers["Simpul-Attempt"] == str(i + 1) for i, h in enumerate(endpoints.on("/bkd"))
    )

    gone = read_topic(stack, "simpul.dlq.out.dinsos", 1)
    assert [h["ce_id"] for _, _, h in gone] == [published.ids["death"]]
    assert gone[0][2]["simpul_dlq_reason"] == "HTTP 410: refused by the endpoint (not retried)"
    assert [h.status for h in endpoints.on("/gone")] == [410]

    letters = read_topic(stack, "simpul.dlq.out.kel-mamboro", 1)
    assert len(letters) == 1
    assert letters[0][2]["ce_id"] == published.ids["pindah"]
    assert letters[0][2]["simpul_dlq_reason"] == "HTTP 500 after 4 attempts"
    # A fixed pause is the point: no fifth attempt may arrive in 1.5 s (past the back-off).
    time.sleep(1.5)
    assert len(endpoints.on("/mamboro")) == 4  # no fifth attempt

    engine = make_engine(stack.settings.store.database_url)

    def webhook_rows() -> list[Any] | None:
        with engine.connect() as conn:
            rows = conn.execute(
                select(delivery_audit).where(delivery_audit.c.channel == "webhook")
            ).all()
        return list(rows) if len(rows) >= 7 else None

    rows = wait_until(webhook_rows, 60, "webhook audit rows")
    outcomes = sorted((r.subscription, r.outcome) for r in rows)
    assert ("kel-mamboro-documents", "dead_lettered") in outcomes
    assert outcomes.count(("kominfo-permit-statistics", "delivered")) == 2
    assert ("dinsos-deaths", "dead_lettered") in outcomes
    assert len(rows) == 7
    with engine.connect() as conn:
        recorded = conn.execute(
            text("select agency, stage, ce_id from dead_letters where stage = 'webhook'")
        ).all()
    assert sorted(map(tuple, recorded)) == sorted(
        [
            ("dinsos", "webhook", published.ids["death"]),
            ("kel-mamboro", "webhook", published.ids["pindah"]),
        ]
    )
    receipts = receipts_for(engine, AUDIT_KEY, nik)
    assert sorted((r.channel, r.outcome) for r in receipts) == [
        ("inbox", "delivered"),
        ("webhook", "delivered"),
    ]

    with urllib.request.urlopen(_authorized(port, "/metrics"), timeout=5) as response:
        scrape = response.read().decode()
    assert (
        'simpul_deliveries_total{agency="kel-mamboro",channel="webhook",outcome="dead_lettered"}'
        " 1.0" in scrape
    )
    assert 'simpul_webhook_retries_total{agency="bkd",reason="500"} 2.0' in scrape
    assert 'simpul_webhook_retries_total{agency="kel-ujuna",reason="429"} 1.0' in scrape
    with urllib.request.urlopen(_authorized(port, "/health"), timeout=5) as response:
        health = json.loads(response.read())
    assert health["dead_lettered"] == 2 and health["delivered"] == 5

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def test_signature_verifies_with_the_documented_snippets(endpoints: Endpoints) -> None:
    namespace: dict[str, Any] = {}
    exec(_snippet("python"), namespace)
    verify = namespace["verify_simpul_signature"]
    hit = endpoints.on("/dinsos")[0]
    signature = hit.headers["Simpul-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", signature)
    assert verify(b"dinsos-secret", signature, hit.body)
    assert not verify(b"bkd-secret", signature, hit.body)
    assert not verify(b"dinsos-secret", signature, hit.body.replace(b"SKTM", b"SKTX"))
    if shutil.which("php"):
        script = (
            _snippet("php")
            + "\nexit(verify_simpul_signature($argv[1], $argv[2], stream_get_contents(STDIN))"
            " ? 0 : 1);"
        )
        for secret, body, valid in [
            ("dinsos-secret", hit.body, True),
            ("bkd-secret", hit.body, False),
            ("dinsos-secret", hit.body.replace(b"SKTM", b"SKTX"), False),
        ]:
            result = subprocess.run(
                ["php", "-r", script.removeprefix("<?php"), secret, signature],
                input=body,
                capture_output=True,
                timeout=30,
            )
            assert result.returncode == (0 if valid else 1), result.stderr


def _start_deliverer(stack: Stack, port: int) -> SimpulProcess:
    env = {**stack.env, **SECRETS, "SIMPUL_DELIVER_WEB_PORT": str(port)}
    return SimpulProcess(["deliver"], env, stack.workdir / "deliver-2.log")


def _authorized(port: int, path: str) -> urllib.request.Request:
    return urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=auth())


def _health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(_authorized(port, "/health"), timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return {}


def test_restarted_deliverer_resumes_after_the_finished_messages(
    stack: Stack, endpoints: Endpoints, published: Published
) -> None:
    before = len(endpoints.hits)
    port = free_port()
    process = _start_deliverer(stack, port)
    try:
        process.wait_ready(lambda: _health(port).get("assigned_partitions", 0) > 0, "partitions")
        # A fixed pause is the point: nothing may be delivered again in 2 s after the restart.
        time.sleep(2)
        assert len(endpoints.hits) == before  # every finished message's offset was committed
        data = PaluData(stack.topology, seed=100)
        payload = {
            **data.payload("kelurahan.document.issued", dt.datetime.now(dt.UTC)),
            "kelurahan_code": "7271021002",
            "document_type": "SKTM",
        }
        with Publisher("kel-ujuna", settings=stack.settings, catalog=stack.catalog()) as pub:
            pub.publish("kelurahan.document.issued", payload, id="e2e-after-restart").get(30)
        hits = wait_until(lambda: endpoints.on("/dinsos")[1:], 60, "the new SKTM delivered")
        assert json.loads(hits[0].body)["id"] == "e2e-after-restart"
        assert len(endpoints.hits) == before + 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_audit_chain_of_worker_and_deliverer_verifies(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simpul", "audit", "verify"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # 8 inbox rows from the worker; 7 + 1 webhook rows from two deliverer runs.
    assert "16 rows in 3 chain(s) verified" in result.stdout
