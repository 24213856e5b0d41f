"""The Python publisher agency systems embed: validated, Avro-encoded, signed CloudEvents on Kafka.

Every event is signed (`simpul.signing`): by the agency's own key, or by a gateway's key
(``signer=``) when a Simpul process publishes on behalf of an agency it authenticated.

Delivery guarantee: at-least-once. The producer waits for all in-sync replicas
(``acks=all``) and retries; `Publisher.close` flushes. A retry can duplicate a message,
which the bus drops by ``ce_id``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from simpul.catalog import EventCatalog
from simpul.envelope import Envelope, Headers
from simpul.errors import PayloadError
from simpul.kafka_clients import kafka_python_options
from simpul.registry.client import make_resolver
from simpul.settings import Settings, get_settings
from simpul.signing import Signer, signer_for
from simpul.topology.model import Topology, load_topology


class Publisher:
    """Publishes events for one agency: ``Publisher(agency="bkpsdm").publish(type, payload)``."""

    def __init__(
        self,
        agency: str,
        *,
        settings: Settings | None = None,
        topology: Topology | None = None,
        catalog: EventCatalog | None = None,
        signer: Signer | None = None,
        **producer_config: Any,
    ) -> None:
        self.settings = settings or get_settings()
        if catalog is None:
            topology = topology or load_topology(self.settings.paths.topology_file)
            catalog = EventCatalog(topology, make_resolver(self.settings))
        self.catalog = catalog
        self.agency = catalog.topology.agency(agency)
        self.signer = signer or signer_for(self.settings, self.agency.code)
        config: dict[str, Any] = {
            **kafka_python_options(self.settings),
            "acks": "all",
            "retries": 10,
            "linger_ms": 5,
            "client_id": f"simpul-publisher-{agency}",
        }
        config.update(producer_config)
        self._producer = KafkaProducer(**config)

    def publish(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        id: str | None = None,
        time: dt.datetime | None = None,
        validate: bool = True,
    ) -> FutureRecordMetadata:
        """Validate, encode and send one event; returns the send future.

        Raises `PayloadError` naming every bad field, or `PermissionError` when this agency
        may not produce the type. ``validate=False`` exists for simulators and tests that
        must send bad events on purpose.
        """
        topic, key, value, headers = self._encode(event_type, payload, id, time, validate)
        return self.send_signed(topic, key, value, headers)

    def publish_many(
        self,
        event_type: str,
        payloads: Sequence[Mapping[str, Any]],
        *,
        ids: Sequence[str | None] | None = None,
        times: Sequence[dt.datetime | None] | None = None,
        validate: bool = True,
    ) -> list[FutureRecordMetadata]:
        """Validate, encode, sign as a batch and send many events of one type (an export, a
        backlog, a connector's poll); returns the send futures in order. ``ids`` and
        ``times``, when given, go with the payloads in order. Every payload is checked before
        any is sent: one bad payload raises `PayloadError` and nothing is sent.

        One signature covers up to 256 events (`Signer.sign_batch`), so the worker checks one
        Ed25519 signature per batch instead of one per event."""
        count = len(payloads)
        if (ids is not None and len(ids) != count) or (times is not None and len(times) != count):
            raise ValueError("ids and times, when given, need one entry per payload")
        encoded = [
            self._encode(
                event_type,
                payload,
                ids[i] if ids is not None else None,
                times[i] if times is not None else None,
                validate,
            )
            for i, payload in enumerate(payloads)
        ]
        signed = self.signer.sign_batch(
            [(headers, key, value) for _, key, value, headers in encoded]
        )
        return [
            self.send_raw(topic, key, value, headers)
            for (topic, key, value, _), headers in zip(encoded, signed, strict=True)
        ]

    def _encode(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        id: str | None,
        time: dt.datetime | None,
        validate: bool,
    ) -> tuple[str, bytes, bytes, Headers]:
        etype = self.catalog.topology.event_type(event_type)
        schema = self.catalog.latest_schema(event_type)
        if validate:
            if not etype.may_produce(self.agency.code):
                raise PermissionError(
                    f"ce_source: agency {self.agency.code} may not produce {event_type}"
                )
            problems = self.catalog.payload_problems(etype, schema, payload)
            if not problems and (scope := self.catalog.scope_problem(self.agency, payload)):
                problems = [scope]
            if problems:
                texts: list[str] = [*problems]  # each a Problem, read as "field: reason"
                raise PayloadError(event_type, texts)
        envelope = Envelope(
            type=event_type,
            source=self.agency.source,
            id=id or str(uuid.uuid4()),
            time=time or dt.datetime.now(dt.UTC),
        )
        value = schema.encode(dict(payload))
        key = str(payload.get(etype.key, "")).encode()
        return etype.topic("in"), key, value, envelope.to_headers()

    def send_signed(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> FutureRecordMetadata:
        """Sign the bytes (headers, key, value) as they are and send them."""
        return self.send_raw(topic, key, value, self.signer.sign(headers, key, value))

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> FutureRecordMetadata:
        """Send bytes as they are, unsigned (dead-letter replay, tests of refusals)."""
        return self._producer.send(topic, key=key, value=value, headers=headers)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float | None = 30) -> None:
        self._producer.flush(timeout)
        self._producer.close(timeout)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PublisherPool:
    """One `Publisher` per agency, made on first use: ``pool(agency).publish(...)``.

    Simulators and tests speak for many agencies; each keeps its own producer (client id).
    """

    def __init__(
        self,
        settings: Settings,
        catalog: EventCatalog,
        signer: Signer | None = None,
        **producer_config: Any,
    ) -> None:
        """``signer``: a gateway's key that signs for every agency; otherwise each agency's."""
        self.settings = settings
        self.catalog = catalog
        self.signer = signer
        self.producer_config = producer_config
        self._publishers: dict[str, Publisher] = {}

    def __call__(self, agency: str) -> Publisher:
        publisher = self._publishers.get(agency)
        if publisher is None:
            publisher = self._publishers[agency] = Publisher(
                agency,
                settings=self.settings,
                catalog=self.catalog,
                signer=self.signer,
                **self.producer_config,
            )
        return publisher

    def close(self) -> None:
        for publisher in self._publishers.values():
            publisher.close()
        self._publishers.clear()

    def __enter__(self) -> PublisherPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
