"""Shared fixtures: a real embedded broker, a real PostgreSQL database, a real worker process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
from simpul.catalog import EventCatalog
from simpul.cli.services.broker import Broker, EmbeddedBroker, free_port
from simpul.cli.services.kafka import KafkaCluster
from simpul.cli.services.postgres import PostgresCluster
from simpul.db import make_engine
from simpul.registry.client import RegistryClient
from simpul.registry.store import SchemaResolver, SchemaStore
from simpul.settings import PROJECT_ROOT, Settings
from simpul.topics import apply_topics
from simpul.topology.model import Topology, load_topology
from sinks.central_store import CentralStore

TOPOLOGY_FILE = PROJECT_ROOT / "topology" / "palu.yaml"
SCHEMAS_DIR = PROJECT_ROOT / "schemas"

#: The one setting that chooses the broker every broker-touching test runs on.
BROKER_ENGINE = os.environ.get("SIMPUL_TEST_BROKER", "kafka")
if BROKER_ENGINE not in ("kafka", "embedded"):
    raise pytest.UsageError(
        f"SIMPUL_TEST_BROKER={BROKER_ENGINE!r}: expected 'kafka' (Apache Kafka) or 'embedded'"
    )
#: Consumer session timeouts the test processes use: short on Tansu (its first fetch waits
#: about half of it), Apache Kafka's smallest allowed (group.min.session.timeout.ms) on Kafka.
TEST_SESSION_TIMEOUT_S = {"embedded": 3, "kafka": 6}[BROKER_ENGINE]

# --- PostgreSQL: SIMPUL_TEST_PG_URL, or a private cluster started for this test session ---

_pg_cluster: PostgresCluster | None = None


def pg_admin_url() -> str:
    """The maintenance database URL; starts the session's private cluster on first use."""
    global _pg_cluster
    if os.environ.get("SIMPUL_TEST_PG_URL"):
        return os.environ["SIMPUL_TEST_PG_URL"]
    if _pg_cluster is None:
        cluster = PostgresCluster().init()
        cluster.start(fast=True)
        _pg_cluster = cluster
    return _pg_cluster.url


