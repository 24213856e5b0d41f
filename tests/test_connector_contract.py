"""The contract every connector kind passes: it starts, publishes, stops, resumes from its
durable position, and sends a bad record to the dead letters or its rejects file.

One suite, generated for each case in `CASES`; a new kind is tested by adding one case
(see tests/connector_cases.py). Real parts: the embedded broker, a PostgreSQL central store
with a worker process, real source databases (PostgreSQL and SQLite), real files, and a
third-party kind installed with pip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import create_pg_database, drop_pg_database, wait_until
from tests.connector_cases import (
    Case,
    database_case,
    file_case,
    http_case,
    install_example_package,
    rest_case,
    start_runtime,
    stored_keys,
    tail_case,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = [
    "outbox-sqlite",
    "polling-postgresql",
    "polling-sqlite",
    "file-csv",
    "http",
    "rest",
    "tail-plugin",
]


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    installed = install_example_package(tmp_path_factory.mktemp("plugin"))
    yield
    installed.uninstall()


@pytest.fixture(scope="module", params=CASES)
def case(
    request: pytest.FixtureRequest,
    pg_stack: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Case]:
    workdir = tmp_path_factory.mktemp(request.param)
    dropped: list[str] = []
    if request.param == "tail-plugin":
        request.getfixturevalue("example_plugin")
        made = tail_case(workdir / "recipients.jsonl", pg_stack)
    elif request.param == "http":
        made = http_case(pg_stack)
    elif request.param == "rest":
        made = rest_case(pg_stack)
    elif request.param == "file-csv":
        made = file_case(workdir / "drop", pg_stack)
    else:
        kind, backend = request.param.split("-")
        if backend == "postgresql":
            url = create_pg_database()
            dropped.append(url)
        else:
            url = f"sqlite:///{workdir / 'agency.db'}"
        made = database_case(kind, url, pg_stack)
    yield made
    for cleanup in made.cleanup:
        cleanup()
    for url in dropped:
        drop_pg_database(url)


class Running:
    """The runtime of the case under test, carried from one contract step to the next."""

    runtime: Any = None


@pytest.fixture(scope="module")
def running(case: Case) -> Iterator[type[Running]]:
    yield Running
    if Running.runtime is not None:
        Running.runtime.stop()
        Running.runtime = None


def _task(running: type[Running]) -> Any:
    return next(iter(running.runtime.tasks.values()))


def test_starts_and_publishes_valid_records(case: Case, pg_stack: Any, running: Any) -> None:
    running.runtime = start_runtime(pg_stack, case.declaration)
    keys = case.add_valid(3)
    wait_until(
        lambda: stored_keys(pg_stack, case.event_type, keys) == set(keys), 60, "3 events stored"
    )
    task = _task(running)
    assert str(task.state) == "RUNNING", task.trace
    assert task.counters.published == 3
    assert task.counters.last_success is not None


def test_stops_and_resumes_from_its_position(case: Case, pg_stack: Any, running: Any) -> None:
    running.runtime.stop()
    later = case.add_valid(2)  # written while the connector is down
    running.runtime = start_runtime(pg_stack, case.declaration)
    wait_until(
        lambda: stored_keys(pg_stack, case.event_type, later) == set(later), 60, "2 more stored"
    )
    time.sleep(1.0)  # several polls: nothing before the position may be read again
    task = _task(running)
    assert task.counters.read == 2, "the restarted connector re-read records before its position"
    assert task.counters.published == 2


def test_bad_record_goes_to_dead_letters_or_rejects(
    case: Case, pg_stack: Any, running: Any
) -> None:
    case.add_bad()
    after = case.add_valid(1)
    wait_until(lambda: stored_keys(pg_stack, case.event_type, after) == set(after), 60, "stored")
    bootstrap = pg_stack.settings.kafka.bootstrap
    wait_until(lambda: case.bad_reported(bootstrap), 60, "the bad record reported")
    task = _task(running)
    assert task.counters.failed >= 1
    assert str(task.state) == "RUNNING", "errors.tolerance=all: a bad record must not stop it"
