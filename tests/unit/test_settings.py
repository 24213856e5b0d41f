"""Settings: sections read from the same SIMPUL_* variables as ever; nothing misspelt passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import simpul
from simpul.settings import Settings, setting_env_names

pytestmark = pytest.mark.unit

# The variables as they were before the sections (docs/settings.md of 553be3c): a contract
# that docker-compose.yml, deploy/, the README and every installation's environment rely on.
CONTRACT = """
SIMPUL_KAFKA_BOOTSTRAP SIMPUL_BROKER_ENGINE SIMPUL_KAFKA_SECURITY_PROTOCOL
SIMPUL_KAFKA_SASL_MECHANISM SIMPUL_KAFKA_USERNAME SIMPUL_KAFKA_PASSWORD SIMPUL_KAFKA_SSL_CAFILE
SIMPUL_KAFKA_USERS_FILE SIMPUL_KAFKA_DATA_DIR SIMPUL_KAFKA_CACHE_DIR SIMPUL_BROKER_PORT
SIMPUL_DATABASE_URL SIMPUL_TOPOLOGY_FILE SIMPUL_SCHEMAS_DIR SIMPUL_DATA_DIR SIMPUL_KEYS_DIR
SIMPUL_PUBLIC_KEYS_FILE SIMPUL_BIND_HOST SIMPUL_HTTP_TOKEN SIMPUL_METRICS_OPEN
SIMPUL_HTTP_MAX_BODY_BYTES SIMPUL_WORKER_WEB_PORT SIMPUL_WORKER_ID SIMPUL_BATCH_SIZE
SIMPUL_BATCH_SECONDS SIMPUL_DEDUP_WINDOW_BYTES SIMPUL_DLQ_LIMIT_SHARE SIMPUL_DLQ_LIMIT_WINDOW
SIMPUL_DLQ_LIMIT_MIN_EVENTS SIMPUL_DLQ_LIMIT_PAUSE SIMPUL_DLQ_LIMIT_COOLDOWN_S
SIMPUL_SESSION_TIMEOUT_S SIMPUL_REBALANCE_TIMEOUT_S SIMPUL_FETCH_MAX_WAIT_MS SIMPUL_FETCH_MIN_BYTES
SIMPUL_STORE_RETRY_MAX_S SIMPUL_STOP_TIMEOUT_S SIMPUL_LOG_LEVEL SIMPUL_REGISTRY_URL
SIMPUL_REGISTRY_PORT SIMPUL_INGRESS_PORT SIMPUL_CONNECT_PORT SIMPUL_DELIVER_WEB_PORT
SIMPUL_JOIN_WAIT_S SIMPUL_JOIN_CHECK_S SIMPUL_JOINS_WEB_PORT SIMPUL_REGISTRY_ADMIN_TOKEN
SIMPUL_REGISTRY_READ_AUTH SIMPUL_REGISTRY_CACHE_TTL_S SIMPUL_REGISTRY_TIMEOUT_S
SIMPUL_REGISTRY_RETRY_S SIMPUL_STATUS_REFRESH_S SIMPUL_CONNECTORS_DIR
SIMPUL_INGRESS_MAX_BODY_BYTES SIMPUL_INGRESS_MAX_BATCH SIMPUL_INGRESS_RATE_PER_S
SIMPUL_INGRESS_RATE_BURST SIMPUL_INGRESS_IDEMPOTENCY_S SIMPUL_INGRESS_IDEMPOTENCY_BYTES
SIMPUL_INGRESS_ACK_TIMEOUT_S SIMPUL_CONNECT_FILE_MAX_BYTES SIMPUL_CONNECT_POLL_INTERVAL_S
SIMPUL_FANOUT_ENABLED SIMPUL_AUDIT_KEY SIMPUL_AUDIT_HEADS_FILE SIMPUL_AUDIT_EXPORT_S
SIMPUL_DELIVER_MAX_ATTEMPTS SIMPUL_DELIVER_RETRY_BASE_S SIMPUL_DELIVER_RETRY_MAX_S
SIMPUL_DELIVER_TIMEOUT_S SIMPUL_DELIVER_CONCURRENCY SIMPUL_DELIVER_MAX_PENDING
SIMPUL_CONSOLE_PORT SIMPUL_CONSOLE_SECRET SIMPUL_CONSOLE_USERS_FILE SIMPUL_CONSOLE_CONNECT_URL
SIMPUL_CONSOLE_HEALTH_URLS SIMPUL_CONSOLE_REFRESH_S SIMPUL_CONSOLE_SESSION_HOURS
""".split()  # noqa: SIM905  (a block of names reads better than a list of strings)


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's own SIMPUL_* variables (keys, tokens of the test stacks) are not read."""
    for name in list(os.environ):
        if name.upper() in setting_env_names():
            monkeypatch.delenv(name)


