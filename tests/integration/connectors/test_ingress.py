"""The HTTP ingress against a real broker, a real store and a real HTTP server (uvicorn)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.ingress.app import create_app
from connectors.state import ApiKeyStore
from simpul.citydata import PaluData
from simpul.cli.services.broker import Broker, free_port
from simpul.db import make_engine
from simpul.envelope import header
from simpul.publisher import PublisherPool
from tests.support.processes import SimpulProcess, wait_until
from tests.support.stack import Stack, make_stack
from tests.support.topics import read_topic

pytestmark = pytest.mark.integration

PERMITS = "simpul.in.permit.issued"


class Ingress:
    def __init__(self, stack: Stack, url: str, app: Any = None) -> None:
        self.stack = stack
        self.url = url
        self.app = app
        self.keys = ApiKeyStore(make_engine(stack.settings.store.database_url))
        self.data = PaluData(stack.topology, seed=3, residents_count=200)

    def key(self, agency: str) -> str:
        return self.keys.create(agency, label="test")[1]

    def permit(self, **override: Any) -> dict[str, Any]:
        payload = self.data.payload("permit.issued", dt.datetime.now(dt.UTC))
        payload["permit_number"] = f"HTTP-{uuid.uuid4().hex[:8]}"
        payload["issued_at"] = payload["issued_at"].isoformat()  # JSON as a PHP system sends it
        if payload["valid_until"] is not None:
            payload["valid_until"] = payload["valid_until"].isoformat()
        return {**payload, **override}

    def post(self, key: str | None, body: Any, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(f"{self.url}/v1/events/permit.issued", json=body, headers=headers)


@pytest.fixture(scope="module")
def ingress(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    workdir = tmp_path_factory.mktemp("ingress")
    stack = make_stack(broker, f"sqlite:///{workdir / 'store.db'}", workdir)
    settings = stack.settings.model_copy(
        update={"ingress_max_body_bytes": 8192, "ingress_rate_per_s": 1.0, "ingress_rate_burst": 6}
    )
    catalog = stack.catalog()
    publishers = PublisherPool(settings, catalog)
    app = create_app(
        settings, catalog, ApiKeyStore(make_engine(settings.store.database_url)), publishers
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    wait_until(lambda: server.started, 30, "ingress up")
    yield Ingress(stack, f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(10)
    publishers.close()


def _published(stack: Stack, ce_ids: set[str]) -> list[Any]:
    return [
        m
        for m in read_topic(stack.settings.kafka.bootstrap, PERMITS, idle_ms=1500)
        if header(m.headers, "ce_id") in ce_ids
    ]


def test_valid_event_is_acknowledged_with_source_from_the_key(ingress: Ingress) -> None:
    response = ingress.post(ingress.key("dpmptsp"), ingress.permit())
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["source"] == "/agency/dpmptsp" and len(body["ids"]) == 1
    [message] = _published(ingress.stack, set(body["ids"]))  # on the topic once 202 came back
    assert header(message.headers, "ce_source") == "/agency/dpmptsp"
    assert header(message.headers, "ce_type") == "permit.issued"


def test_batch_with_a_bad_event_is_refused_whole_naming_the_field_path(ingress: Ingress) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    events = [
        {"specversion": "1.0", "id": ids[0], "data": ingress.permit()},
        {"specversion": "1.0", "id": ids[1], "data": ingress.permit(nib="12345")},
        {"specversion": "1.0", "id": ids[2], "data": ingress.permit(surprise=1)},
    ]
    response = httpx.post(
        f"{ingress.url}/v1/events/permit.issued",
        content=httpx.Request("POST", "/", json=events).content,
        headers={
            "Authorization": f"Bearer {ingress.key('dpmptsp')}",
            "Content-Type": "application/cloudevents-batch+json",
        },
    )
    assert response.status_code == 422, response.text
    fields = {item["field"]: item["msg"] for item in response.json()["detail"]}
    assert "body.1.data.nib" in fields and "13" in fields["body.1.data.nib"]
    assert "body.2.data.surprise" in fields
    assert _published(ingress.stack, set(ids)) == []  # all or nothing


def test_batch_of_plain_json_events_is_published(ingress: Ingress) -> None:
    response = ingress.post(ingress.key("dpmptsp"), [ingress.permit() for _ in range(3)])
    assert response.status_code == 202, response.text
    assert len(_published(ingress.stack, set(response.json()["ids"]))) == 3


def test_missing_unknown_or_revoked_key_is_401(ingress: Ingress) -> None:
    assert ingress.post(None, ingress.permit()).status_code == 401
    assert ingress.post("spk_not-a-key", ingress.permit()).status_code == 401
    key = ingress.key("dpmptsp")
    assert ingress.keys.revoke(key[:12]) == 1
    assert ingress.post(key, ingress.permit()).status_code == 401


def test_agency_cannot_publish_a_type_it_does_not_produce_or_claim_another_source(
    ingress: Ingress,
) -> None:
    response = ingress.post(ingress.key("dinsos"), ingress.permit())
    assert response.status_code == 403 and "dinsos" in response.json()["detail"]
    event = {"specversion": "1.0", "source": "/agency/dinsos", "data": ingress.permit()}
    response = httpx.post(
        f"{ingress.url}/v1/events/permit.issued",
        content=httpx.Request("POST", "/", json=event).content,
        headers={
            "Authorization": f"Bearer {ingress.key('dpmptsp')}",
            "Content-Type": "application/cloudevents+json",
        },
    )
    assert response.status_code == 403, response.text


def test_same_idempotency_key_gets_same_response_and_one_publish(ingress: Ingress) -> None:
    key, permit, idem = ingress.key("dpmptsp"), ingress.permit(), str(uuid.uuid4())
    first = ingress.post(key, permit, **{"Idempotency-Key": idem})
    again = ingress.post(key, permit, **{"Idempotency-Key": idem})
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(_published(ingress.stack, set(first.json()["ids"]))) == 1
    # The client's own ce_id works the same way.
    ce_id = str(uuid.uuid4())
    assert ingress.post(key, ingress.permit(), **{"ce-id": ce_id}).json()["ids"] == [ce_id]
    assert ingress.post(key, ingress.permit(), **{"ce-id": ce_id}).status_code == 202
    assert len(_published(ingress.stack, {ce_id})) == 1


def test_too_large_not_json_and_too_many_requests(ingress: Ingress) -> None:
    key = ingress.key("dpmptsp")
    big = ingress.permit(business_name="x" * 9000)
    assert ingress.post(key, big).status_code == 413
    response = httpx.post(
        f"{ingress.url}/v1/events/permit.issued",
        content=b"nib=123",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    statuses = [ingress.post(key, {"x": 1}).status_code for _ in range(8)]
    assert 429 in statuses
    limited = ingress.post(key, {"x": 1})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_openapi_is_served(ingress: Ingress) -> None:
    spec = httpx.get(f"{ingress.url}/openapi.json").json()
    operation = spec["paths"]["/v1/events/{event_type}"]["post"]
    assert {"202", "401", "403", "413", "415", "422", "429"} <= set(operation["responses"])
    assert "application/json" in operation["requestBody"]["content"]


def test_cli_creates_a_key_shown_once_and_revokes_it(ingress: Ingress, tmp_path: Path) -> None:
    env = {**os.environ, "SIMPUL_DATABASE_URL": ingress.stack.settings.store.database_url}
    created = subprocess.run(
        [sys.executable, "-m", "simpul", "ingress", "keys", "create", "dpmptsp"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    assert key.startswith("spk_")
    assert ingress.post(key, ingress.permit()).status_code == 202
    listed = subprocess.run(
        [sys.executable, "-m", "simpul", "ingress", "keys", "list", "--agency", "dpmptsp"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert key[:12] in listed.stdout and key not in listed.stdout  # never shown again
    subprocess.run(
        [sys.executable, "-m", "simpul", "ingress", "keys", "revoke", key[:12]], env=env, check=True
    )
    assert ingress.post(key, ingress.permit()).status_code == 401


def test_simpul_ingress_process_serves_and_stops_on_sigterm(
    ingress: Ingress, tmp_path: Path
) -> None:

    port = free_port()
    env = {
        **ingress.stack.env,
        "SIMPUL_INGRESS_PORT": str(port),
    }
    process = SimpulProcess(["ingress"], env, tmp_path / "ingress.log")
    try:
        process.wait_http(f"http://127.0.0.1:{port}/health", token=False)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/events/permit.issued",
            json=ingress.permit(),
            headers={"Authorization": f"Bearer {ingress.key('dpmptsp')}"},
        )
        assert response.status_code == 202, response.text
        assert len(_published(ingress.stack, set(response.json()["ids"]))) == 1
    finally:
        assert process.stop(timeout=30) == 0, process.log_text()


def test_deeply_nested_json_is_422_naming_the_limit_never_500(ingress: Ingress) -> None:
    key = ingress.key("dpmptsp")
    for depth in (40, 4000):  # parsed then refused; and beyond Python's recursion limit
        body = "[" * depth + "]" * depth
        response = httpx.post(
            f"{ingress.url}/v1/events/permit.issued",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        [problem] = response.json()["detail"]
        assert problem["field"] == "body" and "nested deeper than 32 levels" in problem["msg"]
    inner: Any = 1
    for _ in range(40):
        inner = [inner]
    nested = ingress.permit(business_name={"a": inner})
    response = ingress.post(key, nested)
    assert response.status_code == 422 and "nested deeper" in response.text


def test_too_long_client_ce_id_is_422(ingress: Ingress) -> None:
    response = ingress.post(ingress.key("dpmptsp"), ingress.permit(), **{"ce-id": "x" * 256})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "body.id"


def test_rejected_requests_are_not_remembered_and_locks_are_freed(ingress: Ingress) -> None:
    app = ingress.app
    key = ingress.key("dpmptsp")
    for n in range(4):
        response = ingress.post(key, ingress.permit(nib="123"), **{"Idempotency-Key": f"bad-{n}"})
        assert response.status_code == 422 and "Idempotent-Replayed" not in response.headers
    assert app.state.idempotency.held_bytes("dpmptsp") < 4096
    assert app.state.idempotency.locks() == 0


def test_keyed_request_gets_ids_derived_from_the_key(ingress: Ingress) -> None:
    key, idem = ingress.key("dpmptsp"), str(uuid.uuid4())
    first = ingress.post(key, [ingress.permit(), ingress.permit()], **{"Idempotency-Key": idem})
    assert first.status_code == 202
    ingress.app.state.idempotency.clear()  # forget everything, as a restart does
    again = ingress.post(key, [ingress.permit(), ingress.permit()], **{"Idempotency-Key": idem})
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers
    assert again.json()["ids"] == first.json()["ids"]  # the store keeps one copy of each


@pytest.fixture(scope="module")
def open_ingress(ingress: Ingress) -> Iterator[Ingress]:
    """A second ingress on the same stack without a practical rate limit, for fuzzing."""
    stack = ingress.stack
    settings = stack.settings.model_copy(
        update={
            "ingress_max_body_bytes": 65536,
            "ingress_rate_per_s": 1e6,
            "ingress_rate_burst": 10**6,
        }
    )
    catalog = stack.catalog()
    publishers = PublisherPool(settings, catalog)
    app = create_app(
        settings, catalog, ApiKeyStore(make_engine(settings.store.database_url)), publishers
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    wait_until(lambda: server.started, 30, "fuzzing ingress up")
    yield Ingress(stack, f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(10)
    publishers.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=25,
)
_fields = st.sampled_from(
    [
        "permit_number",
        "permit_type",
        "nib",
        "applicant_nik",
        "business_name",
        "kelurahan_code",
        "issued_at",
        "valid_until",
        "signature_digest",
        "id",
        "time",
        "data",
        "source",
        "type",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=300),
        _json.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(_fields, _json, max_size=10).map(lambda v: json.dumps(v).encode()),
        st.integers(1, 5000).map(lambda n: ("[" * n + "]" * n).encode()),
        st.integers(1, 3000).map(lambda n: ('{"a":' * n + "1" + "}" * n).encode()),
    ),
    media=st.sampled_from(
        [
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "text/plain",
            "",
            "application/json; charset=latin1",
        ]
    ),
    extra=st.dictionaries(
        st.sampled_from(["ce-id", "Idempotency-Key", "X-API-Key", "Content-Length-X"]),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=300),
        max_size=3,
    ),
    event_type=st.sampled_from(["permit.issued", "hr.employee.updated", "nope", "%00"]),
)
def test_ingress_never_answers_500_whatever_the_body_and_headers(
    open_ingress: Ingress, body: bytes, media: str, extra: dict[str, str], event_type: str
) -> None:
    key = _FUZZ_KEYS.setdefault("dpmptsp", open_ingress.key("dpmptsp"))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": media, **extra}
    response = httpx.post(
        f"{open_ingress.url}/v1/events/{event_type}", content=body, headers=headers, timeout=30
    )
    assert response.status_code in (202, 401, 403, 404, 413, 415, 422), response.text
    assert response.json()["detail" if response.status_code != 202 else "ids"]


_FUZZ_KEYS: dict[str, str] = {}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_rejected_batches_do_not_grow_the_ingress_process(ingress: Ingress, tmp_path: Path) -> None:
    """Issue 14: 60 rejected requests took the ingress from 83 MB to 288 MB. Ceiling: the
    resident set grows by less than 15 MB over 120 rejected 500-event batches (before the
    fix: 88 -> 125 MB)."""

    port = free_port()
    env = {**ingress.stack.env, "SIMPUL_INGRESS_PORT": str(port)}
    process = SimpulProcess(["ingress"], env, tmp_path / "ingress.log")
    try:
        process.wait_http(f"http://127.0.0.1:{port}/health", token=False)
        key = ingress.key("dpmptsp")
        batch = [ingress.permit(nib="123") for _ in range(500)]  # every event refused
        url = f"http://127.0.0.1:{port}/v1/events/permit.issued"
        refused = 0
        with httpx.Client(timeout=30) as client:

            def send(n: int) -> None:
                nonlocal refused
                headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"r-{n}"}
                response = client.post(url, json=batch, headers=headers)
                assert response.status_code in (422, 429), response.text
                refused += response.status_code == 422

            for n in range(10):  # warm up: allocator arenas, first imports
                send(n)
            before = _rss_mb(process.pid)
            for n in range(10, 130):
                send(n)
            after = _rss_mb(process.pid)
        assert refused >= 100
        assert after - before < 15, f"resident {before:.0f} MB -> {after:.0f} MB"
        print(f"ingress resident memory {before:.0f} MB -> {after:.0f} MB over 120 batches")
    finally:
        process.stop(timeout=30)


def test_catalogue_lets_a_developer_integrate_from_it_alone(ingress: Ingress) -> None:
    """Read the catalogue, take each type's example as it is, post it with the producing
    agency's key: the ingress accepts it (Kota Yogyakarta's one gateway, Jogja Smart Service)."""
    import jsonschema

    catalogue = httpx.get(f"{ingress.url}/v1/catalogue").json()
    assert catalogue["city"] == "Kota Palu"
    types = {t["type"]: t for t in catalogue["event_types"]}
    assert set(types) == {
        "hr.employee.updated",
        "hr.performance.assessed",
        "permit.issued",
        "kelurahan.document.issued",
        "social.recipient.updated",
        "population.death.registered",
    }  # derived types are Simpul's own: not in the catalogue
    for name, entry in types.items():
        assert entry["description"]["id"] and entry["description"]["en"]
        jsonschema.Draft202012Validator(entry["schema"]["json"]).validate(entry["example"])
        openapi = httpx.get(f"{ingress.url}{entry['openapi']}").json()
        assert openapi["openapi"] == "3.1.0"
        post = openapi["paths"][f"/v1/events/{name}"]["post"]
        example = post["requestBody"]["content"]["application/json"]["example"]
        assert example == entry["example"]
        producer = next(
            p["code"]
            for p in entry["producers"]
            if ingress.stack.topology.agency(p["code"]).kelurahan_code
            in (None, example.get("kelurahan_code"))
        )
        response = httpx.post(
            f"{ingress.url}/v1/events/{name}",
            json=example,
            headers={"Authorization": f"Bearer {ingress.key(producer)}"},
        )
        assert response.status_code == 202, (name, response.text)
    page = httpx.get(f"{ingress.url}/catalogue.html")
    assert "Katalog jenis event / Event catalogue: Kota Palu" in page.text
    assert "Kantor kelurahan/desa menerbitkan surat keterangan" in page.text
    missing = httpx.get(f"{ingress.url}/v1/catalogue/hr.allowance.basis/openapi.json")
    assert missing.status_code == 404
