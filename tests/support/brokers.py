"""Brokers for the tests: SIMPUL_TEST_BROKER chooses Apache Kafka (the default) or the embedded
broker; a pool keeps the next module's broker starting in the background."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from simpul.cli.services.broker import Broker, EmbeddedBroker, free_port
from simpul.cli.services.kafka import KafkaCluster
from simpul.settings import Settings

#: The one setting that chooses the broker every broker-touching test runs on.
BROKER_ENGINE = os.environ.get("SIMPUL_TEST_BROKER", "kafka")
if BROKER_ENGINE not in ("kafka", "embedded"):
    raise pytest.UsageError(
        f"SIMPUL_TEST_BROKER={BROKER_ENGINE!r}: expected 'kafka' (Apache Kafka) or 'embedded'"
    )
#: Consumer session timeouts the test processes use: short on Tansu (its first fetch waits
#: about half of it), Apache Kafka's smallest allowed (group.min.session.timeout.ms) on Kafka.
TEST_SESSION_TIMEOUT_S = {"embedded": 3, "kafka": 6}[BROKER_ENGINE]


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


class BrokerPool:
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
