"""The live poison drill: every poison class of issue 14 between valid events, one worker.

Real broker (the ``broker`` fixture), real PostgreSQL, a real worker process. The worker must
never restart (same PID, still running), store every valid event, dead-letter every poison
with its reason, and answer 200 on /health throughout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.errors import InvalidTimestampError

from simpul.cli.services.broker import EmbeddedBroker
from simpul.codec import frame
from simpul.envelope import Envelope
from tests.support.paths import REPO_ROOT
from tests.support.permits import dead_letters
from tests.support.processes import wait_until
from tests.support.signing import auth, sign
from tests.support.stack import Stack, make_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TYPE = "permit.issued"
TOPIC = f"simpul.in.{TYPE}"


@pytest.fixture(scope="module")
def drill_stack(
    broker: EmbeddedBroker, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = make_stack(broker, pg_url, tmp_path_factory.mktemp("drill"))
    stack.start_worker()
    yield stack
    stack.stop()


def _permit(n: int, **changes: Any) -> dict[str, Any]:
    payload = {
        "permit_number": f"503/DRILL-{uuid.uuid4().hex[:8]}/DPMPTSP/2026",
        "permit_type": "PBG",
        "nib": "9120001234567",
        "applicant_nik": "7271015203880002",
        "business_name": f"Toko Kain Tanjung Batu {n}",
        "kelurahan_code": "7271021002",
        "issued_at": dt.datetime.now(dt.UTC).replace(microsecond=0),
        "valid_until": dt.date(2031, 1, 31),
        "signature_digest": "cd" * 32,
    }
    payload.update(changes)
    return payload


def _sign(message: dict[str, Any]) -> None:
    """Sign as dpmptsp, so each poison reaches the check it is meant for; one the signer
    cannot even read goes unsigned (and is refused at authenticate)."""
    with contextlib.suppress(Exception):
        message["headers"] = sign(
            "dpmptsp", message["headers"], message.get("key"), message.get("value")
        )


class Drill:
    """Builds the valid events and the poisons, each poison tagged ``x-drill: <class>``."""

    def __init__(self, stack: Stack) -> None:
        self.schema = stack.catalog().latest_schema(TYPE)
        self.valid_ids: list[str] = []
        self.messages: list[dict[str, Any]] = []

    def valid(self, n: int) -> None:
        payload = _permit(n)
        envelope = Envelope(type=TYPE, source="/agency/dpmptsp")
        self.valid_ids.append(envelope.id)
        self.messages.append(
            {
                "key": payload["permit_number"].encode(),
                "value": self.schema.encode(payload),
                "headers": envelope.to_headers(),
            }
        )
        _sign(self.messages[-1])

    def poison(self, name: str, **overrides: Any) -> None:
        payload = overrides.pop("payload", None) or _permit(0)
        envelope = Envelope(type=TYPE, source="/agency/dpmptsp")
        headers = overrides.pop("headers", None)
        if headers is None:
            headers = envelope.to_headers()
        for header_name, raw in overrides.pop("replace", {}).items():
            headers = [(k, v) for k, v in headers if k != header_name] + [(header_name, raw)]
        message = {
            "key": payload["permit_number"].encode(),
            "value": self.schema.encode(payload),
            "headers": [*headers, ("x-drill", name.encode())],
        }
        message.update(overrides)
        _sign(message)
        self.messages.append(message)

    def poisons(self) -> list[str]:
        return [
            dict(m["headers"])["x-drill"].decode()
            for m in self.messages
            if "x-drill" in dict(m["headers"])
        ]


def _plan(stack: Stack) -> Drill:
    drill = Drill(stack)
    good = drill.schema.encode(_permit(0))
    poisons: list[tuple[str, dict[str, Any]]] = [
        ("ce_time_overflow", {"replace": {"ce_time": b"9999-12-31T23:59:59-01:00"}}),
        ("ce_time_before_year_one", {"replace": {"ce_time": b"0001-01-01T00:00:00+01:00"}}),
        ("kafka_timestamp_far_future", {"timestamp_ms": 9_000_000_000_000_000}),
        ("ce_id_too_long", {"replace": {"ce_id": b"x" * 300}}),
        ("ce_id_with_nul", {"replace": {"ce_id": f"nul\x00{uuid.uuid4()}".encode()}}),
        ("header_not_utf8", {"replace": {"ce_source": b"/agency/\xff\xfe"}}),
        ("header_huge", {"replace": {"ce_type": b"t" * 100_000}}),
        ("headers_missing", {"headers": []}),
        ("tombstone", {"value": None}),
        ("random_bytes", {"value": uuid.uuid4().bytes * 7}),
        ("schema_id_unknown", {"value": frame(2**31 - 7, good[5:])}),
        ("schema_id_beyond_int32", {"value": frame(2**32 - 1, good[5:])}),
        ("avro_truncated", {"value": good[: len(good) // 2]}),
        ("value_near_one_mib", {"value": b"\x00" + b"\xab" * 1_000_000}),
        ("payload_with_nul", {"payload": _permit(0, business_name="Toko\x00Kain")}),
        ("key_mismatch_huge", {"key": b"K" * 50_000}),
        ("source_unknown_agency", {"replace": {"ce_source": b"/agency/kantor-hantu"}}),
    ]
    for n, (name, overrides) in enumerate(poisons):
        drill.valid(2 * n)
        drill.poison(name, **overrides)
        drill.valid(2 * n + 1)
    return drill


class HealthWatch(threading.Thread):
    """Polls /health every 100 ms and remembers every status seen."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/health"
        self.statuses: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                request = urllib.request.Request(self.url, headers=auth())
                with urllib.request.urlopen(request, timeout=2) as response:
                    self.statuses.append(response.status)
            except urllib.error.HTTPError as error:
                self.statuses.append(error.code)
            except OSError:
                self.statuses.append(0)
            self.stopped.wait(0.1)


