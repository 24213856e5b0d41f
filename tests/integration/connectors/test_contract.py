"""The connector contract suite (connectors/testing.py) run for each of Simpul's own kinds, and
for a third-party kind installed with pip: it starts, publishes, stops, resumes from its durable
position, and sends a bad record to the dead letters or its rejects file.

One parameter of the `case` fixture per kind and backend (the factories are in
tests/support/connector_cases.py). Real parts: a broker, a PostgreSQL central store with a
worker process, real source databases (PostgreSQL and SQLite), real files, real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connectors.testing import Case, ConnectorContract
from tests.support.connector_cases import (
    database_case,
    file_case,
    http_case,
    install_example_package,
    rest_case,
    tail_case,
)
from tests.support.postgres import create_pg_database, drop_pg_database
from tests.support.stack import Stack

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


class TestEveryKind(ConnectorContract):
    @pytest.fixture(scope="class")
    def stack(self, pg_stack: Stack) -> Stack:
        return pg_stack

    @pytest.fixture(scope="class", params=CASES)
    def case(
        self, request: pytest.FixtureRequest, stack: Stack, tmp_path_factory: Any
    ) -> Iterator[Case]:
        workdir = tmp_path_factory.mktemp(request.param)
        dropped: list[str] = []
        if request.param == "tail-plugin":
            request.getfixturevalue("example_plugin")
            made = tail_case(workdir / "recipients.jsonl", stack)
        elif request.param == "http":
            made = http_case(stack)
        elif request.param == "rest":
            made = rest_case(stack)
        elif request.param == "file-csv":
            made = file_case(workdir / "drop", stack)
        else:
            kind, backend = request.param.split("-")
            if backend == "postgresql":
                url = create_pg_database()
                dropped.append(url)
            else:
                url = f"sqlite:///{workdir / 'agency.db'}"
            made = database_case(kind, url, stack)
        yield made
        for url in dropped:
            drop_pg_database(url)
