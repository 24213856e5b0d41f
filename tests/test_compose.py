"""docker-compose.yml is valid Compose and uses only settings Simpul actually has."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from simpul.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _compose_client() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_validates() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip(
            "no Compose client (docker compose or docker-compose) on this machine; "
            "`apt-get install docker-compose` to run this check"
        )
    result = subprocess.run(
        [*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_compose_stack_has_kafka_postgres_and_workers_with_real_settings() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "setup", "worker"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    known = {f"SIMPUL_{name.upper()}" for name in Settings.model_fields}
    for name in ("setup", "worker"):
        env = services[name]["environment"]
        assert set(env) <= known, f"{name}: unknown settings {set(env) - known}"
        assert env["SIMPUL_DATABASE_URL"].startswith("postgresql")
    for name, service in services.items():
        assert "healthcheck" in service or name == "setup", f"{name} has no healthcheck"
    assert "container_name" not in services["worker"]  # would prevent --scale worker=N
