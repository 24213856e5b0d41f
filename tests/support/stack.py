"""The stack a test runs against: a broker's topics, a migrated store with the schemas
registered, `simpul registry` and, when asked, `simpul worker` processes."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simpul import dbmigrate
from simpul.catalog import EventCatalog
from simpul.cli.services.broker import Broker, free_port
from simpul.db import make_engine
from simpul.registry.client import RegistryClient
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import SchemaStore
from simpul.settings import Settings
from simpul.topics import apply_topics
from simpul.topology.model import Topology, load_topology
from sinks.central_store import CentralStore
from tests.support.brokers import TEST_SESSION_TIMEOUT_S, admin_target
from tests.support.paths import SCHEMAS_DIR, TOPOLOGY_FILE
from tests.support.processes import SimpulProcess, authorized, http_status


@dataclass
class Stack:
    """Broker, migrated store with registered schemas, and a worker process."""

    settings: Settings
    topology: Topology
    env: dict[str, str]
    workdir: Path
    worker: SimpulProcess | None = None
    registry: SimpulProcess | None = None

    def start_registry(self) -> SimpulProcess:
        """Start `simpul registry` on the stack's registry port and wait until it answers."""
        self.registry = SimpulProcess(["registry"], self.env, self.workdir / "registry.log")
        self.registry.wait_http(f"http://127.0.0.1:{self.settings.registry.port}/config")
        return self.registry

    def stop_registry(self, sig: int = signal.SIGTERM) -> int:
        assert self.registry is not None
        code = self.registry.stop(sig)
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

    def start_worker(self, wait: bool = True) -> SimpulProcess:
        """Start a worker process; by default wait until it holds partitions."""
        self.worker = SimpulProcess(["worker"], self.env, self.workdir / "worker.log")
        if not wait:
            return self.worker
        self.worker.wait_ready(
            lambda: 200 <= (http_status(self._worker_url("/health")) or 0) < 300, "/health 2xx"
        )
        self.worker.wait_ready(
            lambda: self.health().get("assigned_partitions", 0) > 0, "partitions assigned"
        )
        return self.worker

    def _worker_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.worker.web_port}{path}"

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(authorized(self._worker_url("/health")), timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as error:  # 503 while the store is down
            return json.loads(error.read())
        except OSError:
            return {}

    def stop_worker(self, sig: int = signal.SIGTERM) -> int:
        assert self.worker is not None
        code = self.worker.stop(sig)
        self.worker = None
        return code

    def stop(self) -> None:
        """Stop whatever of the stack still runs: its worker, then its registry."""
        if self.worker is not None:
            self.stop_worker()
        if self.registry is not None:
            self.stop_registry()

    def metrics(self) -> str:
        with urllib.request.urlopen(authorized(self._worker_url("/metrics")), timeout=5) as r:
            return r.read().decode()

    def worker_log(self) -> str:
        return (self.workdir / "worker.log").read_text(errors="replace")


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
