"""The private PostgreSQL cluster takes more server settings: the bench's records commit times."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import create_engine, text

from simpul.cli.services.postgres import PostgresCluster

pytestmark = pytest.mark.integration


def test_a_cluster_started_with_settings_records_commit_times() -> None:
    cluster = PostgresCluster().init()
    cluster.start(fast=True, settings={"track_commit_timestamp": "on"})
    engine = create_engine(cluster.url)
    try:
        with engine.begin() as conn:
            assert conn.scalar(text("select current_setting('track_commit_timestamp')")) == "on"
            conn.execute(text("create table t (n int)"))
            conn.execute(text("insert into t values (1)"))
        before_read = dt.datetime.now(dt.UTC)
        with engine.connect() as conn:
            committed = conn.scalar(text("select pg_xact_commit_timestamp(xmin) from t"))
        assert committed is not None
        assert dt.timedelta(0) <= before_read - committed < dt.timedelta(minutes=1)
    finally:
        engine.dispose()
        cluster.destroy()