def pytest_configure(config: pytest.Config) -> None:
    """Every test, and every process a test starts, signs with one set of generated keys."""
    from tests.helpers import install_test_keys

    install_test_keys(TOPOLOGY_FILE)


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = os.environ.get("SIMPUL_TEST_PG_URL") or "a private cluster started by the tests"
    return [f"broker: {BROKER_ENGINE} (SIMPUL_TEST_BROKER)", f"postgresql: {where}"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With SIMPUL_FAIL_ON_SKIP=1 (CI sets it) a skipped test fails: a missing tool is a defect
    of the machine's set-up, not a pass."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("SIMPUL_FAIL_ON_SKIP") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and SIMPUL_FAIL_ON_SKIP=1 forbids skips: {reason}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _pg_cluster is not None:
        _pg_cluster.destroy()
    _pool.close()


@pytest.fixture(scope="session")
def topology() -> Topology:
    return load_topology(TOPOLOGY_FILE)


def create_pg_database() -> str:
    admin_url = pg_admin_url()
    name = f"simpul_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
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


# --- brokers: Apache Kafka or the embedded broker, one fresh broker per module ---

#: Test brokers only: one offsets partition is created in a blink; everything else is the
#: launcher's (and docker-compose.yml's) broker configuration.
KAFKA_TEST_OVERRIDES = {"offsets.topic.num.partitions": "4"}


def new_broker(workdir: Path, nodes: int = 1, admin_password: str | None = None) -> Broker:
    """A started broker of the chosen engine; `nodes` > 1 and a secured broker (SASL users
    and ACLs, when `admin_password` is given) need Apache Kafka."""
    workdir.mkdir(parents=True, exist_ok=True)
    if BROKER_ENGINE == "embedded":
        if nodes != 1 or admin_password:
            pytest.skip("needs Apache Kafka (SIMPUL_TEST_BROKER=kafka)")
        return EmbeddedBroker(free_port(), workdir / "broker.log").start()
    cluster = KafkaCluster(
        workdir / "kafka", nodes, overrides=KAFKA_TEST_OVERRIDES, admin_password=admin_password
    )
    try:
        cluster.start()
        warm_up(cluster)
    except BaseException:
        cluster.kill()
        raise
    return cluster


def warm_up(cluster: KafkaCluster) -> None:
    """Create __consumer_offsets now, so the first consumer group does not wait for it."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + 60
    while True:
        admin = KafkaAdminClient(
            bootstrap_servers=cluster.bootstrap.split(","), **cluster.admin_options()
        )
        try:
            admin.describe_groups(["simpul-test-warm-up"])  # FindCoordinator creates it
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
        finally:
            admin.close()


def discard_broker(broker: Broker) -> None:
    """Test brokers hold nothing worth a controlled shutdown."""
    if isinstance(broker, KafkaCluster):
        broker.kill()
        shutil.rmtree(broker.data_dir, ignore_errors=True)
    else:
        broker.stop()


class _BrokerPool:
    """Keeps one spare single-node broker starting in the background, so that a module's
    broker is ready when it asks (a JVM takes several seconds to start on 2 cores)."""

    def __init__(self) -> None:
        self._spare: concurrent.futures.Future[Broker] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._root = Path(tempfile.mkdtemp(prefix="simpul-brokers-"))

    def _start_spare(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "broker-pool")
        self._spare = self._executor.submit(new_broker, self._root / uuid.uuid4().hex[:8])

    def take(self) -> Broker:
        if self._spare is None:
            self._start_spare()
        assert self._spare is not None
        broker = self._spare.result()
        if BROKER_ENGINE == "kafka":
            self._start_spare()
        else:
            self._spare = None  # Tansu starts in milliseconds
        return broker

    def close(self) -> None:
        if self._spare is not None:
            with contextlib.suppress(Exception):
                discard_broker(self._spare.result(timeout=180))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        shutil.rmtree(self._root, ignore_errors=True)


_pool = _BrokerPool()


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    running = _pool.take()
    yield running
    discard_broker(running)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Brokers a test owns (to kill or restart), discarded at its end."""
    made: list[Broker] = []

    def make(nodes: int = 1, admin_password: str | None = None) -> Broker:
        made.append(new_broker(tmp_path / f"broker-{len(made)}", nodes, admin_password))
        return made[-1]

    yield make
    for running in made:
        discard_broker(running)


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
        wait_until(lambda: _http_ok(self.settings.registry.port, "/config"), 60, "registry up")
        return self.registry

    def stop_registry(self, sig: int = signal.SIGTERM) -> int:
        assert self.registry is not None
        self.registry.send_signal(sig)
        code = self.registry.wait(60)
        self.registry = None
        return code

    def registry_client(self, **kwargs: Any) -> RegistryClient:
        return RegistryClient(
            self.settings.registry.url, token=self.settings.registry.admin_token, **kwargs
        )

    @property
    def store(self) -> CentralStore:
        return CentralStore(make_engine(self.settings.store.database_url))

    def catalog(self) -> EventCatalog:
        return EventCatalog(
            self.topology,
            SchemaResolver(SchemaStore(make_engine(self.settings.store.database_url))),
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
        # A failed test must not leave its workers running (they hold CPU and ports).
        weakref.finalize(self, _terminate, self.worker)
        if not wait:
            return self.worker
        wait_until(lambda: _http_ok(self.settings.worker.web_port, "/health"), 60, "worker up")
        wait_until(lambda: self.health().get("assigned_partitions", 0) > 0, 60, "partitions")
        return self.worker

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.settings.worker.web_port}/health"
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
        url = f"http://127.0.0.1:{self.settings.worker.web_port}/metrics"
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


def admin_target(broker: Broker) -> str | Settings:
    """What topic and ACL administration connects with: the admin user on a secured Kafka."""
    if isinstance(broker, KafkaCluster) and broker.secured:
        return Settings(
            kafka_bootstrap=broker.bootstrap,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_username="admin",
            kafka_password=str(broker.admin_password),
        )
    return broker.bootstrap


def make_stack(
    broker: Broker,
    database_url: str,
    workdir: Path,
    topology_file: Path = TOPOLOGY_FILE,
    client_env: dict[str, str] | None = None,
) -> Stack:
    """`client_env`: SIMPUL_KAFKA_* identity of the stack's processes on a secured broker."""
    web_port = free_port()
    registry_port = free_port()
    token = uuid.uuid4().hex
    audit_key = uuid.uuid4().hex + uuid.uuid4().hex
    env = {
        **os.environ,
        "SIMPUL_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SIMPUL_DATABASE_URL": database_url,
        "SIMPUL_WORKER_WEB_PORT": str(web_port),
        "SIMPUL_WORKER_ID": f"simpul-test-{uuid.uuid4().hex[:6]}",
        "SIMPUL_TOPOLOGY_FILE": str(topology_file),
        "SIMPUL_BATCH_SECONDS": "0.05",
        "SIMPUL_BROKER_ENGINE": broker.engine,
        "SIMPUL_SESSION_TIMEOUT_S": str(TEST_SESSION_TIMEOUT_S),
        "SIMPUL_REBALANCE_TIMEOUT_S": str(TEST_SESSION_TIMEOUT_S),
        "SIMPUL_REGISTRY_PORT": str(registry_port),
        "SIMPUL_REGISTRY_URL": f"http://127.0.0.1:{registry_port}",
        "SIMPUL_REGISTRY_ADMIN_TOKEN": token,
        "SIMPUL_AUDIT_HEADS_FILE": str(workdir / "audit-heads.jsonl"),  # this stack's own
        "SIMPUL_AUDIT_KEY": audit_key,  # one key for every process of the stack
        **(client_env or {}),
    }
    settings = Settings(
        broker_engine=broker.engine,  # type: ignore[arg-type]
        kafka_bootstrap=broker.bootstrap,
        database_url=database_url,
        worker_web_port=web_port,
        worker_id=env["SIMPUL_WORKER_ID"],
        topology_file=topology_file,
        registry_port=registry_port,
        registry_url=env["SIMPUL_REGISTRY_URL"],
        registry_admin_token=token,
        audit_key=audit_key,
        audit_heads_file=workdir / "audit-heads.jsonl",
    )
    topology = load_topology(topology_file)
    apply_topics(topology, admin_target(broker))
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
    broker: Broker, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The real path: embedded broker, PostgreSQL central store, one worker process."""
    stack = make_stack(broker, pg_url, tmp_path_factory.mktemp("stack"))
    stack.start_worker()
    yield stack
    if stack.worker is not None:
        stack.stop_worker()
    if stack.registry is not None:
        stack.stop_registry()
