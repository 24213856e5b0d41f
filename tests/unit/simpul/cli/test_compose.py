"""docker-compose.yml is valid Compose and uses only settings Simpul actually has."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from simpul.cli import acls
from simpul.settings import Settings
from simpul.topology.model import load_topology
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _compose_client() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_validates(tmp_path: Path) -> None:
    """Valid with the generated env file; refused, naming the command, without it."""
    from simpul.cli.secrets import COMPOSE_SECRETS, init_env_file

    client = _compose_client()
    if client is None:
        pytest.skip(
            "no Compose client (docker compose or docker-compose) on this machine; "
            "`apt-get install docker-compose` to run this check"
        )
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = subprocess.run(
        [*client, "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean,
    )
    assert refused.returncode != 0 and "run simpul secrets init" in refused.stderr
    env_file = tmp_path / ".env"
    init_env_file(env_file, [*COMPOSE_SECRETS, "SIMPUL_WEBHOOK_SECRET_DINSOS"])
    result = subprocess.run(
        [*client, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean,
    )
    assert result.returncode == 0, result.stderr


def test_compose_stack_has_kafka_postgres_and_workers_with_real_settings() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "setup", "worker"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    known = {f"SIMPUL_{name.upper()}" for name in Settings.setting_fields()}
    for name in ("setup", "worker"):
        env = services[name]["environment"]
        assert set(env) <= known, f"{name}: unknown settings {set(env) - known}"
        assert env["SIMPUL_DATABASE_URL"].startswith("postgresql")
    for name, service in services.items():
        assert "healthcheck" in service or name in {"setup", "migrate"}, (
            f"{name} has no healthcheck"
        )
    assert "container_name" not in services["worker"]  # would prevent --scale worker=N


SIMPUL_SERVICES = (
    "migrate",
    "setup",
    "worker",
    "joins",
    "registry",
    "ingress",
    "connect",
    "deliverer",
    "console",
)
ONE_SHOT = ("migrate", "setup")


def test_compose_file_matches_the_compose_specification_schema() -> None:
    import json

    import jsonschema

    schema = json.loads((REPO_ROOT / "deploy" / "compose-spec.json").read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []
    # The schema is strict: it does catch a mistake.
    broken = {**compose, "services": {**compose["services"], "worker": {"scale_me": 3}}}
    assert any("scale_me" in e.message for e in validator.iter_errors(broken))


def test_full_stack_services_with_healthchecks_and_scalable_workers() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(SIMPUL_SERVICES) | {"kafka", "postgres", "prometheus", "grafana"} <= set(services)
    known = {f"SIMPUL_{name.upper()}" for name in Settings.setting_fields()}
    topology = load_topology(REPO_ROOT / "topology" / "palu.yaml")
    secrets = {s.webhook.secret_env for s in topology.subscriptions if s.webhook}
    assert secrets <= set(services["deliverer"]["environment"]), "a webhook secret is missing"
    for name in SIMPUL_SERVICES:
        env = services[name]["environment"]
        extra = {"SIMPUL_WEBHOOK_SECRET_DINSOS"} if name == "deliverer" else set()
        if name == "migrate":  # `simpul acls apply` gives each process its password
            extra = {f"SIMPUL_KAFKA_PASSWORD_{p.upper()}" for p in acls.PROCESSES}
        assert set(env) <= known | extra, f"{name}: unknown settings {set(env) - known}"
        if name in ONE_SHOT:
            continue
        assert "healthcheck" in services[name], name
        wants = "migrate" if name == "registry" else "setup"
        assert services[name]["depends_on"][wants]["condition"] == (
            "service_completed_successfully"
        )
    for name in ("worker", "joins", "deliverer"):  # scaled: no fixed name, no host port
        assert "container_name" not in services[name] and "ports" not in services[name]
    assert services["setup"]["depends_on"]["registry"]["condition"] == "service_healthy"
    setup = " ".join(services["migrate"]["entrypoint"] + services["setup"]["entrypoint"])
    for step in ("db upgrade", "topics apply", "schemas register"):
        assert step in setup
    prometheus = " ".join(services["prometheus"]["volumes"])
    assert "deploy/prometheus/alerts.yml" in prometheus
    grafana = " ".join(services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in grafana and "deploy/grafana/dashboards" in grafana
    for path in ("deploy/prometheus/prometheus.yml", "deploy/grafana/dashboards/simpul.json"):
        assert (REPO_ROOT / path).is_file()
    scrape = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    # Every scaled replica is scraped: DNS discovery of the service name, not one static host.
    assert jobs["simpul-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
    assert jobs["simpul-joins"]["dns_sd_configs"][0]["names"] == ["joins"]


def test_compose_commands_are_simpul_commands() -> None:
    from typer.main import get_command

    from simpul.cli.main import app

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    wanted = {
        services[name]["command"][0] for name in SIMPUL_SERVICES if "command" in services[name]
    }
    assert {"worker", "registry", "joins", "ingress", "connect", "deliver", "console"} <= wanted
    assert sorted(wanted - commands) == [], "a compose service runs a command simpul lacks"


def test_compose_has_no_default_secret_and_refuses_to_start_without_them() -> None:
    """Every secret comes from the env file `simpul secrets init` writes, as ${VAR:?...}."""
    import re

    from simpul.cli.secrets import COMPOSE_SECRETS
    from simpul.installation import KNOWN_DEVELOPMENT_SECRETS

    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?[^}]+\}", text))
    topology = load_topology(REPO_ROOT / "topology" / "palu.yaml")
    webhook = {s.webhook.secret_env for s in topology.subscriptions if s.webhook}
    assert set(COMPOSE_SECRETS) | webhook <= required
    assert not re.findall(r"\$\{\w+:-[^}]*\}", text), "a variable falls back to a default"
    services = yaml.safe_load(text)["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        for variable, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY$", variable):
                assert str(value) not in KNOWN_DEVELOPMENT_SECRETS, f"{name}.{variable}"
    assert "simpul:simpul@" not in text
    # The private signing keys are mounted read-only into the signers, never built in.
    for name in ("ingress", "connect", "joins"):
        assert any(v.endswith(":/run/simpul/keys:ro") for v in services[name]["volumes"]), name
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "var" not in re.findall(r"^COPY (\S+)", dockerfile, re.M)
    assert ".env" in (REPO_ROOT / ".dockerignore").read_text()


def test_secrets_init_writes_a_private_env_file_and_keeps_what_is_there(tmp_path: Path) -> None:
    import stat

    from simpul.cli.secrets import COMPOSE_SECRETS, init_env_file, read_env_file

    env_file = tmp_path / ".env"
    env_file.write_text("SIMPUL_AUDIT_KEY=change-me-audit-key-of-the-city\nOTHER=1\n")
    added = init_env_file(env_file, [*COMPOSE_SECRETS, "SIMPUL_WEBHOOK_SECRET_DINSOS"])
    assert set(added) == {*COMPOSE_SECRETS, "SIMPUL_WEBHOOK_SECRET_DINSOS"}  # dev value replaced
    values = read_env_file(env_file)
    assert values["OTHER"] == "1" and all(len(values[n]) >= 40 for n in added)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert init_env_file(env_file, list(COMPOSE_SECRETS)) == []  # again: nothing changes
    assert read_env_file(env_file) == values
