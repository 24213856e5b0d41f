"""The worker: a Faust app hosting the batch ingest service, `/metrics` and `/health`.

The hot path (``streams/ingest.py``) takes whole batches so that Faust's per-message stream
machinery stays out of it; the Faust app gives the process its lifecycle (signals, graceful
stop), its web server, and the home for table-backed agents such as joins.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.registry import SchemaResolver, SchemaStore
from simpul.settings import Settings
from simpul.subscriptions import SubscriptionPlan
from simpul.topology import Topology
from sinks.audit import AuditLog
from sinks.central_store import CentralStore
from streams import transport
from streams.fanout import FanoutService
from streams.ingest import Health, IngestService

log = logging.getLogger("simpul.worker")


def broker_urls(bootstrap: str) -> str:
    return ";".join(f"simpul://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(settings: Settings, topology: Topology) -> faust.App:
    """Build the worker's Faust app and its ingest service for the topology's event types."""
    transport.register()
    disable_created_metrics()
    app = faust.App(
        settings.worker_id,
        broker=broker_urls(settings.kafka_bootstrap),
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        producer_acks=-1,
        web_enabled=True,
        web_port=settings.worker_web_port,
        web_bind="0.0.0.0",
        store="memory://",
        datadir=str(settings.data_dir / f"faust-{settings.worker_id}"),
    )
    engine = make_engine(settings.database_url)
    catalog = EventCatalog(topology, SchemaResolver(SchemaStore(engine)))
    store = CentralStore(engine)
    health = Health()
    metrics.STORE_UP.set(1)

    class Ingest(IngestService):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(settings, topology, catalog, store, health, **kwargs)

    if settings.fanout_enabled and topology.subscriptions:
        # Registered before ingest because mode stops services in reverse order: on SIGTERM
        # the ingest path stops (and commits) first, without waiting for a fan-out batch.
        app.service(fanout_service(settings, topology, engine))
    app.service(Ingest)
    if not app.agents and not app.tables:
        # Faust's own consumer would subscribe to nothing (aiokafka refuses that); it starts
        # once table-backed agents (joins) are declared.
        app.boot_strategy = BootStrategy(app, enable_kafka=False)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health_page(web: Any, request: Any) -> Any:
        return web.json(health.as_dict(), status=200 if health.store_up else 503)

    return app


def fanout_service(settings: Settings, topology: Topology, engine: Any) -> type[FanoutService]:
    """The fan-out to simpul.out.<agency>, checked against the schemas before it starts."""
    plan = SubscriptionPlan.build(topology, settings.schemas_dir)
    store = SchemaStore(engine)
    resolver = SchemaResolver(store)
    audit = AuditLog(engine, settings.audit_key, f"{settings.worker_id}.fanout")

    class Fanout(FanoutService):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(settings, topology, plan, store, resolver, audit, **kwargs)

    return Fanout


def run_worker(settings: Settings, topology: Topology) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT; exits after a clean stop."""
    from faust.worker import Worker

    app = create_app(settings, topology)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
