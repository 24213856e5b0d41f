"""The worker (`simpul worker`): the batch ingest service, its fan-out, and the status pages.

The ingest (``streams/ingest/service.py``) takes whole batches from aiokafka's ``getmany()``;
the process host (``streams/runtime/host.py``) gives it its lifecycle, signals, ``/metrics``
and ``/health``. Beside those the worker serves the scorecard (``/status``,
``/status.html``, ``/readiness.html``) and the dead-letter limit's command (``/dlq-limit``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.web import View
from mode import Service
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from simpul import metrics
from simpul.catalog import EventCatalog
from simpul.db import make_engine
from simpul.registry.client import make_resolver
from simpul.registry.store import SchemaStore
from simpul.settings import Settings
from simpul.topology.model import Topology
from sinks.audit import AuditLog
from sinks.central_store import CentralStore
from sinks.reports.scorecard import build_scorecard, export_gauges, render_html
from streams.fanout.plan import SubscriptionPlan
from streams.fanout.service import InboxFanout
from streams.ingest.service import Health, IngestService
from streams.runtime.host import ProcessHost

log = logging.getLogger("simpul.worker")


def create_host(settings: Settings, topology: Topology) -> ProcessHost:
    """The worker's process host with its ingest service for the topology's event types."""
    engine = make_engine(settings.store.database_url)
    catalog = EventCatalog(topology, make_resolver(settings))
    store = CentralStore(engine)
    health = Health()
    metrics.STORE_UP.set(1)
    host = ProcessHost(
        settings,
        settings.worker.id,
        settings.worker.web_port,
        lambda: (health.as_dict(), 200 if health.store_up else 503),
    )

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

    host.service(Ingest)

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

    host.service(ScorecardGauges)

    @host.page("/dlq-limit")
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

    @host.page("/status")
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

    @host.page("/status.html")
    async def status_html_page(web: Any, request: Any) -> Any:
        card = await scorecard_or_error()
        if isinstance(card, str):
            return web.text(f"central store unavailable: {card}", status=503)
        return web.html(render_html(card))

    @host.page("/readiness.html")
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

    return host


def inbox_fanout(settings: Settings, topology: Topology, engine: Engine) -> InboxFanout:
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
    create_host(settings, topology).run()
