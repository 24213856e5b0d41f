"""The fixtures: a real broker, a real PostgreSQL database, a real worker process. What they are
built from lives in tests/support/."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simpul import dbmigrate
from simpul.catalog import EventCatalog
from simpul.cli.services.broker import Broker
from simpul.topology.model import Topology, load_topology
from tests.support.brokers import BROKER_ENGINE, BrokerPool, discard_broker, new_broker
from tests.support.postgres import create_pg_database, drop_pg_database, stop_pg_cluster
from tests.support.records import sqlite_catalog
from tests.support.signing import install_test_keys
from tests.support.stack import TOPOLOGY_FILE, Stack, make_stack

_pool = BrokerPool()


def pytest_configure(config: pytest.Config) -> None:
    """Every test, and every process a test starts, signs with one set of generated keys."""
    install_test_keys(TOPOLOGY_FILE)


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = os.environ.get("SIMPUL_TEST_PG_URL") or "a private cluster started by the tests"
    return [f"broker: {BROKER_ENGINE} (SIMPUL_TEST_BROKER)", f"postgresql: {where}"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With SIMPUL_FAIL_ON_SKIP=1 (CI sets it) a skipped test fails: a missing tool is a defect
    of the machine's set-up, not a pass."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("SIMPUL_FAIL_ON_SKIP") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and SIMPUL_FAIL_ON_SKIP=1 forbids skips: {reason}"


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_pg_cluster()
    _pool.close()


@pytest.fixture(scope="session")
def topology() -> Topology:
    return load_topology(TOPOLOGY_FILE)


@pytest.fixture
def catalog(tmp_path: Path, topology: Topology) -> EventCatalog:
    """The event catalogue over a fresh SQLite registry with the repository's schemas."""
    return sqlite_catalog(tmp_path, topology)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty central store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        dbmigrate.upgrade(url)
        yield url
    else:
        url = create_pg_database()
        dbmigrate.upgrade(url)
        yield url
        drop_pg_database(url)


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """One fresh broker per module (the pool has the next one starting already)."""
    running = _pool.take()
    yield running
    discard_broker(running)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Brokers a test owns (to kill or restart), discarded at its end."""
    made: list[Broker] = []

    def make(nodes: int = 1, admin_password: str | None = None) -> Broker:
        if nodes == 1 and admin_password is None:
            made.append(_pool.take())  # started in the background while the last test ran
        else:
            made.append(new_broker(tmp_path / f"broker-{len(made)}", nodes, admin_password))
        return made[-1]

    yield make
    for running in made:
        discard_broker(running)


@pytest.fixture(scope="module")
def pg_stack(
    broker: Broker, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The real path: a broker, PostgreSQL central store, one worker process."""
    stack = make_stack(broker, pg_url, tmp_path_factory.mktemp("stack"))
    stack.start_worker()
    yield stack
    stack.stop()
