"""`simpul secrets init`: this installation's secrets, in the env file Compose reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from simpul.cli.acls import PROCESSES
from simpul.cli.common import checked_settings, checked_topology, console
from simpul.settings import PROJECT_ROOT

secrets_app = typer.Typer(
    help="Secrets of this installation (never shipped).", no_args_is_help=True
)

#: The secrets docker-compose.yml refuses to start without.
COMPOSE_SECRETS = (
    "SIMPUL_REGISTRY_ADMIN_TOKEN",
    "SIMPUL_AUDIT_KEY",
    "SIMPUL_HTTP_TOKEN",
    "POSTGRES_PASSWORD",
    # Apache Kafka's admin (SASL PLAIN) and each process's SCRAM user (`simpul acls apply`).
    "SIMPUL_KAFKA_ADMIN_PASSWORD",
    *(f"SIMPUL_KAFKA_PASSWORD_{p.upper()}" for p in PROCESSES),
)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                values[name.strip()] = value.strip()
    return values


def init_env_file(path: Path, names: list[str]) -> list[str]:
    """Add a fresh secret for every name the file lacks (existing ones are kept, so running
    it again changes nothing); the file is mode 0600. Returns the names added."""
    from simpul.installation import known_development_secret, new_secret

    values = read_env_file(path)
    added = []
    for name in names:
        if not values.get(name) or known_development_secret(values[name]):
            values[name] = new_secret()
            added.append(name)
    text = (
        "# Secrets of this Simpul installation, made by `simpul secrets init`.\n"
        "# Never commit this file; docker compose reads it and refuses to start without it.\n"
        + "".join(f"{name}={value}\n" for name, value in values.items())
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return added


@secrets_app.command("init")
def secrets_init(
    env_file: Annotated[
        Path, typer.Option(help="The env file to write (Compose reads .env beside it)")
    ] = PROJECT_ROOT / ".env",
    keys: Annotated[
        bool, typer.Option(help="Also create signing keys for every agency and gateway")
    ] = True,
) -> None:
    """Generate the registry admin token, audit key, HTTP token, database password and every
    webhook secret the topology names, into ENV_FILE (0600); keep those already there."""
    from simpul.cli.keys import installation_owners
    from simpul.signing import ensure_keys

    settings = checked_settings()
    topology = checked_topology(settings)
    webhook_envs = [s.webhook.secret_env for s in topology.subscriptions if s.webhook]
    added = init_env_file(env_file, [*COMPOSE_SECRETS, *webhook_envs])
    console.print(
        f"{env_file}: {len(added)} secret(s) generated"
        + (f" ({', '.join(added)})" if added else "; all were there")
    )
    if keys:
        made = ensure_keys(
            settings.public_keys_path, settings.paths.keys_dir, installation_owners(topology)
        )
        console.print(
            f"{len(made)} signing key(s) created; public keys in {settings.public_keys_path} "
            f"(commit it), private keys in {settings.paths.keys_dir}"
        )
