"""The ACL plan derived from the topology is least privilege (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simpul.cli import acls
from simpul.topology.model import Topology

pytestmark = pytest.mark.unit


def granted(plan: list[acls.Grant], user: str, operation: str) -> set[str]:
    return {g.name for g in plan if g.principal == user and g.operation == operation}


def test_an_agency_writes_only_the_types_it_produces(topology: Topology) -> None:
    plan = acls.plan(topology)
    assert granted(plan, "agency-dpmptsp", "write") == {"simpul.in.permit.issued"}
    assert granted(plan, "agency-bkpsdm", "write") == {
        "simpul.in.hr.employee.updated",
        "simpul.in.hr.performance.assessed",
    }
    assert all(g.pattern == "literal" for g in plan if g.principal.startswith("agency-") and
               g.resource == "topic")  # fmt: skip


def test_an_agency_reads_only_its_own_inbox(topology: Topology) -> None:
    plan = acls.plan(topology)
    assert granted(plan, "agency-bkd", "read") == {"simpul.out.bkd", "agency-bkd"}
    assert granted(plan, "agency-dpmptsp", "read") == set()  # subscribes to nothing


def test_the_system_agency_has_no_user_so_nobody_can_publish_as_simpul(
    topology: Topology,
) -> None:
    users = acls.users(topology)
    assert "agency-simpul" not in users
    assert {"simpul-worker", "simpul-joins", "simpul-deliver"} <= set(users)
    derived = {"simpul.in.social.recipient.deceased", "simpul.in.hr.allowance.basis"}
    for user in users:
        if user.startswith("agency-"):
            assert not derived & granted(acls.plan(topology), user, "write"), user


def test_the_deliverer_cannot_read_the_full_events(topology: Topology) -> None:
    reads = granted(acls.plan(topology), "simpul-deliver", "read")
    assert "simpul.valid." not in reads and "simpul.in." not in reads


def test_passwords_are_generated_once_and_kept_private(topology: Topology, tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "kafka-users.json"
    first = acls.load_or_create_passwords(path, topology)
    again = acls.load_or_create_passwords(path, topology)
    assert first == again and set(first) == set(acls.users(topology))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(set(json.loads(path.read_text()).values())) == len(first)


def test_the_worker_writes_the_valid_topics_but_never_reads_them(topology: Topology) -> None:
    """It fans out from the ingest batch it decoded; reading simpul.valid.* is the joins'."""
    plan = acls.plan(topology)
    assert "simpul.valid." in granted(plan, "simpul-worker", "write")
    assert "simpul.valid." not in granted(plan, "simpul-worker", "read")
    assert "simpul.valid." in granted(plan, "simpul-joins", "read")
