"""No open doors: Simpul's HTTP surfaces refuse anonymous callers and oversized bodies, and
show no secrets; the legitimate caller with the installation token is served."""

from __future__ import annotations

import httpx
import pytest

from simpul.httpauth import http_token, installation_secret
from simpul.redaction import REDACTED, redacted
from simpul.settings import Settings
from tests.support.signing import auth
from tests.support.stack import Stack


@pytest.mark.unit
def test_connector_config_comes_back_without_secrets() -> None:
    config = {
        "connector.class": "polling",
        "connection.url": "postgresql+psycopg://simpeg:s3cr3t-pw@db.bkpsdm.palukota.go.id/simpeg",
        "api_key": "abc",
        "secret_env": "SIMPUL_SIMPEG_SECRET",  # the name of a variable, not a secret
        "nested": {"password": "pw", "urls": ["https://user:pw@example.palukota.go.id/x"]},
        "table": "pegawai",
    }
    shown = redacted(config)
    assert "s3cr3t-pw" not in str(shown) and ":pw@" not in str(shown)
    assert shown["connection.url"] == (
        f"postgresql+psycopg://simpeg:{REDACTED}@db.bkpsdm.palukota.go.id/simpeg"
    )
    assert shown["api_key"] == REDACTED and shown["nested"]["password"] == REDACTED
    assert shown["secret_env"] == "SIMPUL_SIMPEG_SECRET" and shown["table"] == "pegawai"


@pytest.mark.unit
def test_http_token_is_generated_once_per_installation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, http_token="")
    assert http_token(settings) is None  # nothing ships with a token
    made = http_token(settings, create=True)
    assert made and len(made) >= 40 and http_token(settings) == made
    assert (tmp_path / "http-token").stat().st_mode & 0o777 == 0o600
    assert installation_secret(tmp_path / "http-token", create=True) == made


@pytest.mark.integration
def test_worker_pages_need_the_token(pg_stack: Stack) -> None:
    base = f"http://127.0.0.1:{pg_stack.settings.worker.web_port}"
    # Faust's own index and router pages too, not only Simpul's.
    for path in ("/health", "/status", "/status.html", "/metrics", "/", "/router/"):
        anonymous = httpx.get(base + path, timeout=10)
        assert anonymous.status_code == 401, path
        wrong = httpx.get(base + path, timeout=10, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
    assert httpx.get(base + "/health", headers=auth(), timeout=10).json()["store"] == "up"
    assert "simpul_events_received_total" in httpx.get(base + "/metrics", headers=auth()).text
    assert Settings().http.bind_host == "127.0.0.1"  # the default listens on loopback only


@pytest.mark.integration
def test_registry_refuses_an_oversized_anonymous_body(pg_stack: Stack) -> None:
    url = f"{pg_stack.settings.registry.url}/subjects/simpul.in.permit.issued-value/versions"
    big = b'{"schema": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    refused = httpx.post(url, content=big, timeout=30)
    assert refused.status_code == 413
    assert httpx.get(f"{pg_stack.settings.registry.url}/metrics", timeout=10).status_code == 401
    # The legitimate reader still reads.
    assert httpx.get(f"{pg_stack.settings.registry.url}/subjects", timeout=10).status_code == 200


@pytest.mark.unit
def test_a_published_development_secret_is_refused() -> None:
    from pydantic import ValidationError

    for field, value in (
        ("audit_key", "simpul-dev-audit-key-change-me"),
        ("registry_admin_token", "change-me-registry-admin-token"),
        ("http_token", "change-me"),
    ):
        with pytest.raises(ValidationError, match=f"{field}: a published development value"):
            Settings(**{field: value})
    assert Settings(audit_key="").audit.key == ""  # empty: generated per installation


@pytest.mark.unit
def test_audit_key_is_generated_per_installation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = Settings(data_dir=tmp_path / "a", audit_key="").audit_secret()
    again = Settings(data_dir=tmp_path / "a", audit_key="").audit_secret()
    other = Settings(data_dir=tmp_path / "b", audit_key="").audit_secret()
    assert first == again and first != other and len(first) >= 40
