"""`simpul connect` as a real process: SIGKILL and resume, the REST API, the CLI, and
``errors.tolerance: none`` stopping before a bad row. Source: a SIMPEG-like PostgreSQL database.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import MetaData, update

from connectors.state import OffsetStore
from connectors.testing import stored_keys
from simpul.cli.services.broker import free_port
from simpul.db import make_engine
from tests.support.connector_cases import PEGAWAI_MAPPING, PegawaiSource, _pegawai
from tests.support.postgres import create_pg_database, drop_pg_database
from tests.support.processes import SimpulProcess, wait_until
from tests.support.signing import auth
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Connect:
    """A `simpul connect` process with its own connectors directory."""

    def __init__(self, stack: Stack, workdir: Path, declarations: list[dict[str, Any]]) -> None:
        self.stack = stack
        self.workdir = workdir
        directory = workdir / "connectors"
        directory.mkdir()
        (directory / "simpeg.yaml").write_text(yaml.safe_dump({"connectors": declarations}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **stack.env,
            "SIMPUL_CONNECTORS_DIR": str(directory),
            "SIMPUL_CONNECT_PORT": str(self.port),
            "SIMPUL_CONNECT_POLL_INTERVAL_S": "0.2",
        }
        self.process: SimpulProcess | None = None

    def start(self) -> None:
        self.process = SimpulProcess(["connect"], self.env, self.workdir / "connect.log")
        self.process.wait_http(f"{self.url}/connectors")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        code = self.process.stop(sig)
        self.process = None
        return code

    def status(self, name: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/connectors/{name}/status", headers=auth()).json()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "simpul", "connectors", *args, "--url", self.url],
            env=self.env,
            capture_output=True,
            text=True,
        )


def _declaration(name: str, url: str, table: str, tolerance: str) -> dict[str, Any]:
    return {
        "name": name,
        "connector.class": "polling",
        "event.type": "hr.employee.updated",
        "agency": "bkpsdm",
        "connection.url": url,
        "table.name": table,
        "timestamp.column.name": "diubah_pada",
        "incrementing.column.name": "id",
        "batch.max.rows": 25,
        "poll.interval.ms": 100,
        "field.mapping": PEGAWAI_MAPPING,
        "errors.tolerance": tolerance,
    }


@pytest.fixture(scope="module")
def simpeg(pg_stack: Stack) -> Iterator[tuple[PegawaiSource, PegawaiSource, str]]:
    url = create_pg_database()
    main = PegawaiSource(url, pg_stack.topology)
    strict = PegawaiSource(url, pg_stack.topology)
    strict.table = _pegawai(MetaData())
    strict.table.name = "pegawai_strict"
    strict.table.metadata.create_all(strict.engine)
    strict.next_employee = 900  # other NIPs than `main`
    yield main, strict, url
    main.engine.dispose()
    strict.engine.dispose()
    drop_pg_database(url)


@pytest.fixture(scope="module")
def connect(
    pg_stack: Stack, simpeg: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Connect]:
    _, _, url = simpeg
    process = Connect(
        pg_stack,
        tmp_path_factory.mktemp("connect"),
        [
            _declaration("simpeg-pegawai", url, "pegawai", "all"),
            _declaration("simpeg-strict", url, "pegawai_strict", "none"),
        ],
    )
    yield process
    if process.process is not None:
        process.stop()


def test_sigkill_mid_stream_resumes_without_losing_or_duplicating_a_row(
    pg_stack: Stack, simpeg: Any, connect: Connect
) -> None:
    main, _, _ = simpeg
    nips = main.add(600)
    connect.start()
    offsets = OffsetStore(make_engine(pg_stack.settings.store.database_url))
    wait_until(lambda: offsets.load("simpeg-pegawai"), 60, "a first position stored")
    connect.stop(signal.SIGKILL)  # mid-stream: some batches published, maybe not committed
    killed_at = offsets.load("simpeg-pegawai")["incrementing"]
    assert killed_at < 600, "the connector finished before the kill: nothing was tested"
    nips += main.add(50)  # rows written while the connector is dead
    connect.start()
    wait_until(
        lambda: stored_keys(pg_stack, "hr.employee.updated", nips) == set(nips),
        90,
        "all 650 rows stored",
    )
    from sqlalchemy import text

    with make_engine(pg_stack.settings.store.database_url).connect() as conn:
        stored = conn.execute(
            text("select count(*) from event_log where key = any(:nips)"), {"nips": nips}
        ).scalar()
    assert stored == 650  # one event per row: a replayed batch carried the same ce_ids


def test_rest_api_and_cli_list_pause_resume_restart(
    pg_stack: Stack, simpeg: Any, connect: Connect
) -> None:
    main, _, _ = simpeg
    assert set(httpx.get(f"{connect.url}/connectors", headers=auth()).json()) == {
        "simpeg-pegawai",
        "simpeg-strict",
    }
    config = httpx.get(f"{connect.url}/connectors/simpeg-pegawai", headers=auth()).json()
    assert config["config"]["connector.class"] == "polling"
    assert connect.status("simpeg-pegawai")["tasks"][0]["state"] == "RUNNING"
    assert httpx.get(f"{connect.url}/connectors/nope/status", headers=auth()).status_code == 404
    # An anonymous caller can neither read nor steer (issue 15); nothing changed for it.
    assert httpx.put(f"{connect.url}/connectors/simpeg-pegawai/pause").status_code == 401
    assert httpx.get(f"{connect.url}/connectors/simpeg-pegawai").status_code == 401
    assert connect.status("simpeg-pegawai")["tasks"][0]["state"] == "RUNNING"
    shown = json.dumps(config["config"])
    assert "********" in shown or "password" not in shown.lower()  # secrets come back redacted

    listed = connect.cli("list")
    assert listed.returncode == 0 and "simpeg-pegawai" in listed.stdout, listed.stderr
    assert connect.cli("pause", "simpeg-pegawai").returncode == 0
    wait_until(
        lambda: connect.status("simpeg-pegawai")["tasks"][0]["state"] == "PAUSED", 30, "paused"
    )
    read_before = connect.status("simpeg-pegawai")["metrics"]["records_read"]
    paused_nips = main.add(5)
    time.sleep(1.5)  # the point: a paused task reads nothing in 1.5 s (several 0.2 s polls)
    assert connect.status("simpeg-pegawai")["metrics"]["records_read"] == read_before
    assert connect.cli("resume", "simpeg-pegawai").returncode == 0
    wait_until(
        lambda: stored_keys(pg_stack, "hr.employee.updated", paused_nips) == set(paused_nips),
        60,
        "rows written during the pause stored after resume",
    )
    status = json.loads(connect.cli("status", "simpeg-pegawai").stdout)
    assert status["metrics"]["records_published"] >= 5 and status["metrics"]["last_success"]
    assert connect.cli("restart", "simpeg-pegawai").returncode == 0
    assert connect.status("simpeg-pegawai")["tasks"][0]["state"] in ("RUNNING", "UNASSIGNED")
    scrape = httpx.get(f"{connect.url}/metrics", headers=auth()).text
    assert 'simpul_connector_records_published_total{connector="simpeg-pegawai"}' in scrape
    assert 'simpul_connector_last_success_timestamp_seconds{connector="simpeg-pegawai"}' in scrape
    assert connect.cli("status", "nope").returncode == 1


def test_tolerance_none_stops_before_a_bad_row_and_restart_resumes_after_the_fix(
    pg_stack: Stack, simpeg: Any, connect: Connect
) -> None:
    _, strict, _ = simpeg
    first = strict.add(2)
    strict.add_bad()
    last = strict.add(2)
    wait_until(
        lambda: connect.status("simpeg-strict")["tasks"][0]["state"] == "FAILED", 60, "FAILED"
    )
    trace = connect.status("simpeg-strict")["tasks"][0]["trace"]
    assert "nip" in trace and "18" in trace, trace
    wait_until(
        lambda: stored_keys(pg_stack, "hr.employee.updated", first) == set(first),
        60,
        "the rows before the bad one stored",
    )
    assert not stored_keys(pg_stack, "hr.employee.updated", last)  # nothing past the bad row
    fixed = "198507172010011099"
    with strict.engine.begin() as conn:  # BKPSDM corrects the record in SIMPEG
        conn.execute(
            update(strict.table).where(strict.table.c.nip == "19850717201001").values(nip=fixed)
        )
    assert connect.cli("restart", "simpeg-strict").returncode == 0
    wanted = [*last, fixed]
    wait_until(
        lambda: stored_keys(pg_stack, "hr.employee.updated", wanted) == set(wanted),
        60,
        "the fixed row and the rows after it stored",
    )
    assert connect.status("simpeg-strict")["tasks"][0]["state"] == "RUNNING"


def test_sigterm_stops_every_task_and_exits_cleanly(connect: Connect) -> None:
    assert connect.process is not None
    assert connect.stop(signal.SIGTERM) == 0
    assert "Traceback" not in (connect.workdir / "connect.log").read_text()