def test_every_variable_of_the_contract_is_still_a_setting() -> None:
    assert setting_env_names() == set(CONTRACT)


def test_a_variable_is_read_into_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMPUL_KAFKA_BOOTSTRAP", "kafka-1.palukota.go.id:9092")
    monkeypatch.setenv("SIMPUL_JOIN_WAIT_S", "45")
    monkeypatch.setenv("SIMPUL_BATCH_SIZE", "250")
    monkeypatch.setenv("SIMPUL_METRICS_OPEN", "true")
    settings = Settings()
    assert settings.kafka.bootstrap == "kafka-1.palukota.go.id:9092"
    assert settings.joins.wait_s == 45.0
    assert settings.consumer.batch_size == 250
    assert settings.http.metrics_open is True


def test_the_engine_chooses_the_consumers_fetch_and_a_setting_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Kafka: short fetches, because a drained partition waits for the fetch in flight.
    kafka = Settings(broker_engine="kafka").client_tuning().consumer_options()
    assert (kafka["fetch_max_wait_ms"], kafka["fetch_min_bytes"]) == (20, 1)
    embedded = Settings(broker_engine="embedded").client_tuning().consumer_options()
    assert (embedded["fetch_max_wait_ms"], embedded["fetch_min_bytes"]) == (100, 1)
    monkeypatch.setenv("SIMPUL_FETCH_MIN_BYTES", "16384")
    monkeypatch.setenv("SIMPUL_FETCH_MAX_WAIT_MS", "250")
    tuned = Settings(broker_engine="kafka").client_tuning().consumer_options()
    assert (tuned["fetch_max_wait_ms"], tuned["fetch_min_bytes"]) == (250, 16384)
    monkeypatch.setenv("SIMPUL_FETCH_MIN_BYTES", "0")
    with pytest.raises(ValidationError, match="fetch_min_bytes"):
        Settings()


def test_a_keyword_takes_the_public_name_and_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMPUL_REGISTRY_URL", "http://registry.from.env:8081")
    settings = Settings(registry_url="http://registry.from.keyword:8081", worker_id="palu-1")
    assert settings.registry.url == "http://registry.from.keyword:8081"
    assert settings.worker.id == "palu-1"
    assert settings.flat()["registry_url"] == "http://registry.from.keyword:8081"


def test_a_misspelt_variable_is_refused_naming_the_nearest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMPUL_KAFKA_BOOTSTRAPP", "127.0.0.1:9092")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "SIMPUL_KAFKA_BOOTSTRAPP is not a Simpul setting" in message
    assert "did you mean SIMPUL_KAFKA_BOOTSTRAP?" in message


def test_an_unknown_keyword_is_refused_naming_the_nearest() -> None:
    with pytest.raises(ValidationError, match="'batch_sise' is not a Simpul setting; did you mean"):
        Settings(batch_sise=10)
    with pytest.raises(ValidationError, match="'kafka' is not a Simpul setting"):
        Settings(kafka={"kafka_bootstrap": "x:1"})  # sections are read, not given


