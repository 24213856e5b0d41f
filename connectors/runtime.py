"""The connector runtime behind `simpul connect`: one thread per task, and Prometheus metrics
per connector; its REST API to watch and steer them is `connectors.api`.

Delivery guarantee: at-least-once, duplicates dropped by the bus. A batch is published, the
runtime waits for the broker's acknowledgement of every record, and only then lets the
connector store its position. A bad record goes to the connector's dead-letter topic (or the
kind's own rejects file) under ``errors.tolerance: all``; under ``none`` the task stops FAILED
before it, with the reason, and resumes from there after `restart`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from connectors.base import (
    BatchOutcome,
    ConnectorContext,
    Rejected,
    SourceConnector,
    SourceRecord,
    record_ce_id,
    resolve_all,
)
from connectors.mapping import map_payload, missing_fields
from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.deadletter import dead_letter_headers
from simpul.envelope import format_time
from simpul.errors import Problem
from simpul.publisher import PublisherPool
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import SchemaStore
from simpul.settings import Settings
from simpul.signing import signer_for
from simpul.topology.connectors import ConnectorSpec, located_connectors
from simpul.topology.model import Topology

log = logging.getLogger("simpul.connect")


class State(StrEnum):
    UNASSIGNED = "UNASSIGNED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    FAILED = "FAILED"


@dataclass
class Counters:
    read: int = 0
    published: int = 0
    failed: int = 0
    last_success: dt.datetime | None = None


class ConnectorTask:
    """One connector task on its own thread: poll, validate, publish, wait for acks, commit."""

    def __init__(
        self,
        spec: ConnectorSpec,
        kind: type[SourceConnector],
        options: BaseModel,
        context: ConnectorContext,
        catalog: EventCatalog,
        publishers: PublisherPool,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.options = options
        self.context = context
        self.catalog = catalog
        self.publishers = publishers
        self.state = State.UNASSIGNED
        self.trace: str | None = None
        self.retries = 0
        self.counters = Counters()
        self.connector: SourceConnector | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll_interval = float(
            getattr(options, "poll_interval_s", None) or context.settings.connect.poll_interval_s
        )

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self.trace = None
        self._thread = threading.Thread(
            target=self._run, name=f"connector-{self.spec.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        self._paused.set()
        if self.state == State.RUNNING:
            self._set_state(State.PAUSED)

    def resume(self) -> None:
        self._paused.clear()
        if self.state == State.PAUSED:
            self._set_state(State.RUNNING)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the loop ---------------------------------------------------------------------------
    def _set_state(self, state: State) -> None:
        self.state = state
        metrics.CONNECTOR_RUNNING.labels(self.spec.name).set(1 if state == State.RUNNING else 0)

    def _run(self) -> None:
        """Run until stopped. A failure that is not a bad record (source database down, broker
        unreachable) is retried with back-off (1 s doubling to 60 s) for
        ``errors.retry.timeout`` ms (-1: forever); the task shows FAILED meanwhile."""
        delay, first_failure = 1.0, None
        while not self._stop.is_set():
            failure = self._run_once()
            if failure is None or isinstance(failure, RecordFailed):
                return
            first_failure = first_failure or time.monotonic()
            limit = self.spec.errors_retry_timeout_ms
            if limit == 0 or (limit > 0 and (time.monotonic() - first_failure) * 1000 > limit):
                return
            self.retries += 1
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 60.0)

    def _run_once(self) -> Exception | None:
        try:
            self.connector = self.kind(self.spec, self.options, self.context)
            self.connector.start()
            self._set_state(State.PAUSED if self._paused.is_set() else State.RUNNING)
            while not self._stop.is_set():
                if self._paused.is_set():
                    self._set_state(State.PAUSED)
                    self._stop.wait(0.2)
                    continue
                self._set_state(State.RUNNING)
                batch = self.connector.poll()
                if not batch:
                    self._stop.wait(self.poll_interval)
                    continue
                outcome = self.process(batch)
                self.connector.commit(outcome)
                if outcome.failed is not None and not self.kind.atomic_batches:
                    raise RecordFailed(outcome.failed)
            self._set_state(State.UNASSIGNED)
            return None
        except Exception as error:
            self.trace = (
                f"{error.rejected.record.ref}: {error.rejected.reason}"
                if isinstance(error, RecordFailed)
                else "".join(traceback.format_exception(error))
            )
            log.error("connector %s failed: %s", self.spec.name, self.trace)
            self._set_state(State.FAILED)
            return error
        finally:
            if self.connector is not None:
                try:
                    self.connector.stop()
                except Exception:
                    log.exception("connector %s: stop failed", self.spec.name)
                self.connector = None

    def process(self, batch: Sequence[SourceRecord]) -> BatchOutcome:
        """Validate and publish one batch; returns once the broker acked what was sent."""
        name = self.spec.name
        metrics.CONNECTOR_RECORDS_READ.labels(name).inc(len(batch))
        self.counters.read += len(batch)
        etype = self.catalog.topology.event_type(self.spec.event_type)
        schema = self.catalog.latest_schema(etype.name)
        agency = self.catalog.topology.agency(self.spec.agency)
        # Per record: its payload and its problems (none: it is published).
        checked: list[tuple[SourceRecord, dict[str, Any] | None, list[Problem]]] = []
        for record in batch:
            if record.problem is not None:
                checked.append((record, None, [Problem.of(record.problem)]))
                continue
            payload = map_payload(record.data, self.spec.field_mapping, schema.definition)
            problems = missing_fields(schema.definition, payload, self.spec.field_mapping)
            problems = problems or self.catalog.payload_problems(etype, schema, payload)
            if not problems and (scope := self.catalog.scope_problem(agency, payload)):
                problems = [scope]
            checked.append((record, payload, problems))

        outcome = BatchOutcome()
        tolerate = self.spec.errors_tolerance == "all"
        if not tolerate and self.kind.atomic_batches and any(p for _, _, p in checked):
            # All or nothing: report every bad record, publish none, fail the batch.
            outcome.rejected = [Rejected(r, "; ".join(p)) for r, _, p in checked if p]
            outcome.failed = outcome.rejected[0]
            self._count_failed(len(outcome.rejected))
            return outcome

        publisher = self.publishers(self.spec.agency)
        futures: list[Any] = []
        publish: list[tuple[dict[str, Any], str, dt.datetime | None]] = []
        for record, mapped, problems in checked:
            if problems:
                rejected = Rejected(record, "; ".join(problems))
                if not tolerate:
                    outcome.failed = rejected
                    self._count_failed(1)
                    break
                outcome.rejected.append(rejected)
                if not self.kind.writes_rejects:
                    futures.append(self._dead_letter(publisher, record, problems))
            else:
                assert mapped is not None
                publish.append((mapped, record_ce_id(name, record.identity), record.time))
                outcome.published.append(record)
            outcome.done.append(record)
        # The poll's events signed as one batch (the worker checks one signature for them).
        futures += publisher.publish_many(
            etype.name,
            [payload for payload, _, _ in publish],
            ids=[ce_id for _, ce_id, _ in publish],
            times=[when for _, _, when in publish],
            validate=False,
        )
        timeout = self.context.settings.ingress.ack_timeout_s
        for future in futures:
            future.get(timeout=timeout)  # raises on a send the broker never acked
        self._count_failed(len(outcome.rejected))
        if outcome.published:
            metrics.CONNECTOR_RECORDS_PUBLISHED.labels(name).inc(len(outcome.published))
            self.counters.published += len(outcome.published)
            now = dt.datetime.now(dt.UTC)
            self.counters.last_success = now
            metrics.CONNECTOR_LAST_SUCCESS.labels(name).set(now.timestamp())
        return outcome

    def _count_failed(self, count: int) -> None:
        if count:
            metrics.CONNECTOR_RECORDS_FAILED.labels(self.spec.name).inc(count)
            self.counters.failed += count

    def _dead_letter(self, publisher: Any, record: SourceRecord, problems: list[Problem]) -> Any:
        """The record as read (JSON), with the CloudEvents and dead-letter headers; the code
        names the first problem's field."""
        ce_id = record_ce_id(self.spec.name, record.identity)
        value = json.dumps(dict(record.data), default=str, ensure_ascii=False).encode()
        field = problems[0].field
        reason = "; ".join(problems)
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", ce_id.encode()),
            ("ce_source", f"/agency/{self.spec.agency}".encode()),
            ("ce_type", self.spec.event_type.encode()),
            ("ce_time", format_time(record.time or dt.datetime.now(dt.UTC)).encode()),
            ("content-type", b"application/json"),
        ]
        headers = dead_letter_headers(
            headers,
            "validate",
            f"connector.{field}"[:64],
            f"{record.ref}: {reason}",
            connector=self.spec.name,
        )
        return publisher.send_raw(self.spec.dead_letter_topic, None, value, headers)

    # -- what the REST API shows -------------------------------------------------------------
    def status(self, worker_id: str) -> dict[str, Any]:
        task: dict[str, Any] = {"id": 0, "state": str(self.state), "worker_id": worker_id}
        if self.trace:
            task["trace"] = self.trace
        connector_state = State.RUNNING if self.state == State.FAILED else self.state
        return {
            "name": self.spec.name,
            "connector": {"state": str(connector_state), "worker_id": worker_id},
            "tasks": [task],
            "type": "source",
            "metrics": {
                "records_read": self.counters.read,
                "records_published": self.counters.published,
                "records_failed": self.counters.failed,
                "retries": self.retries,
                "last_success": (
                    format_time(self.counters.last_success) if self.counters.last_success else None
                ),
            },
        }


