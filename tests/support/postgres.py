"""PostgreSQL for the tests: SIMPUL_TEST_PG_URL, or a private cluster started on first use, and
throw-away databases in it."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text

from simpul.cli.services.postgres import PostgresCluster

_pg_cluster: PostgresCluster | None = None


def pg_admin_url() -> str:
    """The maintenance database URL; starts the session's private cluster on first use."""
    global _pg_cluster
    if os.environ.get("SIMPUL_TEST_PG_URL"):
        return os.environ["SIMPUL_TEST_PG_URL"]
    if _pg_cluster is None:
        cluster = PostgresCluster().init()
        cluster.start(fast=True)
        _pg_cluster = cluster
    return _pg_cluster.url


def stop_pg_cluster() -> None:
    """Destroy the private cluster, if this session started one."""
    global _pg_cluster
    if _pg_cluster is not None:
        _pg_cluster.destroy()
        _pg_cluster = None


def create_pg_database() -> str:
    """A new, empty database; its URL."""
    admin_url = pg_admin_url()
    name = f"simpul_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
