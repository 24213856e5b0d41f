"""Stock Confluent clients against `simpul registry`: confluent-kafka's SchemaRegistryClient,
AvroSerializer, AvroDeserializer and Producer, used as their documentation shows."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer

from tests.support.processes import wait_until
from tests.support.signing import sign
from tests.support.stack import SCHEMAS_DIR, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC = "simpul.in.permit.issued"
SUBJECT = f"{TOPIC}-value"
PERMIT_SCHEMA = (SCHEMAS_DIR / "permit.issued.v1.avsc").read_text(encoding="utf-8")


def registry_conf(stack: Stack) -> dict[str, Any]:
    # basic.auth.user.info carries the admin token as the password, as for Confluent Cloud.
    return {
        "url": stack.settings.registry.url,
        "basic.auth.user.info": f"simpul-admin:{stack.settings.registry.admin_token}",
    }


def permit() -> dict[str, Any]:
    return {
        "permit_number": f"503/{uuid.uuid4().hex[:8]}/DPMPTSP/2026",
        "permit_type": "SIP",
        "nib": "9120001234567",
        "applicant_nik": "7271015203880002",
        "business_name": "Apotek Talise Sehat",
        "kelurahan_code": "7271021002",
        "issued_at": dt.datetime.now(dt.UTC).replace(microsecond=0),
        "valid_until": dt.date(2031, 1, 31),
        "signature_digest": "ab" * 32,
    }


def test_schema_registry_client_speaks_to_simpul_registry(pg_stack: Stack) -> None:
    client = SchemaRegistryClient(registry_conf(pg_stack))
    with pg_stack.registry_client() as ours:
        expected_id, _ = ours.latest(SUBJECT) or (0, 0)
    assert SUBJECT in client.get_subjects()
    latest = client.get_latest_version(SUBJECT)
    assert latest.schema_id == expected_id and latest.version == 1
    assert json.loads(latest.schema.schema_str) == json.loads(PERMIT_SCHEMA)
    # Registering the same schema (as its text, whitespace and all) returns the same id.
    assert client.register_schema(SUBJECT, Schema(PERMIT_SCHEMA, "AVRO")) == expected_id
    assert client.get_schema(expected_id).schema_type == "AVRO"
    found = client.lookup_schema(SUBJECT, Schema(PERMIT_SCHEMA, "AVRO"))
    assert (found.schema_id, found.version) == (expected_id, 1)
    assert client.get_compatibility() == "BACKWARD"
    assert client.get_versions(SUBJECT) == [1]

    breaking = json.loads(PERMIT_SCHEMA)
    breaking["fields"].append({"name": "floor_count", "type": "int"})
    assert client.test_compatibility(SUBJECT, Schema(json.dumps(breaking), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(SUBJECT, Schema(json.dumps(breaking), "AVRO"))
    assert refused.value.http_status_code == 409 and refused.value.error_code == 409

    # Writes on a scratch subject: config and soft delete.
    scratch = f"interop-{uuid.uuid4().hex[:6]}-value"
    scratch_id = client.register_schema(scratch, Schema(PERMIT_SCHEMA, "AVRO"))
    assert scratch_id == expected_id
    # The client hands back Confluent's body as it is: {"compatibility": ...}.
    assert client.set_compatibility(scratch, "FULL") == {"compatibility": "FULL"}
    assert client.get_compatibility(scratch) == "FULL"
    with_default = json.loads(PERMIT_SCHEMA)
    with_default["fields"].append({"name": "floor_count", "type": "int", "default": 1})
    client.register_schema(scratch, Schema(json.dumps(with_default), "AVRO"))
    assert client.delete_version(scratch, 1) == 1
    assert client.get_versions(scratch) == [2]
    assert client.delete_subject(scratch) == [2]
    assert scratch not in client.get_subjects()

    anonymous = SchemaRegistryClient({"url": pg_stack.settings.registry.url})
    with pytest.raises(SchemaRegistryError) as unauthorized:
        anonymous.register_schema(f"x-{uuid.uuid4().hex[:6]}", Schema(PERMIT_SCHEMA, "AVRO"))
    assert unauthorized.value.error_code == 40101


def test_avro_serializer_and_deserializer_round_trip(pg_stack: Stack) -> None:
    client = SchemaRegistryClient(registry_conf(pg_stack))
    serializer = AvroSerializer(client, PERMIT_SCHEMA)
    deserializer = AvroDeserializer(client, PERMIT_SCHEMA)
    payload = permit()
    context = SerializationContext(TOPIC, MessageField.VALUE)
    value = serializer(payload, context)
    assert value is not None
    assert value[0] == 0
    assert int.from_bytes(value[1:5], "big") == client.get_latest_version(SUBJECT).schema_id
    # Simpul's own codec decodes what Confluent's serializer wrote, and vice versa.
    ours = pg_stack.catalog().latest_schema("permit.issued")
    assert ours.decode_body(value[5:])["permit_number"] == payload["permit_number"]
    decoded = deserializer(value, context)
    assert decoded["permit_number"] == payload["permit_number"]
    assert decoded["issued_at"] == payload["issued_at"]
    assert deserializer(ours.encode(payload), context)["nib"] == payload["nib"]


def test_message_from_confluent_producer_is_stored_by_the_worker(pg_stack: Stack) -> None:
    client = SchemaRegistryClient(registry_conf(pg_stack))
    avro_serializer = AvroSerializer(client, PERMIT_SCHEMA)
    string_serializer = StringSerializer("utf_8")
    producer = Producer({"bootstrap.servers": pg_stack.settings.kafka.bootstrap})
    payload = permit()
    ce_id = str(uuid.uuid4())
    delivered: list[Any] = []
    key = string_serializer(payload["permit_number"])
    value = avro_serializer(payload, SerializationContext(TOPIC, MessageField.VALUE))
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"/agency/dpmptsp"),
        ("ce_type", b"permit.issued"),
        ("ce_time", dt.datetime.now(dt.UTC).isoformat().encode()),
        ("content-type", b"application/avro"),
    ]
    producer.produce(
        topic=TOPIC,
        key=key,
        value=value,
        headers=sign("dpmptsp", headers, key, value),  # the agency's signature, as any producer
        on_delivery=lambda error, message: delivered.append(error),
    )
    producer.flush(30)
    assert delivered == [None]
    wait_until(lambda: ce_id in pg_stack.store.event_ids(), 60, "confluent-produced event stored")
    row = pg_stack.store.state_row("permits", payload["permit_number"])
    assert row is not None and row["business_name"] == "Apotek Talise Sehat"
