"""`simpul registry` over HTTP (a real server process, real PostgreSQL) and its storage on
both backends: Confluent's paths, bodies, codes, soft delete, compatibility and auth."""

from __future__ import annotations

import base64
import json
import signal
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simpul import dbmigrate
from simpul.db import make_engine
from simpul.registry.store import IncompatibleSchema, SchemaStore
from tests.support.registry import Registry, start_registry
from tests.support.signing import auth
from tests.support.stack import SCHEMAS_DIR

pytestmark = pytest.mark.integration

CT = "application/vnd.schemaregistry.v1+json"
PERMIT = (SCHEMAS_DIR / "permit.issued.v1.avsc").read_text(encoding="utf-8")
DEATH = (SCHEMAS_DIR / "population.death.registered.v1.avsc").read_text(encoding="utf-8")


def permit_with(field: dict[str, Any]) -> str:
    schema = json.loads(PERMIT)
    schema["fields"].append(field)
    return json.dumps(schema)


@pytest.fixture(scope="module")
def registry(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    dbmigrate.upgrade(pg_url)
    running = start_registry(
        pg_url, tmp_path_factory.mktemp("registry"), SIMPUL_REGISTRY_ADMIN_TOKEN="s3cret-admin"
    )
    yield running
    running.process.stop()


def subject() -> str:
    return f"simpul.in.test{uuid.uuid4().hex[:6]}-value"


def test_writes_need_the_admin_token_bearer_or_basic(registry: Registry) -> None:
    s = subject()
    with registry.client() as anonymous:
        refused = anonymous.post(f"/subjects/{s}/versions", json={"schema": PERMIT})
        assert refused.status_code == 401
        assert refused.json()["error_code"] == 40101
        wrong = anonymous.put(
            "/config", json={"compatibility": "NONE"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        basic = base64.b64encode(b"any-user:s3cret-admin").decode()
        accepted = anonymous.post(
            f"/subjects/{s}/versions",
            json={"schema": PERMIT},
            headers={"Authorization": f"Basic {basic}"},
        )
        assert accepted.status_code == 200, accepted.text
        # Reads are open by default.
        assert anonymous.get(f"/subjects/{s}/versions").json() == [1]


def test_same_schema_gets_the_same_id_whatever_its_whitespace_and_key_order(
    registry: Registry,
) -> None:
    s = subject()
    reordered = json.dumps(dict(reversed(list(json.loads(PERMIT).items()))), indent=4)
    with registry.client(auth=True) as client:
        first = client.post(f"/subjects/{s}/versions", json={"schema": PERMIT})
        assert first.headers["content-type"] == CT
        again = client.post(f"/subjects/{s}/versions", json={"schema": reordered})
        assert again.json() == first.json() == {"id": first.json()["id"]}
        assert client.get(f"/subjects/{s}/versions").json() == [1]
        # Ids are global: the same schema under another subject keeps its id, gets version 1.
        other = subject()
        assert client.post(f"/subjects/{other}/versions", json={"schema": PERMIT}).json() == (
            first.json()
        )
        schema_id = first.json()["id"]
        latest = client.get(f"/subjects/{s}/versions/latest").json()
        assert latest == {
            "subject": s,
            "version": 1,
            "id": schema_id,
            "schema": latest["schema"],
        }
        assert json.loads(latest["schema"]) == json.loads(PERMIT)  # docs and props kept
        assert client.get(f"/schemas/ids/{schema_id}").json() == {"schema": latest["schema"]}
        raw = client.get(f"/schemas/ids/{schema_id}/schema")
        assert json.loads(raw.text) == json.loads(PERMIT)
        versions = client.get(f"/schemas/ids/{schema_id}/versions").json()
        assert {"subject": s, "version": 1} in versions
        assert {"subject": other, "version": 1} in versions
        assert s in client.get("/subjects").json()


def test_lookup_answers_subject_id_version_and_schema(registry: Registry) -> None:
    s = subject()
    with registry.client(auth=True) as client:
        schema_id = client.post(f"/subjects/{s}/versions", json={"schema": PERMIT}).json()["id"]
        found = client.post(f"/subjects/{s}", json={"schema": PERMIT}).json()
        assert (found["subject"], found["id"], found["version"]) == (s, schema_id, 1)
        assert json.loads(found["schema"]) == json.loads(PERMIT)
        missing = client.post(f"/subjects/{s}", json={"schema": DEATH})
        assert (missing.status_code, missing.json()["error_code"]) == (404, 40403)
        unknown = client.post(f"/subjects/{subject()}", json={"schema": PERMIT})
        assert (unknown.status_code, unknown.json()["error_code"]) == (404, 40401)


def test_confluent_error_codes(registry: Registry) -> None:
    s = subject()
    with registry.client(auth=True) as client:
        client.post(f"/subjects/{s}/versions", json={"schema": PERMIT})
        cases = [
            (client.get(f"/subjects/{subject()}/versions"), 404, 40401),
            (client.get(f"/subjects/{s}/versions/7"), 404, 40402),
            (client.get("/schemas/ids/999999"), 404, 40403),
            (client.get(f"/subjects/{s}/versions/0"), 422, 42202),
            (client.get(f"/subjects/{s}/versions/one"), 422, 42202),
            (client.post(f"/subjects/{s}/versions", json={"schema": "{oops"}), 422, 42201),
            (
                client.post(
                    f"/subjects/{s}/versions", json={"schema": PERMIT, "schemaType": "PROTOBUF"}
                ),
                422,
                42201,
            ),
            (client.put(f"/config/{s}", json={"compatibility": "SIDEWAYS"}), 422, 42203),
            (client.get(f"/config/{s}"), 404, 40408),
        ]
        for response, status, code in cases:
            assert (response.status_code, response.json()["error_code"]) == (status, code), (
                response.request.url,
                response.text,
            )
            assert response.headers["content-type"] == CT
            assert response.json()["message"]


def test_incompatible_schema_is_refused_with_409_naming_the_field(registry: Registry) -> None:
    s = subject()
    breaking = permit_with({"name": "floor_count", "type": "int"})
    with registry.client(auth=True) as client:
        client.post(f"/subjects/{s}/versions", json={"schema": PERMIT})
        refused = client.post(f"/subjects/{s}/versions", json={"schema": breaking})
        assert refused.status_code == 409
        assert refused.json()["error_code"] == 409
        assert "floor_count" in refused.json()["message"]
        assert "BACKWARD" in refused.json()["message"]
        verdict = client.post(
            f"/compatibility/subjects/{s}/versions/latest?verbose=true", json={"schema": breaking}
        ).json()
        assert verdict["is_compatible"] is False
        assert any("floor_count" in m for m in verdict["messages"])
        fine = permit_with({"name": "floor_count", "type": "int", "default": 1})
        assert client.post(
            f"/compatibility/subjects/{s}/versions/1", json={"schema": fine}
        ).json() == {"is_compatible": True}
        # The mode is per subject: under FORWARD the field without default is fine.
        assert client.put(f"/config/{s}", json={"compatibility": "FORWARD"}).json() == {
            "compatibility": "FORWARD"
        }
        assert client.get(f"/config/{s}").json() == {"compatibilityLevel": "FORWARD"}
        assert client.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
        assert client.post(f"/subjects/{s}/versions", json={"schema": breaking}).status_code == 200
        assert client.get(f"/subjects/{s}/versions").json() == [1, 2]
        assert client.delete(f"/config/{s}").json() == {"compatibilityLevel": "FORWARD"}
        assert client.get(f"/config/{s}?defaultToGlobal=true").json() == {
            "compatibilityLevel": "BACKWARD"
        }


def test_soft_delete_hides_versions_unless_asked_and_permanent_needs_soft_first(
    registry: Registry,
) -> None:
    s = subject()
    v2 = permit_with({"name": "note", "type": "string", "default": ""})
    with registry.client(auth=True) as client:
        first = client.post(f"/subjects/{s}/versions", json={"schema": PERMIT}).json()["id"]
        second = client.post(f"/subjects/{s}/versions", json={"schema": v2}).json()["id"]
        not_soft = client.delete(f"/subjects/{s}/versions/2?permanent=true")
        assert not_soft.json()["error_code"] == 40407
        assert client.delete(f"/subjects/{s}/versions/latest").json() == 2
        assert client.get(f"/subjects/{s}/versions").json() == [1]
        assert client.get(f"/subjects/{s}/versions?deleted=true").json() == [1, 2]
        assert client.get(f"/subjects/{s}/versions/latest").json()["id"] == first
        assert client.get(f"/subjects/{s}/versions/2").json()["error_code"] == 40402
        assert client.get(f"/subjects/{s}/versions/2?deleted=true").json()["id"] == second
        assert client.get(f"/schemas/ids/{second}").status_code == 200  # ids stay readable
        assert client.delete(f"/subjects/{s}").json() == [1]
        assert s not in client.get("/subjects").json()
        assert s in client.get("/subjects?deleted=true").json()
        assert client.get(f"/subjects/{s}/versions").json()["error_code"] == 40401
        # Registering again after a soft delete: same id, a new version number.
        again = client.post(f"/subjects/{s}/versions", json={"schema": PERMIT}).json()
        assert again == {"id": first}
        assert client.get(f"/subjects/{s}/versions").json() == [3]
        client.delete(f"/subjects/{s}")
        assert client.delete(f"/subjects/{s}?permanent=true").json() == [1, 2, 3]
        assert s not in client.get("/subjects?deleted=true").json()


def test_requests_in_plain_json_and_octet_stream_are_accepted(registry: Registry) -> None:
    s = subject()
    body = json.dumps({"schema": DEATH}).encode()
    with registry.client(auth=True) as client:
        for content_type in ("application/json", "application/octet-stream", CT):
            response = client.post(
                f"/subjects/{s}/versions", content=body, headers={"Content-Type": content_type}
            )
            assert response.status_code == 200, (content_type, response.text)
        assert client.get(f"/subjects/{s}/versions").json() == [1]


def test_reads_can_require_the_token_and_a_generated_token_file_is_private(
    pg_url: str, tmp_path: Path
) -> None:
    locked = start_registry(pg_url, tmp_path, SIMPUL_REGISTRY_READ_AUTH="true")
    try:
        token_file = tmp_path / "registry-admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        refused = httpx.get(f"{locked.url}/subjects", timeout=10)
        assert (refused.status_code, refused.json()["error_code"]) == (401, 40101)
        allowed = httpx.get(
            f"{locked.url}/subjects", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert allowed.status_code == 200 and isinstance(allowed.json(), list)
    finally:
        locked.process.stop()


# --- storage on both backends -----------------------------------------------------------------


def test_concurrent_registrations_get_distinct_versions_and_one_id_per_schema(
    store_url: str,
) -> None:
    store = SchemaStore(make_engine(store_url))
    s = "simpul.in.race-value"
    schemas = [permit_with({"name": f"f{i}", "type": "int", "default": i}) for i in range(6)]
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def register(text: str) -> None:
        outcome = store.register_checked(s, text)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=register, args=(t,)) for t in schemas + schemas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v for _, v in set(results)) == [1, 2, 3, 4, 5, 6]
    assert len({i for i, _ in results}) == 6
    assert store.versions(s) == [1, 2, 3, 4, 5, 6]


def test_store_refuses_incompatible_schema_under_the_configured_mode(store_url: str) -> None:
    store = SchemaStore(make_engine(store_url))
    s = "simpul.in.modes-value"
    store.register_checked(s, PERMIT)
    breaking = permit_with({"name": "x", "type": "string"})
    with pytest.raises(IncompatibleSchema, match="x: field is missing"):
        store.register_checked(s, breaking)
    store.set_config(None, "NONE")
    assert store.compatibility(s) == "NONE"
    store.set_config(s, "FULL")
    assert store.compatibility(s) == "FULL"
    with pytest.raises(IncompatibleSchema):
        store.register_checked(s, breaking)
    store.delete_config(s)
    assert store.register_checked(s, breaking)[1] == 2


def test_metrics_need_the_installation_token_unless_opened(registry: Registry) -> None:
    with registry.client() as anonymous:
        assert anonymous.get("/metrics").status_code == 401  # SIMPUL_METRICS_OPEN is off
        scrape = anonymous.get("/metrics", headers=auth())
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    assert 'simpul_registry_requests_total{method="GET",status="200"}' in scrape.text


def test_sigterm_stops_the_registry_cleanly(pg_url: str, tmp_path: Path) -> None:
    running = start_registry(pg_url, tmp_path, SIMPUL_REGISTRY_ADMIN_TOKEN="s3cret-admin")
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(30) == 0  # not killed by the signal (-15)
