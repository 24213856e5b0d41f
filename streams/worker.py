"""The worker: a Faust app hosting the batch ingest service, `/metrics` and `/health`.

The hot path (``streams/ingest/service.py``) takes whole batches so that Faust's per-message stream
machinery stays out of it; the Faust app gives the process its lifecycle (signals, graceful
stop), its web server, and the home for table-backed agents such as joins.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.app.base import BootStrategy
from faust.web import View
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.httpauth import aiohttp_options
from simpul.kafka_clients import faust_credentials
from simpul.registry.client import make_resolver
from simpul.registry.store import SchemaStore
from simpul.settings import Settings
from simpul.topology.model import Topology
from simpul.topology.subscriptions import SubscriptionPlan
from sinks.audit import AuditLog
from sinks.central_store import CentralStore
from sinks.reports.scorecard import build_scorecard, export_gauges, render_html
from streams import transport
from streams.fanout.service import InboxFanout
from streams.ingest.service import Health, IngestService

log = logging.getLogger("simpul.worker")


def broker_urls(bootstrap: str) -> str:
    return ";".join(f"simpul://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(settings: Settings, topology: Topology) -> faust.App:
    """Build the worker's Faust app and its ingest service for the topology's event types."""
    transport.register()
    disable_created_metrics()
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    tuning = settings.client_tuning()
    app = faust.App(
        settings.worker.id,
        broker=broker_urls(settings.kafka.bootstrap),
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=tuning.session_timeout_s,
        broker_rebalance_timeout=tuning.rebalance_timeout_s,
        broker_heartbeat_interval=tuning.heartbeat_interval_s,
        producer_acks=-1,
        web_enabled=True,
        web_port=settings.worker.web_port,
        web_bind=settings.http.bind_host,
        # Every page, Faust's own included, needs the token; bodies are bounded.
        web_application_options=aiohttp_options(settings),
        store="memory://",
        datadir=str(settings.paths.data_dir / f"faust-{settings.worker.id}"),
    )
    engine = make_engine(settings.store.database_url)
    catalog = EventCatalog(topology, make_resolver(settings))
    store = CentralStore(engine)
    health = Health()
    metrics.STORE_UP.set(1)

    ingest: list[IngestService] = []  # the instance Faust makes, for the web commands
    fanout = (
        inbox_fanout(settings, topology, engine)
        if settings.worker.fanout_enabled and topology.subscriptions
        else None
    )

    class Ingest(IngestService):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(settings, topology, catalog, store, health, fanout, **kwargs)
            ingest.append(self)

    app.service(Ingest)

    class ScorecardGauges(Service):
        """Refreshes the per-agency freshness gauges from the store (every worker does;
        the dashboard and alerts take the max over workers)."""

        @Service.task
        async def _refresh(self) -> None:
            while not self.should_stop:
                try:
                    card = await asyncio.to_thread(
                        build_scorecard, engine, topology, None, settings.paths.connectors_dir
                    )
                except SQLAlchemyError as error:  # the store may be down; /health says so
                    log.warning("scorecard refresh failed: %s", error)
                else:
                    export_gauges(card)
                await self.sleep(settings.worker.status_refresh_s)

    app.service(ScorecardGauges)
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

    @app.page("/dlq-limit")
    class DlqLimitPage(View):
        """GET: the types paused by the dead-letter limit. POST ``{"type": ...}``: resume one
        now. Like every page of the worker, it needs the HTTP token (simpul.httpauth)."""

        async def get(self, request: Any) -> Any:
            return self.json({"paused": ingest[0].dlq_limit.paused() if ingest else []})

        async def post(self, request: Any) -> Any:
            try:
                body = await request.json()
                name = str(body["type"])
            except (ValueError, KeyError, TypeError):
                return self.json({"error": 'send {"type": "<event type>"}'}, status=400)
            if not ingest or not ingest[0].request_resume(name):
                return self.json({"error": f"{name} is not paused"}, status=404)
            return self.json({"resumed": name})

    async def scorecard_or_error() -> Any:
        try:
            card = await asyncio.to_thread(
                build_scorecard, engine, topology, None, settings.paths.connectors_dir
            )
        except SQLAlchemyError as error:
            return str(getattr(error, "orig", error)).splitlines()[0]
        export_gauges(card)
        return card

    @app.page("/status")
    async def status_page(web: Any, request: Any) -> Any:
        """The scorecard: JSON by default, the HTML page for a browser (Accept: text/html)."""
        card = await scorecard_or_error()
        accept = request.headers.get("Accept", "")
        wants_html = "text/html" in accept and "application/json" not in accept.split(",")[0]
        if isinstance(card, str):
            error = f"central store unavailable: {card}"
            if wants_html:
                return web.text(error, status=503)
            return web.json({"error": error}, status=503)
        return web.html(render_html(card)) if wants_html else web.json(card.as_dict())

    @app.page("/status.html")
    async def status_html_page(web: Any, request: Any) -> Any:
        card = await scorecard_or_error()
        if isinstance(card, str):
            return web.text(f"central store unavailable: {card}", status=503)
        return web.html(render_html(card))

    @app.page("/readiness.html")
    async def readiness_html_page(web: Any, request: Any) -> Any:
        """Onboarding and data readiness per agency, and the weekly connected history."""
        from sinks.reports.readiness import build_readiness
        from sinks.reports.readiness import render_html as render_readiness

        try:
            report = await asyncio.to_thread(
                lambda: build_readiness(
                    engine, topology, connectors_dir=settings.paths.connectors_dir
                )
            )
        except SQLAlchemyError as error:
            reason = str(getattr(error, "orig", error)).splitlines()[0]
            return web.text(f"central store unavailable: {reason}", status=503)
        return web.html(render_readiness(report))

    return app


def inbox_fanout(settings: Settings, topology: Topology, engine: Any) -> InboxFanout:
    """The ingest path's fan-out to simpul.out.<agency>, checked against the schemas first."""
    plan = SubscriptionPlan.build(topology, settings.paths.schemas_dir)
    store = SchemaStore(engine)  # derived schemas are registered in the store directly
    audit = AuditLog(
        engine,
        settings.audit_secret(),
        f"{settings.worker.id}.fanout",
        settings.audit.heads_file,
        settings.audit.export_s,
    )
    return InboxFanout(plan, store, audit)


def run_worker(settings: Settings, topology: Topology) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT; exits after a clean stop."""
    from faust.worker import Worker

    app = create_app(settings, topology)
    worker = Worker(
        app, loglevel=settings.process.log_level.upper(), quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()
