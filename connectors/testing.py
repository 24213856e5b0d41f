"""The connector contract suite, shipped with Simpul: the steps every connector kind passes.

A kind, ours or a third party's, is run by the real connector runtime against a running Simpul
stack (a broker, the schema registry, a central store with a worker storing what is
published), and must:

1. start and publish valid records (they reach the central store),
2. stop and resume from its durable position, without reading an old record again,
3. send a bad record to its dead-letter topic (or its own rejects file) and keep running.

Use it from your connector's own repository with pytest (``pip install simpul[test]``):
subclass `ConnectorContract` and give it two class-scoped fixtures, ``stack`` (anything with
``settings``, ``topology`` and ``catalog()``, see `ContractStack`) and ``case`` (a `Case`:
your declaration, how to add valid records and a bad one, and where the bad one shows up)::

    import pytest
    from connectors.testing import Case, ConnectorContract, dead_lettered_by

    class TestTailConnector(ConnectorContract):
        @pytest.fixture(scope="class")
        def stack(self, my_running_simpul):  # broker, registry, store, worker
            return my_running_simpul

        @pytest.fixture(scope="class")
        def case(self, stack, tmp_path_factory):
            path = tmp_path_factory.mktemp("tail") / "recipients.jsonl"
            yield Case(
                name="dtks-feed",
                event_type="social.recipient.updated",
                declaration={"name": "dtks-feed", "connector.class": "tail", "path": str(path),
                             "event.type": "social.recipient.updated", "agency": "dinsos",
                             "errors.tolerance": "all", "poll.interval.ms": 200},
                add_valid=append_recipients,  # n -> the business keys added
                add_bad=append_a_broken_line,
                bad_reported=lambda bootstrap: bool(dead_lettered_by(
                    bootstrap, "simpul.dlq.social.recipient.updated", "dtks-feed")),
            )

pytest collects the three `test_*` methods for each class (and each parameter of a
parametrised ``case``); they run in order and share one runtime. Simpul's own kinds run this
suite from tests/integration/connectors/test_contract.py, one parameter per kind and backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import text

from connectors.base import ConnectorContext, resolve_all
from connectors.runtime import ConnectorTask, ConnectRuntime
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.envelope import header
from simpul.settings import Settings
from simpul.topology.connectors import ConnectorSpec, check_connectors
from simpul.topology.model import Topology

try:
    import pytest
except ImportError as missing:  # pragma: no cover - the suite needs the test extra
    raise ImportError("the connector contract suite needs pytest: pip install simpul[test]") from (
        missing
    )

#: How long a contract step waits for the stack to show the outcome.
STEP_TIMEOUT_S = 60


class ContractStack(Protocol):
    """What the suite needs of a running Simpul: its settings (broker, central store, registry),
    its topology, and an event catalogue reading the registry."""

    settings: Settings
    topology: Topology

    def catalog(self) -> EventCatalog: ...


@dataclass
class Case:
    """One connector under contract: its declaration and its source, driven by the suite."""

    name: str
    event_type: str
    declaration: dict[str, Any]
    add_valid: Callable[[int], list[str]]  # adds n valid records; their business keys
    add_bad: Callable[[], None]  # adds one record the bus must refuse
    bad_reported: Callable[[str], bool]  # given the broker bootstrap: was the bad one reported?
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `check` until it returns something true (which is returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def start_runtime(stack: ContractStack, declaration: dict[str, Any]) -> ConnectRuntime:
    """The connector runtime `simpul connect` runs, with this one connector, started."""
    spec = ConnectorSpec.model_validate(declaration)
    problems = check_connectors(stack.topology, [spec], "connectors")
    assert not problems, f"the declaration does not fit the topology: {problems}"
    settings = stack.settings.model_copy(update={"connect_poll_interval_s": 0.2})
    context = ConnectorContext(settings, make_engine(settings.store.database_url))
    runtime = ConnectRuntime([spec], resolve_all([spec]), context, stack.catalog())
    runtime.start()
    return runtime


def stored_keys(stack: ContractStack, event_type: str, keys: list[str]) -> set[str]:
    """Which of `keys` the central store holds an event of `event_type` for."""
    engine = make_engine(stack.settings.store.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("select key from event_log where type = :t"), {"t": event_type}
            ).scalars()
            return set(rows) & set(keys)
    finally:
        engine.dispose()


def read_topic(bootstrap: str, topic: str, idle_ms: int = 2000) -> Iterator[Any]:
    """Every record of `topic` from the beginning, up to the end offsets taken at the start
    (or until nothing arrives for `idle_ms`), read with a plain client."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        consumer_timeout_ms=idle_ms,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    try:
        for tp in parts:
            if consumer.position(tp) >= ends[tp]:
                consumer.pause(tp)
        while len(consumer.paused()) < len(parts):
            batch = consumer.poll(timeout_ms=idle_ms)
            if not batch:
                return
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if consumer.position(tp) >= ends[tp]:
                    consumer.pause(tp)
    finally:
        consumer.close()


