"""Shared fixtures: a real embedded broker, a real PostgreSQL database, a real worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from simpul import dbmigrate
from simpul.broker import EmbeddedBroker, free_port
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.registry import SchemaResolver, SchemaStore
from simpul.registry_client import RegistryClient
from simpul.settings import PROJECT_ROOT, Settings
from simpul.topics import apply_topics
from simpul.topology import Topology, load_topology
from sinks.central_store import CentralStore

PG_ADMIN_URL = os.environ.get(
    "SIMPUL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TOPOLOGY_FILE = PROJECT_ROOT / "topology" / "palu.yaml"
SCHEMAS_DIR = PROJECT_ROOT / "schemas"

_pg_skip_reason: str | None = None


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as error:
        return f"PostgreSQL at 127.0.0.1:5432 is unreachable ({type(error).__name__}: {error})"
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Every test, and every process a test starts, signs with one set of generated keys."""
    from tests.helpers import install_test_keys

    install_test_keys(TOPOLOGY_FILE)


def pytest_report_header(config: pytest.Config) -> str:
    global _pg_skip_reason
    _pg_skip_reason = _pg_reachable()
    return f"postgresql: {'SKIPPED: ' + _pg_skip_reason if _pg_skip_reason else PG_ADMIN_URL}"


@pytest.fixture(scope="session")
def topology() -> Topology:
    return load_topology(TOPOLOGY_FILE)


def create_pg_database() -> str:
    reason = _pg_skip_reason or _pg_reachable()
    if reason:
        pytest.skip(reason)
    name = f"simpul_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty central store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        dbmigrate.upgrade(url)
        yield url
    else:
        url = create_pg_database()
        dbmigrate.upgrade(url)
        yield url
        drop_pg_database(url)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(free_port(), log) as running:
        yield running


@dataclass
class Stack:
    """Broker, migrated store with registered schemas, and a worker process."""

    settings: Settings
    topology: Topology
    env: dict[str, str]
    workdir: Path
    worker: subprocess.Popen[bytes] | None = None
    registry: subprocess.Popen[bytes] | None = None

    def start_registry(self) -> subprocess.Popen[bytes]:
        """Start `simpul registry` on the stack's registry port and wait until it answers."""
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115
        self.registry = subprocess.Popen(
            [sys.executable, "-m", "simpul", "registry"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # A stack dropped without teardown (a failed test) must not leave its registry behind.
        weakref.finalize(self, _terminate, self.registry)
        wait_until(lambda: _http_ok(self.settings.registry_port, "/config"), 60, "registry up")
        return self.registry

    def stop_registry(self, sig: int = signal.SIGTERM) -> int:
        assert self.registry is not None
        self.registry.send_signal(sig)
        code = self.registry.wait(60)
        self.registry = None
        return code

    def registry_client(self, **kwargs: Any) -> RegistryClient:
        return RegistryClient(
            self.settings.registry_url, token=self.settings.registry_admin_token, **kwargs
        )

    @property
    def store(self) -> CentralStore:
        return CentralStore(make_engine(self.settings.database_url))

    def catalog(self) -> EventCatalog:
        return EventCatalog(
            self.topology, SchemaResolver(SchemaStore(make_engine(self.settings.database_url)))
        )

    def start_worker(self, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start a worker process; by default wait until it holds partitions."""
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "simpul", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if not wait:
            return self.worker
        wait_until(lambda: _http_ok(self.settings.worker_web_port, "/health"), 60, "worker up")
        wait_until(lambda: self.health().get("assigned_partitions", 0) > 0, 60, "partitions")
        return self.worker

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.settings.worker_web_port}/health"
        try:
            with urllib.request.urlopen(_authorized(url), timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 while the store is down
            return json.loads(error.read())
        except OSError:
            return {}

    def stop_worker(self, sig: int = signal.SIGTERM) -> int:
        assert self.worker is not None
        self.worker.send_signal(sig)
        code = self.worker.wait(60)
        self.worker = None
        return code

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.settings.worker_web_port}/metrics"
        with urllib.request.urlopen(_authorized(url), timeout=5) as response:
            return response.read().decode()

    def worker_log(self) -> str:
        return (self.workdir / "worker.log").read_text(errors="replace")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _authorized(url: str) -> urllib.request.Request:
    from tests.helpers import auth

    return urllib.request.Request(url, headers=auth())


def _http_ok(port: int, path: str) -> bool:
    try:
        urllib.request.urlopen(_authorized(f"http://127.0.0.1:{port}{path}"), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def make_stack(
    broker: EmbeddedBroker, database_url: str, workdir: Path, topology_file: Path = TOPOLOGY_FILE
) -> Stack:
    web_port = free_port()
    registry_port = free_port()
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        "SIMPUL_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SIMPUL_DATABASE_URL": database_url,
        "SIMPUL_WORKER_WEB_PORT": str(web_port),
        "SIMPUL_WORKER_ID": f"simpul-test-{uuid.uuid4().hex[:6]}",
        "SIMPUL_TOPOLOGY_FILE": str(topology_file),
        "SIMPUL_BATCH_SECONDS": "0.05",
        "SIMPUL_SESSION_TIMEOUT_S": "3",
        "SIMPUL_REBALANCE_TIMEOUT_S": "3",
        "SIMPUL_REGISTRY_PORT": str(registry_port),
        "SIMPUL_REGISTRY_URL": f"http://127.0.0.1:{registry_port}",
        "SIMPUL_REGISTRY_ADMIN_TOKEN": token,
    }
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        database_url=database_url,
        worker_web_port=web_port,
        worker_id=env["SIMPUL_WORKER_ID"],
        topology_file=topology_file,
        registry_port=registry_port,
        registry_url=env["SIMPUL_REGISTRY_URL"],
        registry_admin_token=token,
    )
    topology = load_topology(topology_file)
    apply_topics(topology, broker.bootstrap)
    dbmigrate.upgrade(database_url)
    stack = Stack(settings, topology, env, workdir)
    stack.start_registry()
    with stack.registry_client() as client:
        for event_type in topology.event_types:
            text = (SCHEMAS_DIR / event_type.schema_file).read_text(encoding="utf-8")
            client.register(event_type.subject, text)
    return stack


@pytest.fixture(scope="module")
def pg_stack(
    broker: EmbeddedBroker, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The real path: embedded broker, PostgreSQL central store, one worker process."""
    stack = make_stack(broker, pg_url, tmp_path_factory.mktemp("stack"))
    stack.start_worker()
    yield stack
    if stack.worker is not None:
        stack.stop_worker()
    if stack.registry is not None:
        stack.stop_registry()
