"""HTTP source (``connector.class: http``): an agency system POSTs its own rows as JSON.

Unlike `simpul ingress` (one endpoint for every agency, the body already in the event's
schema), this connector serves one agency and one event type on its own port, and maps the
agency's column names with ``field.mapping`` — for a PHP system that can send its table rows
as they are. ``POST /records`` takes one JSON object or an array; the API key is one of the
agency's ingress keys (``simpul ingress keys create <agency>``).

The answer comes after the broker acked: 202 with the ce_ids published and, under
``errors.tolerance: all``, the rows rejected (sent to the dead-letter topic) with their index
and reason. Under ``none`` a request with any bad row publishes nothing and gets 422.

Delivery guarantee: at-least-once. With an ``Idempotency-Key`` header the ce_ids derive from it,
so a client retrying after a timeout duplicates nothing the bus keeps. The "position" of this
source is the client's: it retries until it gets an answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from connectors.base import BatchOutcome, SourceConnector, SourceRecord, record_ce_id
from connectors.state import ApiKeyStore
from simpul import jsontext
from simpul.errors import Problem


class HttpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    listen_port: Annotated[int, Field(alias="listen.port", ge=1, le=65535)]
    listen_host: Annotated[str, Field(alias="listen.host")] = "127.0.0.1"
    max_records: Annotated[int, Field(alias="request.max.records", ge=1)] = 500
    max_bytes: Annotated[int, Field(alias="request.max.bytes", ge=1024)] = 1_048_576
    timeout_ms: Annotated[int, Field(alias="request.timeout.ms", ge=100)] = 30_000
    #: Requests accepted but not yet published; beyond it a client gets 503 and Retry-After,
    #: so memory stays under about max_pending * request.max.bytes * 10 (parsed JSON).
    max_pending: Annotated[int, Field(alias="request.max.pending", ge=1)] = 8

    @property
    def poll_interval_s(self) -> float:
        return 0.01  # `poll` itself waits on the queue


@dataclass
class _Pending:
    records: list[SourceRecord]
    answer: concurrent.futures.Future[tuple[int, dict[str, Any]]] = field(
        default_factory=concurrent.futures.Future
    )

    def reply(self, status: int, body: dict[str, Any]) -> None:
        """Answer the request, unless its client stopped waiting (the future is cancelled)."""
        if not self.answer.done():
            self.answer.set_result((status, body))


class HttpConnector(SourceConnector):
    """``connector.class: http`` — rows POSTed by the agency's own system."""

    Options = HttpOptions
    atomic_batches = True  # one request is one batch: all-or-nothing under tolerance none
    options: HttpOptions

    def start(self) -> None:
        import uvicorn

        from simpul.serving import GracefulServer

        self.keys = ApiKeyStore(self.context.store_engine)
        self.queue: queue.Queue[_Pending] = queue.Queue(maxsize=self.options.max_pending)
        self.current: _Pending | None = None
        config = uvicorn.Config(
            self._app(),
            host=self.options.listen_host,
            port=self.options.listen_port,
            log_level="warning",
        )
        self.server = GracefulServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        while not self.queue.empty():
            self.queue.get_nowait().reply(503, {"detail": "connector stopped"})
        if self.current is not None:
            self.current.reply(503, {"detail": "connector stopped"})

    def poll(self) -> Sequence[SourceRecord]:
        try:
            self.current = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        return self.current.records

    def commit(self, outcome: BatchOutcome) -> None:
        pending, self.current = self.current, None
        if pending is None:
            return
        index = {id(r): i for i, r in enumerate(pending.records)}
        rejected = [{"index": index[id(r.record)], "reason": r.reason} for r in outcome.rejected]
        if outcome.failed is not None:
            pending.reply(422, {"detail": rejected, "published": []})
            return
        ids = [record_ce_id(self.spec.name, r.identity) for r in outcome.published]
        pending.reply(202, {"ids": ids, "rejected": rejected})

    def _app(self) -> Any:
        app = FastAPI(
            title=f"Simpul connector {self.spec.name}",
            description=f"{self.spec.agency} posts rows that become {self.spec.event_type} events.",
        )
        spec, options = self.spec, self.options

        @app.post("/records", status_code=202, summary="One row (JSON object) or an array")
        async def records(request: Request) -> JSONResponse:
            auth = request.headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            key = key or request.headers.get("x-api-key", "")
            agency = await asyncio.to_thread(self.keys.agency_for, key) if key else None
            if agency is None:
                return JSONResponse({"detail": "missing, unknown or revoked API key"}, 401)
            if agency != spec.agency:
                return JSONResponse({"detail": f"this connector serves {spec.agency}"}, 403)
            media = request.headers.get("content-type", "").split(";")[0].strip()
            if media != "application/json":
                return JSONResponse({"detail": "send application/json"}, 415)
            body = await request.body()
            if len(body) > options.max_bytes:
                return JSONResponse({"detail": f"body exceeds {options.max_bytes} bytes"}, 413)
            try:
                document = jsontext.loads(body)
            except ValueError as error:  # not JSON, not UTF-8, or nested too deep
                return JSONResponse({"detail": [{"field": "body", "msg": str(error)}]}, 422)
            rows = document if isinstance(document, list) else [document]
            if len(rows) > options.max_records:
                return JSONResponse({"detail": f"more than {options.max_records} rows"}, 413)
            idem = request.headers.get("idempotency-key") or uuid.uuid4().hex
            pending = _Pending(
                [
                    SourceRecord(
                        data=row if isinstance(row, dict) else {},
                        identity=f"{agency}:{idem}:{i}",
                        ref=f"body.{i}",
                        problem=None
                        if isinstance(row, dict)
                        else Problem("row", "expected a JSON object"),
                    )
                    for i, row in enumerate(rows)
                ]
            )
            try:
                self.queue.put_nowait(pending)
            except queue.Full:
                return JSONResponse(
                    {"detail": f"{options.max_pending} requests already waiting; retry later"},
                    503,
                    headers={"Retry-After": "1"},
                )
            try:
                status, answer = await asyncio.wait_for(
                    asyncio.wrap_future(pending.answer), options.timeout_ms / 1000
                )
            except TimeoutError:
                return JSONResponse({"detail": "not acknowledged in time; retry, same key"}, 503)
            return JSONResponse(answer, status)

        return app