def dead_lettered_by(bootstrap: str, topic: str, connector: str) -> list[Any]:
    """The dead letters on `topic` that `connector` wrote."""
    return [
        m
        for m in read_topic(bootstrap, topic, idle_ms=1500)
        if header(m.headers, "simpul_dlq_connector") == connector
    ]


class Running:
    """The runtime of the case under test, carried from one contract step to the next."""

    runtime: ConnectRuntime | None = None

    @property
    def task(self) -> ConnectorTask:
        assert self.runtime is not None, "the first step did not start the runtime"
        return next(iter(self.runtime.tasks.values()))


class ConnectorContract:
    """The contract steps; subclass it with ``stack`` and ``case`` fixtures (see the module)."""

    @pytest.fixture(scope="class")
    def running(self, case: Case) -> Iterator[Running]:
        held = Running()
        yield held
        if held.runtime is not None:
            held.runtime.stop()
        for cleanup in case.cleanup:
            cleanup()

    def test_starts_and_publishes_valid_records(
        self, case: Case, stack: ContractStack, running: Running
    ) -> None:
        running.runtime = start_runtime(stack, case.declaration)
        keys = case.add_valid(3)
        wait_until(
            lambda: stored_keys(stack, case.event_type, keys) == set(keys),
            STEP_TIMEOUT_S,
            "3 events stored",
        )
        task = running.task
        assert str(task.state) == "RUNNING", task.trace
        assert task.counters.published == 3
        assert task.counters.last_success is not None

    def test_stops_and_resumes_from_its_position(
        self, case: Case, stack: ContractStack, running: Running
    ) -> None:
        assert running.runtime is not None, "the first step did not start the runtime"
        running.runtime.stop()
        later = case.add_valid(2)  # written while the connector is down
        running.runtime = start_runtime(stack, case.declaration)
        wait_until(
            lambda: stored_keys(stack, case.event_type, later) == set(later),
            STEP_TIMEOUT_S,
            "2 more stored",
        )
        # A fixed pause is the point here: give the connector several polls (0.2 s each) in
        # which it must NOT read anything before its position again.
        time.sleep(1.0)
        task = running.task
        assert task.counters.read == 2, (
            "the restarted connector re-read records before its position"
        )
        assert task.counters.published == 2

    def test_bad_record_goes_to_dead_letters_or_rejects(
        self, case: Case, stack: ContractStack, running: Running
    ) -> None:
        case.add_bad()
        after = case.add_valid(1)
        wait_until(
            lambda: stored_keys(stack, case.event_type, after) == set(after),
            STEP_TIMEOUT_S,
            "the valid record after the bad one stored",
        )
        bootstrap = stack.settings.kafka.bootstrap
        wait_until(lambda: case.bad_reported(bootstrap), STEP_TIMEOUT_S, "the bad record reported")
        task = running.task
        assert task.counters.failed >= 1
        assert str(task.state) == "RUNNING", "errors.tolerance=all: a bad record must not stop it"
