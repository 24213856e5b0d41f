"""A source that is down (or not set up yet) does not need a person: the task shows FAILED
with the reason and is retried with back-off until the source answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.testing import start_runtime
from simpul.cli.services.broker import Broker
from tests.support.connector_cases import PEGAWAI_MAPPING, PegawaiSource
from tests.support.processes import wait_until
from tests.support.stack import make_stack

pytestmark = pytest.mark.integration


def test_a_source_that_is_not_ready_is_retried_until_it_is(broker: Broker, tmp_path: Path) -> None:
    stack = make_stack(broker, f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    agency_url = f"sqlite:///{tmp_path / 'simpeg.db'}"
    runtime = start_runtime(
        stack,
        {
            "name": "simpeg-late",
            "connector.class": "polling",
            "event.type": "hr.employee.updated",
            "agency": "bkpsdm",
            "connection.url": agency_url,
            "table.name": "pegawai",
            "timestamp.column.name": "diubah_pada",
            "incrementing.column.name": "id",
            "field.mapping": PEGAWAI_MAPPING,
        },
    )
    task = runtime.tasks["simpeg-late"]
    try:
        wait_until(lambda: str(task.state) == "FAILED", 30, "FAILED: no table yet")
        assert "table.name: no table 'pegawai'" in (task.trace or "")
        source = PegawaiSource(agency_url, stack.topology)  # BKPSDM finishes its migration
        source.add(2)
        wait_until(lambda: task.counters.published == 2, 60, "published after a retry")
        assert str(task.state) == "RUNNING" and task.retries >= 1
        source.engine.dispose()
    finally:
        runtime.stop()
