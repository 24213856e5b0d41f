"""Broker identity on Apache Kafka: one SASL/SCRAM user per agency and per Simpul process, and
least-privilege ACLs derived from the topology; `simpul acls apply` makes them so, idempotently.

An agency may write only `simpul.in.<type>` of the types it produces and read only its own
inbox `simpul.out.<agency>` (with consumer groups named `agency-<code>…`). Each process gets
what its stage needs and nothing else; the admin user (PLAIN, the broker's super user) declares
topics and creates users.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from simpul.cli.common import checked_settings, checked_topology, console, err
from simpul.topology.model import Topology
from simpul.topology.subscriptions import inbox_topic

SCRAM_ITERATIONS = 8192

#: Simpul's processes, each its own broker identity. Their consumer groups start with the
#: worker id (`simpul` by default): `<worker_id>.ingest`, `.fanout`, `.joins`, `.deliver`.
PROCESSES = ("worker", "joins", "deliver", "ingress", "connect", "console")


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """One ACL: `principal` may `operation` the `resource` (`pattern`: literal or prefixed)."""

    principal: str  # a SASL user name, without "User:"
    resource: str  # "topic" | "group"
    name: str
    pattern: str  # "literal" | "prefixed"
    operation: str  # "read" | "write" | "describe"


def agency_user(code: str) -> str:
    return f"agency-{code}"


def process_user(process: str) -> str:
    return f"simpul-{process}"


def users(topology: Topology) -> list[str]:
    """Every SASL user the topology needs: its agencies' and Simpul's processes'."""
    agencies = [agency_user(a.code) for a in topology.agencies if not a.system]
    return sorted(agencies) + [process_user(p) for p in PROCESSES]


def _topic(principal: str, name: str, pattern: str, *operations: str) -> list[Grant]:
    ops = {*operations, "describe"}
    return [Grant(principal, "topic", name, pattern, op) for op in sorted(ops)]


def _group(principal: str, prefix: str) -> Grant:
    return Grant(principal, "group", prefix, "prefixed", "read")


def plan(topology: Topology, worker_id: str = "simpul") -> list[Grant]:
    """The ACLs, least privilege, as the topology says; sorted and free of repeats."""
    grants: list[Grant] = []
    for agency in topology.agencies:
        if agency.system:
            continue
        user = agency_user(agency.code)
        for event_type in topology.event_types:
            if event_type.may_produce(agency.code):
                grants += _topic(user, event_type.topic("in"), "literal", "write")
        if any(s.agency == agency.code for s in topology.subscriptions):
            grants += _topic(user, inbox_topic(agency.code), "literal", "read")
            grants.append(_group(user, user))

    worker = process_user("worker")
    grants += _topic(worker, "simpul.in.", "prefixed", "read")
    grants += _topic(worker, "simpul.valid.", "prefixed", "write")  # fans out from its own batch
    for prefix in ("simpul.dlq.", "simpul.out."):
        grants += _topic(worker, prefix, "prefixed", "write")
    grants.append(_group(worker, worker_id))

    joins = process_user("joins")
    grants += _topic(joins, "simpul.valid.", "prefixed", "read")
    grants += _topic(joins, "simpul.join.", "prefixed", "read", "write")
    for prefix in ("simpul.in.", "simpul.dlq."):
        grants += _topic(joins, prefix, "prefixed", "write")
    grants.append(_group(joins, worker_id))

    deliver = process_user("deliver")
    grants += _topic(deliver, "simpul.out.", "prefixed", "read")
    grants += _topic(deliver, "simpul.dlq.out.", "prefixed", "write")
    grants.append(_group(deliver, worker_id))

    # The gateways publish on behalf of the agencies they authenticated (and sign as such).
    for gateway in ("ingress", "connect"):
        user = process_user(gateway)
        grants += _topic(user, "simpul.in.", "prefixed", "write")
    grants += _topic(process_user("connect"), "simpul.dlq.", "prefixed", "write")

    # The console lists, inspects and replays dead letters (back to simpul.in.<type>).
    console = process_user("console")
    grants += _topic(console, "simpul.dlq.", "prefixed", "read")
    grants += _topic(console, "simpul.in.", "prefixed", "write")
    grants.append(_group(console, "simpul-dlq-replay."))
    return sorted(set(grants))


# --- credentials: generated once per installation, kept outside the repository ---