def test_poison_drill_worker_never_stops(drill_stack: Stack, tmp_path: Path) -> None:
    stack = drill_stack
    assert stack.worker is not None
    pid = stack.worker.pid
    drill = _plan(stack)
    watch = HealthWatch(stack.settings.worker.web_port)
    watch.start()
    producer = KafkaProducer(
        bootstrap_servers=stack.settings.kafka.bootstrap, acks="all", max_request_size=2**21
    )
    started = time.monotonic()
    try:
        refused_by_broker = set()
        for message in drill.messages:
            if message.get("timestamp_ms") is not None:
                # Its own producer: Apache Kafka 4 refuses a CreateTime beyond
                # message.timestamp.after.max.ms for the whole request it arrives in.
                alone = KafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap, acks="all")
                try:
                    alone.send(
                        TOPIC,
                        key=message["key"],
                        value=message["value"],
                        headers=message["headers"],
                        timestamp_ms=message["timestamp_ms"],
                    ).get(30)
                except InvalidTimestampError:  # the embedded broker takes it
                    refused_by_broker.add(dict(message["headers"])["x-drill"].decode())
                finally:
                    alone.close()
                continue
            producer.send(
                TOPIC, key=message["key"], value=message["value"], headers=message["headers"]
            ).get(30)
        producer.flush()

        def all_stored() -> bool:
            return set(drill.valid_ids) <= stack.store.event_ids()

        wait_until(all_stored, 120, "every valid event stored")
        expected = set(drill.poisons()) - refused_by_broker

        def all_dead_lettered() -> dict[str, dict[str, str]]:
            found = {}
            for letter in dead_letters(stack, TYPE):
                headers = letter["headers"]
                name = headers.get("x-drill")  # type: ignore[union-attr]
                if name in expected:
                    found[name] = headers
            return found if set(found) == expected else {}

        letters = wait_until(all_dead_lettered, 120, "every poison dead-lettered")
        drained = time.monotonic() - started
    finally:
        watch.stopped.set()
        watch.join(5)
        producer.close()
    assert stack.worker.poll() is None and stack.worker.pid == pid, stack.worker_log()[-3000:]
    assert watch.statuses and set(watch.statuses) == {200}, watch.statuses
    for name, headers in letters.items():
        assert headers.get("simpul_dlq_reason"), name
        assert headers.get("simpul_dlq_stage"), name
    figures = "\n".join(
        f"{name}: {headers['simpul_dlq_stage']}/{headers['simpul_dlq_code']}: "
        f"{headers['simpul_dlq_reason'][:100]}"
        for name, headers in sorted(letters.items())
    )
    summary = (
        f"{len(drill.valid_ids)} valid stored, {len(letters)} poisons dead-lettered in "
        f"{drained:.1f}s; /health polled {len(watch.statuses)} times, all 200; worker pid {pid}"
        + (
            f"; refused by the broker: {', '.join(sorted(refused_by_broker))}"
            if refused_by_broker
            else ""
        )
    )
    (REPO_ROOT / "var").mkdir(exist_ok=True)
    (REPO_ROOT / "var" / "poison-drill.txt").write_text(summary + "\n" + figures + "\n")
    print(summary + "\n" + figures)
    assert "Traceback" not in stack.worker_log()
