"""`simpul broker`: Apache Kafka fetched and run by the project, durable across restarts; the
embedded broker says what a restart of it loses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from simpul.cli.services.broker import free_port
from simpul.cli.services.kafka import KAFKA_VERSION
from tests.support.paths import REPO_ROOT
from tests.support.processes import SimpulProcess

pytestmark = [pytest.mark.integration]

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _simpul(*args: str, env: dict[str, str] | None = None) -> SimpulProcess:
    env = {**(env or os.environ), "COLUMNS": "400"}  # rich: one line per message
    return SimpulProcess(args, env, capture=True)


def _topic_records(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=5000)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values = [m.value for m in consumer]
    consumer.close()
    return values


@pytest.mark.slow
def test_kafka_broker_keeps_its_data_across_a_restart_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "kafka"
    args = ("broker", "--engine", "kafka", "--port", str(port), "--data-dir", str(data))
    first = _simpul(*args)
    banner = first.wait_for_line("Point Simpul at it")
    assert f"Apache Kafka {KAFKA_VERSION}" in banner and f"127.0.0.1:{port}" in banner
    bootstrap = f"127.0.0.1:{port}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("simpul.test.durable", 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for n in range(50):
        producer.send("simpul.test.durable", value=b"event-%d" % n)
    producer.flush()
    producer.close()

    first.send_signal(signal.SIGTERM)
    assert first.wait(90) == 0

    second = _simpul(*args)
    second.wait_for_line("Point Simpul at it")
    try:
        assert _topic_records(bootstrap, "simpul.test.durable") == [
            b"event-%d" % n for n in range(50)
        ]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(90) == 0


def _kafka_broker_with(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`simpul broker --engine kafka` run to its end in a changed environment."""
    return subprocess.run(
        [sys.executable, "-m", "simpul", "broker", "--engine", "kafka", "--data-dir",
         str(tmp_path / "k"), "--port", str(free_port())],
        env={**os.environ, **env, "COLUMNS": "400"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_kafka_broker_names_the_missing_java(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    result = _kafka_broker_with(tmp_path, {"PATH": str(bare)})
    assert result.returncode == 1
    assert "needs java" in result.stdout + result.stderr
    assert "apt-get install" in result.stdout + result.stderr


def test_kafka_broker_names_the_missing_maven_when_nothing_is_cached(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    java = shutil.which("java")
    assert java, "java is part of the machine (and .ci/run installs it)"
    (bare / "java").symlink_to(java)
    result = _kafka_broker_with(
        tmp_path, {"PATH": str(bare), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    )
    assert result.returncode == 1
    assert "needs mvn" in result.stdout + result.stderr


def test_embedded_broker_says_what_a_restart_loses(tmp_path: Path) -> None:
    process = _simpul("broker", "--port", str(free_port()))
    banner = process.wait_for_line("For a durable broker", timeout=60)
    assert "memory only" in banner and "202" in banner and "consumer offsets" in banner
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_compose_runs_the_same_kafka_version() -> None:
    assert f"image: apache/kafka:{KAFKA_VERSION}" in COMPOSE.read_text()