@pytest.mark.parametrize(
    "name",
    [
        "SIMPUL_WEBHOOK_SECRET_DINSOS",  # a subscription's secret_env (palu.yaml)
        "SIMPUL_BKN_TOKEN",  # a REST connector's auth.token.env (kupang.yaml)
        "SIMPUL_KAFKA_PASSWORD_WORKER",  # `simpul acls apply` hands it to the worker
        "SIMPUL_KAFKA_ADMIN_PASSWORD",  # docker-compose.yml's Kafka
        "SIMPUL_TEST_BROKER",
        "SIMPUL_FAIL_ON_SKIP",
    ],
)
def test_names_kept_for_other_uses_are_let_be(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "x")
    assert Settings().kafka.bootstrap  # no error


def test_a_secret_name_close_to_a_setting_is_taken_for_it_misspelt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMPUL_HTTPS_TOKEN", "d0e8c1a4")
    with pytest.raises(ValidationError, match="did you mean SIMPUL_HTTP_TOKEN"):
        Settings()


def test_errors_show_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused setting may hold a secret: the error names the setting, never its value."""
    monkeypatch.setenv("SIMPUL_KAFKA_PASSWORDD", "sangat-rahasia-1")
    with pytest.raises(ValidationError) as refused:
        Settings(kafka_password="sangat-rahasia-2", worker_web_port=0)
    assert "rahasia" not in str(refused.value)
    monkeypatch.delenv("SIMPUL_KAFKA_PASSWORDD")
    with pytest.raises(ValidationError) as bad:
        Settings(kafka_password="sangat-rahasia-2", worker_web_port=0)
    assert "worker_web_port" in str(bad.value) and "rahasia" not in str(bad.value)


def test_a_copy_is_validated_and_does_not_reread_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(batch_size=100)
    monkeypatch.setenv("SIMPUL_BATCH_SIZE", "999")
    copy = settings.model_copy(update={"registry_retry_s": 0.5})
    assert (copy.registry.retry_s, copy.consumer.batch_size) == (0.5, 100)
    assert settings.replace(bind_host="0.0.0.0").http.bind_host == "0.0.0.0"
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        settings.model_copy(update={"batch_size": 0})
    with pytest.raises(ValidationError, match="did you mean registry_retry_s"):
        settings.model_copy(update={"registry_retri_s": 0.5})


def test_default_paths_are_under_the_working_directory_not_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.paths.topology_file == tmp_path / "topology" / "palu.yaml"
    assert settings.paths.schemas_dir == tmp_path / "schemas"
    assert settings.paths.data_dir == tmp_path / "var"
    assert settings.kafka.data_dir == tmp_path / "var" / "kafka"
    assert settings.store.database_url == f"sqlite:///{tmp_path / 'var' / 'simpul.db'}"
    for name, value in settings.flat().items():
        if isinstance(value, Path):
            assert value.is_relative_to(tmp_path), name
    # A relative path given is relative to the working directory too, pinned at start.
    assert Settings(keys_dir="kunci").paths.keys_dir == tmp_path / "kunci"


def test_the_command_line_refuses_a_misspelt_variable_with_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPUL_")}
    env.update(SIMPUL_WORKER_WEB_PORTS="6066", COLUMNS="200")  # rich wraps at 80
    run = subprocess.run(
        [sys.executable, "-m", "simpul", "topology", "check"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(simpul.__file__).resolve().parent.parent,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "SIMPUL_WORKER_WEB_PORTS" in run.stderr
    assert "SIMPUL_WORKER_WEB_PORT?" in run.stderr


def test_secrets_never_show_in_the_settings_repr() -> None:
    """A settings object in a log line or a traceback carries no password, token or key."""
    secrets = {
        "kafka_password": "kafka-pw-5f1e2d",
        "http_token": "http-token-9c8b7a",
        "registry_admin_token": "registry-token-4d3c2b",
        "audit_key": "audit-key-0123456789abcdef",
        "console_secret": "console-secret-a1b2c3",
    }
    settings = Settings(**secrets)
    shown = repr(settings) + str(settings)
    assert [name for name, value in secrets.items() if value in shown] == []
    assert settings.kafka.password == secrets["kafka_password"]  # still there to be used
