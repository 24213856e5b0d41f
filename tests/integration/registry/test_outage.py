"""A registry killed mid-stream: known ids keep flowing from the client cache; an id first
seen during the outage waits (never dead-lettered) and is stored once the registry is back."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simpul.cli.services.broker import Broker
from simpul.codec import AvroSchema
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.publisher import Publisher
from simpul.registry.client import RegistryUnavailable, make_resolver
from simpul.registry.store import SchemaStore
from tests.support.processes import wait_until
from tests.support.stack import SCHEMAS_DIR, Stack, make_stack
from tests.support.topics import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(broker: Broker, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_stack(broker, pg_url, tmp_path_factory.mktemp("outage"))
    stack.env["SIMPUL_STORE_RETRY_MAX_S"] = "2"  # retry the blocked batch often
    stack.start_worker()
    yield stack
    stack.stop()


def permit(number: str) -> dict[str, Any]:
    return {
        "permit_number": number,
        "permit_type": "PBG",
        "nib": "9120001234567",
        "applicant_nik": "7271015203880002",
        "business_name": "Bengkel Las Tondo Jaya",
        "kelurahan_code": "7271021002",
        "issued_at": dt.datetime.now(dt.UTC).replace(microsecond=0),
        "valid_until": None,
        "signature_digest": "ef" * 32,
    }


def publish(publisher: Publisher, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for ce_id in ids:
        publisher.publish("permit.issued", permit(f"503/{uuid.uuid4().hex[:8]}/PBG"), id=ce_id)
    publisher.flush(30)
    return ids


def all_stored(stack: Stack, ids: list[str]) -> bool:
    return set(ids) <= stack.store.event_ids("permit.issued")


def test_registry_killed_mid_stream_does_not_stop_it(stack: Stack, tmp_path: Path) -> None:
    # The publisher resolves through the registry too (HTTP client, short retry for the test).
    settings = stack.settings.model_copy(update={"registry_retry_s": 0.5})
    catalog_resolver = make_resolver(settings)
    publisher = Publisher("dpmptsp", settings=settings)
    before = publish(publisher, 20)
    wait_until(lambda: all_stored(stack, before), 60, "events before the outage stored")

    stack.stop_registry(signal.SIGKILL)
    with pytest.raises(RegistryUnavailable):
        make_resolver(settings).store.latest("simpul.in.permit.issued-value")
    # Waiting out the cache's time to live is the point: the publisher's cached latest schema
    # has expired now, so the next publish must get by without the registry.
    time.sleep(settings.registry.cache_ttl_s)
    during = publish(publisher, 20)
    wait_until(lambda: all_stored(stack, during), 60, "events during the outage stored")

    # A version registered while the registry is down (straight into the store) has an id
    # no cache knows: the worker holds the batch and retries instead of dead-lettering it.
    text = json.loads((SCHEMAS_DIR / "permit.issued.v1.avsc").read_text(encoding="utf-8"))
    text["fields"].append({"name": "floor_count", "type": "int", "default": 1})
    new_id, _ = SchemaStore(make_engine(stack.settings.store.database_url)).register(
        "simpul.in.permit.issued-value", json.dumps(text)
    )
    payload = permit(f"503/{uuid.uuid4().hex[:8]}/PBG") | {"floor_count": 3}
    waiting = str(uuid.uuid4())
    envelope = Envelope(
        type="permit.issued", source="/agency/dpmptsp", id=waiting, time=dt.datetime.now(dt.UTC)
    )
    value = AvroSchema.from_text(new_id, json.dumps(text)).encode(payload)
    publisher.send_signed(
        "simpul.in.permit.issued",
        str(payload["permit_number"]).encode(),
        value,
        envelope.to_headers(),
    )
    publisher.flush(30)
    wait_until(lambda: "schema registry at" in stack.worker_log(), 60, "worker retrying")
    assert not all_stored(stack, [waiting])
    assert stack.worker is not None and stack.worker.poll() is None

    stack.start_registry()
    wait_until(lambda: all_stored(stack, [waiting]), 60, "held event stored after restart")
    after = publish(publisher, 10)
    wait_until(lambda: all_stored(stack, after), 60, "events after the restart stored")
    assert "simpul_registry_unavailable_total" in stack.metrics()
    # Nothing of this went to the dead-letter topic.
    ours = set(before + during + after + [waiting])
    letters = read_topic(stack.settings.kafka.bootstrap, "simpul.dlq.permit.issued", 1000)
    assert not {dict(m.headers).get("ce_id", b"").decode() for m in letters} & ours
    assert catalog_resolver.latest("simpul.in.permit.issued-value").id == new_id
    publisher.close()
