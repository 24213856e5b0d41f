"""`simpul schemas register` and `simpul schemas check`, as CI and operators run them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simpul import dbmigrate
from simpul.cli.services.broker import free_port
from simpul.topology.model import load_topology
from tests.support.paths import REPO_ROOT
from tests.support.registry import Registry, start_registry
from tests.support.stack import SCHEMAS_DIR, TOPOLOGY_FILE

pytestmark = pytest.mark.integration

TOKEN = "cli-admin-token"


def run(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simpul", *args],
        env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of the schemas, committed."""
    shutil.copytree(SCHEMAS_DIR, tmp_path / "schemas")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "schemas")
    git(tmp_path, "commit", "-qm", "schemas")
    return tmp_path


def edit_permit(schemas: Path, field: dict[str, object]) -> None:
    path = schemas / "permit.issued.v1.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append(field)
    path.write_text(json.dumps(schema, indent=2))


def no_registry_env(schemas: Path) -> dict[str, str]:
    return {
        "SIMPUL_SCHEMAS_DIR": str(schemas),
        "SIMPUL_TOPOLOGY_FILE": str(TOPOLOGY_FILE),  # defaults are relative to the cwd
        "SIMPUL_REGISTRY_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }


def test_check_passes_on_a_clean_checkout_without_a_registry(repo: Path) -> None:
    result = run(no_registry_env(repo / "schemas"), "schemas", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "git HEAD" in result.stdout
    assert "BREAKS" not in result.stdout


def test_check_fails_on_a_breaking_change_against_head_naming_file_field_and_readers(
    repo: Path,
) -> None:
    edit_permit(repo / "schemas", {"name": "floor_count", "type": "int"})
    result = run(no_registry_env(repo / "schemas"), "schemas", "check")
    assert result.returncode == 1
    out = " ".join((result.stdout + result.stderr).split())
    assert "permit.issued.v1.avsc" in out
    assert "floor_count: field is missing on one side and has no default" in out
    assert "simpul.valid.permit.issued" in out  # whom it breaks
    assert "dpmptsp" in out  # who writes it
    # A compatible change (a default) passes.
    shutil.copy(SCHEMAS_DIR / "permit.issued.v1.avsc", repo / "schemas" / "permit.issued.v1.avsc")
    edit_permit(repo / "schemas", {"name": "floor_count", "type": "int", "default": 1})
    assert run(no_registry_env(repo / "schemas"), "schemas", "check").returncode == 0


def test_a_schema_missing_from_head_is_a_new_schema_and_passes(repo: Path) -> None:
    git(repo, "rm", "-q", "--cached", "schemas/permit.issued.v1.avsc")
    git(repo, "commit", "-qm", "forget one")
    result = run(no_registry_env(repo / "schemas"), "schemas", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "new file" in result.stdout


def test_check_outside_git_and_without_registry_does_not_fail(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS_DIR, tmp_path / "schemas")
    result = run(no_registry_env(tmp_path / "schemas"), "schemas", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_avsc_fails_with_the_reason(repo: Path) -> None:
    (repo / "schemas" / "permit.issued.v1.avsc").write_text('{"type": "record", "name": ')
    result = run(no_registry_env(repo / "schemas"), "schemas", "check")
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr


def test_fresh_clone_of_this_project_passes_the_check(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, capture_output=True
    )
    env = {"SIMPUL_REGISTRY_URL": f"http://127.0.0.1:{free_port()}"}
    env["SIMPUL_SCHEMAS_DIR"] = str(clone / "schemas")
    result = run(env, "schemas", "check", cwd=clone)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def registry(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    dbmigrate.upgrade(pg_url)
    running = start_registry(
        pg_url, tmp_path_factory.mktemp("cli-registry"), SIMPUL_REGISTRY_ADMIN_TOKEN=TOKEN
    )
    yield running
    running.process.stop()


def test_register_over_http_then_check_against_the_registered_versions(
    registry: Registry, pg_url: str, tmp_path: Path
) -> None:
    shutil.copytree(SCHEMAS_DIR, tmp_path / "schemas")
    env = {
        "SIMPUL_SCHEMAS_DIR": str(tmp_path / "schemas"),
        "SIMPUL_REGISTRY_URL": registry.url,
        "SIMPUL_DATABASE_URL": pg_url,
        "SIMPUL_DATA_DIR": str(tmp_path),
    }
    refused = run(env, "schemas", "register")
    assert refused.returncode == 1
    assert "Unauthorized" in refused.stderr
    registered = run({**env, "SIMPUL_REGISTRY_ADMIN_TOKEN": TOKEN}, "schemas", "register")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "simpul.in.permit.issued-value" in registered.stdout
    with registry.client() as client:
        subjects = client.get("/subjects").json()
    assert sorted(subjects) == sorted(t.subject for t in load_topology(TOPOLOGY_FILE).event_types)

    assert run(env, "schemas", "check").returncode == 0
    edit_permit(tmp_path / "schemas", {"name": "status", "type": "string"})
    broken = run(env, "schemas", "check")
    assert broken.returncode == 1
    out = " ".join((broken.stdout + broken.stderr).split())
    assert f"registry {registry.url}" in out
    assert "status: field is missing" in out and "version 1" in out

    # The subject's own mode applies: under FORWARD a new field without default is fine,
    # but removing a field breaks readers still on version 1.
    with registry.client(auth=True) as client:
        client.put("/config/simpul.in.permit.issued-value", json={"compatibility": "FORWARD"})
    assert run(env, "schemas", "check").returncode == 0
    path = tmp_path / "schemas" / "permit.issued.v1.avsc"
    schema = json.loads((SCHEMAS_DIR / "permit.issued.v1.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "business_name"]
    path.write_text(json.dumps(schema))
    removed = run(env, "schemas", "check")
    assert removed.returncode == 1
    out = " ".join((removed.stdout + removed.stderr).split())
    assert "business_name" in out and "readers still on version 1" in out
    assert "FORWARD" in out
