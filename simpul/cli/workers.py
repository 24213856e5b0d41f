"""`simpul worker` and `simpul joins`: the long-running stream processes."""

from __future__ import annotations

import typer

from simpul.cli.common import (
    HostOption,
    PortOption,
    checked_settings,
    checked_topology,
    err,
    listening,
)


def worker(host: HostOption = None, port: PortOption = None) -> None:
    """Run the stream worker: authenticate, validate, dedup, store, forward; /health, /status
    and /metrics on SIMPUL_WORKER_WEB_PORT (Bearer token, see README Security)."""
    from streams.fanout.plan import SubscriptionError, SubscriptionPlan
    from streams.worker import run_worker

    settings = listening(checked_settings(), "worker_web_port", host, port)
    topology = checked_topology(settings)
    try:
        SubscriptionPlan.build(topology, settings.paths.schemas_dir)
    except SubscriptionError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    run_worker(settings, topology)


def joins(host: HostOption = None, port: PortOption = None) -> None:
    """Run the joins: derived events (docs/joins.md) from simpul.valid.*; /metrics, /health
    on SIMPUL_JOINS_WEB_PORT."""
    from streams.joins.service import run_joins

    settings = listening(checked_settings(), "joins_web_port", host, port)
    run_joins(settings, checked_topology(settings))