class RecordFailed(Exception):
    def __init__(self, rejected: Rejected) -> None:
        super().__init__(rejected.reason)
        self.rejected = rejected


class ConnectRuntime:
    """All declared connectors of one `simpul connect` process."""

    def __init__(
        self,
        specs: Sequence[ConnectorSpec],
        resolved: Sequence[tuple[type[SourceConnector], BaseModel]],
        context: ConnectorContext,
        catalog: EventCatalog,
    ) -> None:
        # The runtime signs as the connect gateway for each connector's agency.
        self.publishers = PublisherPool(
            context.settings, catalog, signer=signer_for(context.settings, "connect")
        )
        self.tasks = {
            spec.name: ConnectorTask(spec, kind, options, context, catalog, self.publishers)
            for spec, (kind, options) in zip(specs, resolved, strict=True)
        }
        self.worker_id = f"{socket.gethostname()}:{context.settings.connect.port}"

    def start(self) -> None:
        for task in self.tasks.values():
            task.start()

    def stop(self) -> None:
        for task in self.tasks.values():
            task._stop.set()
        for task in self.tasks.values():
            task.stop()
        self.publishers.close()


def build_runtime(settings: Settings, topology: Topology) -> ConnectRuntime:
    """Every declared connector, resolved and validated; raises `ConnectorConfigError`."""
    located = located_connectors(topology, settings.paths.connectors_dir)
    specs = [spec for spec, _ in located]
    resolved = resolve_all(specs, [where for _, where in located])
    engine = make_engine(settings.store.database_url)
    catalog = EventCatalog(topology, SchemaResolver(SchemaStore(engine)))
    return ConnectRuntime(specs, resolved, ConnectorContext(settings, engine), catalog)
