"""Every `simpul` command starts the same app: assembling it must not load what only some
commands use (the database, Kafka, HTTP clients, the other folders), or each process pays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("sqlalchemy", "alembic", "kafka", "aiokafka", "httpx", "streams", "sinks", "connectors")


def test_assembling_the_cli_loads_no_database_kafka_or_other_folder() -> None:
    probe = (
        f"import sys, simpul.cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert run.stdout.strip() == ""
