"""Every CLI command has --help, and the demo runs end to end, twice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from simpul.cli.main import app

runner = CliRunner()


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for info in group.registered_commands:
        found.append((*prefix, info.name or info.callback.__name__))  # type: ignore[union-attr]
    for sub in group.registered_groups:
        found.append((*prefix, sub.name))  # type: ignore[arg-type]
        found += _commands(sub.typer_instance, (*prefix, sub.name))  # type: ignore[arg-type]
    return found


COMMANDS = _commands(app)


@pytest.mark.unit
def test_all_expected_commands_exist() -> None:
    expected = {
        ("broker",),
        ("worker",),
        ("simulate",),
        ("demo",),
        ("topics", "apply"),
        ("db", "upgrade"),
        ("schemas", "register"),
        ("dlq", "list"),
        ("dlq", "replay"),
        ("topology", "check"),
        ("schemas", "check"),
        ("registry",),
        ("joins",),
        ("connect",),
        ("connectors", "list"),
        ("connectors", "status"),
        ("connectors", "pause"),
        ("connectors", "resume"),
        ("connectors", "restart"),
        ("ingress",),
        ("ingress", "keys", "create"),
        ("deliver",),
        ("audit", "verify"),
        ("audit", "subject"),
        ("status",),
        ("export",),
        ("init",),
        ("readiness",),
        ("staff", "reconcile"),
        ("payroll", "control"),
        ("console",),
        ("acls", "plan"),
        ("acls", "apply"),
        ("console", "users", "add"),
        ("console", "users", "list"),
        ("console", "users", "remove"),
    }
    assert expected <= set(COMMANDS)


@pytest.mark.unit
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.unit
def test_invalid_topology_is_reported_with_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "t.yaml"
    bad.write_text("city: X\nregion_code: '7271'\nagencies: []\nevent_types: []\n")
    result = runner.invoke(app, ["topology", "check", str(bad)])
    assert result.exit_code == 2
    assert "agencies: List should have at least 1 item" in result.output


@pytest.mark.unit
def test_broker_refuses_a_taken_port() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = runner.invoke(app, ["broker", "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} is already in use" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_twice_and_balances() -> None:
    env = dict(os.environ)
    env.pop("SIMPUL_DATABASE_URL", None)
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "simpul", "demo", "--duration", "4", "--rate", "50"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "every received message is stored" in result.stdout
        assert "hash chains intact" in result.stdout
        assert "agencies connected" in result.stdout
        assert "broker stopped" in result.stdout
