"""Broker identity on a secured Apache Kafka: SASL/SCRAM users and ACLs from the topology.

An unauthenticated client is refused; an agency writes only the types it produces and reads
only its own inbox; the worker, under its own least-privilege user, still stores everything
legitimate."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError
from sqlalchemy import text

from simpul.cli import acls
from simpul.cli.services.kafka import KafkaCluster
from simpul.publisher import Publisher
from simpul.settings import Settings
from tests.support.postgres import create_pg_database, drop_pg_database
from tests.support.processes import wait_until
from tests.support.stack import TOPOLOGY_FILE, Stack, make_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def sasl(user: str, password: str) -> dict[str, Any]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


def process_env(user: str, password: str) -> dict[str, str]:
    return {
        "SIMPUL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SIMPUL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SIMPUL_KAFKA_USERNAME": user,
        "SIMPUL_KAFKA_PASSWORD": password,
    }


class Secured:
    def __init__(self, cluster: KafkaCluster, stack: Stack, passwords: dict[str, str]) -> None:
        self.cluster = cluster
        self.stack = stack
        self.passwords = passwords

    def client(self, user: str) -> dict[str, Any]:
        return {"bootstrap_servers": self.cluster.bootstrap, **sasl(user, self.passwords[user])}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    from tests.support.brokers import new_broker

    workdir = tmp_path_factory.mktemp("secured")
    cluster = new_broker(workdir / "broker", admin_password=secrets.token_urlsafe(16))
    assert isinstance(cluster, KafkaCluster)
    users_file = workdir / "kafka-users.json"
    worker_id = "simpul-secured"
    admin_env = {
        **os.environ,
        "SIMPUL_KAFKA_BOOTSTRAP": cluster.bootstrap,
        "SIMPUL_BROKER_ENGINE": "kafka",
        "SIMPUL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SIMPUL_KAFKA_SASL_MECHANISM": "PLAIN",
        "SIMPUL_KAFKA_USERNAME": "admin",
        "SIMPUL_KAFKA_PASSWORD": str(cluster.admin_password),
        "SIMPUL_KAFKA_USERS_FILE": str(users_file),
        "SIMPUL_WORKER_ID": worker_id,
        "SIMPUL_TOPOLOGY_FILE": str(TOPOLOGY_FILE),
    }
    for _ in range(2):  # the second run proves it idempotent
        applied = subprocess.run(
            [sys.executable, "-m", "simpul", "acls", "apply"],
            env={**admin_env, "COLUMNS": "300"}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "0 created" in applied.stdout, applied.stdout
    assert oct(users_file.stat().st_mode & 0o777) == "0o600"
    passwords = json.loads(users_file.read_text())

    (workdir / "stack").mkdir()
    database = create_pg_database()
    worker = acls.process_user("worker")
    stack = make_stack(
        cluster,
        database,
        workdir / "stack",
        client_env={**process_env(worker, passwords[worker]), "SIMPUL_WORKER_ID": worker_id},
    )
    stack.start_worker()
    yield Secured(cluster, stack, passwords)
    stack.stop()
    drop_pg_database(database)
    cluster.stop()  # its own broker, not the pool's: nobody else stops it


def agency_settings(secured: Secured, code: str) -> Settings:
    user = acls.agency_user(code)
    return secured.stack.settings.model_copy(
        update={
            "kafka_bootstrap": secured.cluster.bootstrap,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_username": user,
            "kafka_password": secured.passwords[user],
        }
    )


def test_an_unauthenticated_client_is_refused(secured: Secured) -> None:
    with pytest.raises(KafkaError):
        producer = KafkaProducer(
            bootstrap_servers=secured.cluster.bootstrap,
            max_block_ms=5000,
            request_timeout_ms=3000,
            bootstrap_timeout_ms=5000,  # refused at bootstrap: kafka-python's default waits 30 s
        )
        producer.send("simpul.in.permit.issued", b"forged").get(5)


def test_a_wrong_password_is_refused(secured: Secured) -> None:
    with pytest.raises(KafkaError):
        producer = KafkaProducer(
            bootstrap_servers=secured.cluster.bootstrap,
            max_block_ms=5000,
            bootstrap_timeout_ms=5000,  # refused at bootstrap: kafka-python's default waits 30 s
            **sasl("agency-dpmptsp", "not-the-password"),
        )
        producer.send("simpul.in.permit.issued", b"forged").get(5)


def test_an_agency_cannot_write_a_type_it_does_not_produce(secured: Secured) -> None:
    producer = KafkaProducer(max_block_ms=10_000, **secured.client("agency-bkpsdm"))
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("simpul.in.permit.issued", b"forged permit").get(10)
    finally:
        producer.close()


def _read_inbox(secured: Secured, user: str, topic: str) -> list[bytes]:
    """What `user` gets from `topic`; a refused read raises or yields nothing."""
    consumer = KafkaConsumer(consumer_timeout_ms=4000, **secured.client(user))
    try:
        partitions = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        return [m.value for m in consumer]
    except TopicAuthorizationFailedError:
        return []
    finally:
        consumer.close()


def test_an_agency_cannot_read_another_agencys_inbox(secured: Secured) -> None:
    admin = KafkaProducer(
        bootstrap_servers=secured.cluster.bootstrap, **secured.cluster.admin_options()
    )
    admin.send("simpul.out.bkd", b"tpp basis for BKD only", partition=0).get(10)
    admin.close()
    assert _read_inbox(secured, "agency-dinsos", "simpul.out.bkd") == []
    assert b"tpp basis for BKD only" in _read_inbox(secured, "agency-bkd", "simpul.out.bkd")


def test_an_agency_cannot_write_valid_topics_or_forge_the_system_agency(secured: Secured) -> None:
    producer = KafkaProducer(max_block_ms=10_000, **secured.client("agency-dukcapil"))
    try:
        forged = ("simpul.valid.population.death.registered", "simpul.in.social.recipient.deceased")
        for topic in forged:
            with pytest.raises(TopicAuthorizationFailedError):
                producer.send(topic, b"forged").get(10)
    finally:
        producer.close()


def test_an_agency_publishes_its_own_type_and_the_worker_stores_it(
    secured: Secured,
) -> None:
    publisher = Publisher(agency="bkpsdm", settings=agency_settings(secured, "bkpsdm"))
    payload = {
        "nip": "198507122010011004",
        "name": "Rahmat Lamarauna",
        "unit_code": "2.18.01",
        "position": "Analis Kepegawaian",
        "grade": "III/c",
        "status": "ACTIVE",
        "updated_at": dt.datetime.now(dt.UTC),
    }
    ce_id = str(uuid.uuid4())
    publisher.publish("hr.employee.updated", payload, id=ce_id).get(30)
    publisher.close()

    def stored() -> bool:
        with secured.stack.store.engine.connect() as conn:
            return bool(
                conn.execute(
                    text("select count(*) from event_log where ce_id = :i"), {"i": ce_id}
                ).scalar()
            )

    wait_until(stored, 60, "the agency's event stored by the least-privilege worker")
