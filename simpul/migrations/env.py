"""Alembic environment: runs against the connection `simpul.dbmigrate` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

config = context.config

#: Upgrading needs no target metadata; comparing or autogenerating does, and whoever asks for
#: it hands it in (`simpul.cli.db.central_store_metadata`), so the core imports no table module.
metadata = config.attributes.get("target_metadata")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from simpul.db import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