def load_or_create_passwords(path: Path, topology: Topology) -> dict[str, str]:
    """The users file (JSON, mode 0600): existing passwords kept, missing users added. A
    process's password given as SIMPUL_KAFKA_PASSWORD_<PROCESS> (docker-compose.yml's env
    file, `simpul secrets init`) wins, so the process and its broker user agree."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for process in PROCESSES:
        given = os.environ.get(f"SIMPUL_KAFKA_PASSWORD_{process.upper()}")
        if given and known.get(process_user(process)) != given:
            known[process_user(process)] = given
            changed = True
    for user in users(topology):
        if user not in known:
            known[user] = secrets.token_urlsafe(24)
            changed = True
    if changed or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(known, out, indent=2, sort_keys=True)
        path.chmod(0o600)
    return known


@dataclass(frozen=True, slots=True)
class AclReport:
    users: int
    acls_created: int
    acls_existing: int


def apply(topology: Topology, admin_options: dict[str, object], passwords: dict[str, str],
          worker_id: str = "simpul") -> AclReport:  # fmt: skip
    """Upsert every user's SCRAM credential and create the missing ACLs; never deletes."""
    from kafka import KafkaAdminClient
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = KafkaAdminClient(client_id="simpul-acls", **admin_options)
    try:
        wanted = users(topology)
        admin.alter_user_scram_credentials(
            [
                UserScramCredentialUpsertion(
                    user, ScramMechanism.SCRAM_SHA_512, passwords[user], SCRAM_ITERATIONS
                )
                for user in wanted
            ]
        )
        existing_filter = ACLFilter(
            principal=None,
            host="*",
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(
                ResourceType.ANY, None, ACLResourcePatternType.ANY
            ),
        )
        have, _error = admin.describe_acls(existing_filter)
        present = {
            (a.principal, a.resource_pattern.resource_type, a.resource_pattern.resource_name,
             a.resource_pattern.pattern_type, a.operation)
            for a in have
        }  # fmt: skip
        types = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
        patterns = {
            "literal": ACLResourcePatternType.LITERAL,
            "prefixed": ACLResourcePatternType.PREFIXED,
        }
        ops = {
            "read": ACLOperation.READ,
            "write": ACLOperation.WRITE,
            "describe": ACLOperation.DESCRIBE,
        }
        missing = []
        grants = plan(topology, worker_id)
        for g in grants:
            key = (f"User:{g.principal}", types[g.resource], g.name, patterns[g.pattern],
                   ops[g.operation])  # fmt: skip
            if key in present:
                continue
            resource = ResourcePattern(types[g.resource], g.name, patterns[g.pattern])
            missing.append(
                ACL(
                    principal=f"User:{g.principal}",
                    host="*",
                    operation=ops[g.operation],
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=resource,
                )
            )
        if missing:
            result = admin.create_acls(missing)
            failed = result.get("failed") if isinstance(result, dict) else None
            if failed:
                raise RuntimeError(f"the broker refused {len(failed)} ACLs: {failed[:3]}")
        return AclReport(len(wanted), len(missing), len(grants) - len(missing))
    finally:
        admin.close()


# --- the commands ---------------------------------------------------------------------------

acls_app = typer.Typer(
    help="Broker users and ACLs on Apache Kafka, derived from the topology.", no_args_is_help=True
)


@acls_app.command("plan")
def acls_plan() -> None:
    """Show the users and ACLs the topology asks for (least privilege), without a broker."""
    settings = checked_settings()
    topology = checked_topology(settings)
    table = Table("user", "operations", "resource", "name", "pattern")
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for grant in plan(topology, settings.worker.id):
        key = (grant.principal, grant.resource, grant.name, grant.pattern)
        grouped.setdefault(key, []).append(grant.operation)
    for (user, resource, name, pattern), operations in grouped.items():
        table.add_row(user, ",".join(operations), resource, name, pattern)
    console.print(table)


@acls_app.command("apply")
def acls_apply() -> None:
    """Create a SCRAM user per agency and per process, and their ACLs; safe to run again.

    Runs as the broker's admin user (SIMPUL_KAFKA_USERNAME/PASSWORD, SASL PLAIN); passwords
    are generated once into SIMPUL_KAFKA_USERS_FILE (mode 0600) and kept there."""
    from simpul.kafka_clients import kafka_python_options

    settings = checked_settings()
    if settings.kafka.security_protocol == "PLAINTEXT":
        err.print(
            "[red]SIMPUL_KAFKA_SECURITY_PROTOCOL is PLAINTEXT[/red]: ACLs need a secured Apache "
            "Kafka (SASL_PLAINTEXT or SASL_SSL) and its admin user in SIMPUL_KAFKA_USERNAME"
        )
        raise typer.Exit(2)
    topology = checked_topology(settings)
    passwords = load_or_create_passwords(settings.kafka.users_file, topology)
    report = apply(topology, kafka_python_options(settings), passwords, settings.worker.id)
    console.print(
        f"{report.users} users; ACLs: {report.acls_created} created, "
        f"{report.acls_existing} already there. Passwords: {settings.kafka.users_file}"
    )
