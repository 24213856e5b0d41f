"""HTTP ingress (`simpul ingress`): any agency system that can send an HTTP request publishes.

``POST /v1/events/{type}`` takes one JSON event or a JSON array of events (a batch). The body
may also be CloudEvents structured JSON (``application/cloudevents+json`` or
``application/cloudevents-batch+json``) carrying ``id``, ``time`` and ``data``.

* Authentication: a per-agency API key (``Authorization: Bearer <key>`` or ``X-API-Key``),
  stored hashed. The server sets ``ce_source`` from the key: a client cannot speak for
  another agency (a ``source`` naming another agency is refused with 403).
* Authorization: the topology's producers of the event type (403 otherwise).
* Validation against the Avro schema and the identifier rules; a batch is all-or-nothing and a
  422 lists every problem with its path (``body.3.nik``).
* Idempotency: an ``Idempotency-Key`` header, or the client's ce_id(s), is remembered for
  ``ingress_idempotency_s`` within ``ingress_idempotency_bytes`` per agency; the same key gets
  the same response and is not published again. The ce_ids of a keyed request derive from
  the key, so even a retry the cache forgot duplicates nothing in the central store.
* 202 with the ce_ids only after the broker acknowledged every event (acks=all).
* 401 / 403 / 404 / 413 (body limit) / 415 (not JSON) / 422 / 429 (rate per key) / 503.

Delivery guarantee: at-least-once; a client retrying after a timeout with the same key or ids
causes no duplicate in the central store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.mapping import map_payload, missing_fields
from connectors.state import ApiKeyStore
from simpul import jsontext, metrics
from simpul.catalog import EventCatalog
from simpul.envelope import MAX_ID_LENGTH, parse_time
from simpul.errors import Problem
from simpul.publisher import PublisherPool
from simpul.settings import Settings
from simpul.signing import signer_for

JSON_TYPES = (
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)

#: Namespace of the ce_ids derived from an agency's Idempotency-Key and the event's index.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0e7f0c-3c1e-4d0a-9a57-1e2c0d7a1401")

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"type": "object", "description": "One event's payload (Avro schema fields)"},
                    {"type": "array", "items": {"type": "object"}, "description": "A batch"},
                ]
            },
            "example": {
                "nip": "198507172010011002",
                "name": "Andi Lamadjido, S.Kom.",
                "unit_code": "BKPSDM.02",
                "position": "Analis Kepegawaian",
                "grade": "III/c",
                "status": "ACTIVE",
                "updated_at": "2026-11-02T08:00:00+08:00",
            },
        },
        "application/cloudevents+json": {"schema": {"type": "object"}},
        "application/cloudevents-batch+json": {"schema": {"type": "array"}},
    },
}


class TokenBucket:
    """Requests per second per API key, with a burst; thread-safe enough for one process."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


@dataclass(slots=True)
class _Remembered:
    status: int
    ids: tuple[str, ...]
    expires: float


@dataclass(slots=True)
class _KeyLock:
    lock: asyncio.Lock
    users: int = 0


class IdempotencyCache:
    """The 202 answers by (agency, key) for a window, in at most ``max_bytes`` per agency.

    What is kept is compact: a SHA-256 of the client's key (whatever its length) and the ids
    published, not the batch. A 422 is not kept: it published nothing, so a retry is validated
    again and gets the same answer. The oldest answers of an agency are forgotten first when
    its budget is spent; one agency cannot push out another's. A per-key lock, so a retry
    racing the original waits for it instead of publishing twice, lives only while a request
    holds or awaits it.
    """

    #: Cost of one entry besides its ids (digest, record, dict slots), measured with headroom.
    ENTRY_BYTES = 400

    def __init__(self, window_s: float, max_bytes: int) -> None:
        self.window_s = window_s
        self.max_bytes = max_bytes
        self._entries: dict[str, OrderedDict[bytes, _Remembered]] = {}
        self._bytes: dict[str, int] = {}
        self._locks: dict[tuple[str, bytes], _KeyLock] = {}

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    @staticmethod
    def cost(ids: tuple[str, ...]) -> int:
        return IdempotencyCache.ENTRY_BYTES + sum(sys.getsizeof(i) + 8 for i in ids)

    @contextlib.asynccontextmanager
    async def hold(self, agency: str, digest: bytes) -> AsyncIterator[None]:
        held = self._locks.get((agency, digest))
        if held is None:
            held = self._locks[(agency, digest)] = _KeyLock(asyncio.Lock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._locks[(agency, digest)]

    def get(self, agency: str, digest: bytes) -> _Remembered | None:
        entries = self._entries.get(agency)
        found = entries.get(digest) if entries else None
        if found is not None and found.expires < time.monotonic():
            self._drop(agency, digest)
            return None
        return found

    def put(self, agency: str, digest: bytes, status: int, ids: tuple[str, ...]) -> None:
        cost = self.cost(ids)
        if cost > self.max_bytes:
            return  # a single answer larger than the budget is not remembered
        entries = self._entries.setdefault(agency, OrderedDict())
        if digest in entries:
            self._drop(agency, digest)
        entries[digest] = _Remembered(status, ids, time.monotonic() + self.window_s)
        self._bytes[agency] = self._bytes.get(agency, 0) + cost
        now = time.monotonic()
        while entries and (
            self._bytes[agency] > self.max_bytes or next(iter(entries.values())).expires < now
        ):
            self._drop(agency, next(iter(entries)))

    def _drop(self, agency: str, digest: bytes) -> None:
        gone = self._entries[agency].pop(digest)
        self._bytes[agency] -= self.cost(gone.ids)

    def clear(self) -> None:
        """Forget every answer (what a restart does)."""
        self._entries.clear()
        self._bytes.clear()

    def held_bytes(self, agency: str) -> int:
        return self._bytes.get(agency, 0)

    def locks(self) -> int:
        return len(self._locks)


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def create_app(
    settings: Settings, catalog: EventCatalog, keys: ApiKeyStore, publishers: PublisherPool
) -> FastAPI:
    """The ingress application; `serve` runs it on ``settings.ingress_port``."""
    topology = catalog.topology
    limiter = TokenBucket(settings.ingress.rate_per_s, settings.ingress.rate_burst)
    remembered = IdempotencyCache(
        settings.ingress.idempotency_s, settings.ingress.idempotency_bytes
    )
    app = FastAPI(
        title="Simpul HTTP ingress",
        version="1",
        description=(
            "Publish events to the Simpul bus of "
            f"{topology.city} over HTTP. Authenticate with your agency's API key "
            "(`Authorization: Bearer <key>`); 202 means the broker acknowledged the event "
            "(acks=all): on Apache Kafka it is on disk (replicated in a cluster); on the "
            "embedded demo broker it is in memory only and a restart of that broker loses it."
        ),
    )

    app.state.idempotency = remembered  # for the tests' view of its memory

    @app.get("/health", summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    _mount_catalogue(app, settings, topology)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/v1/events/{event_type}",
        status_code=202,
        summary="Publish one event or a batch",
        openapi_extra={"requestBody": _REQUEST_BODY},
        responses={
            202: {"description": "Acknowledged by the broker; body lists the ce_ids"},
            401: {"description": "Missing or unknown API key"},
            403: {"description": "Your agency may not produce this event type"},
            404: {"description": "Unknown event type"},
            413: {"description": "Body larger than the configured limit"},
            415: {"description": "Body is not JSON"},
            422: {"description": "Invalid events; `detail` lists each field path and reason"},
            429: {"description": "Too many requests for this API key; see Retry-After"},
            503: {"description": "The broker did not acknowledge in time; retry with the same key"},
        },
    )
    async def publish(event_type: str, request: Request) -> Response:
        agency = "-"
        status = 500
        try:
            response, agency = await _publish(event_type, request)
            status = response.status_code
            return response
        finally:
            known = event_type if event_type in topology.types_by_name else "(unknown)"
            metrics.INGRESS_REQUESTS.labels(known, agency, str(status)).inc()

    async def _publish(event_type: str, request: Request) -> tuple[Response, str]:
        key = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return _problem(401, "missing API key: send Authorization: Bearer <key>"), "-"
        agency = await asyncio.to_thread(keys.agency_for, key)
        if agency is None:
            return _problem(401, "unknown or revoked API key"), "-"
        if agency not in topology.agencies_by_code:
            return _problem(403, f"agency {agency} is no longer declared in the topology"), "-"
        if wait := limiter.take(key):
            return (
                JSONResponse(
                    {"detail": f"rate limit of {settings.ingress.rate_per_s:g}/s exceeded"},
                    status_code=429,
                    headers={"Retry-After": str(max(1, round(wait + 0.5)))},
                ),
                agency,
            )
        etype = topology.types_by_name.get(event_type)
        if etype is None:
            return _problem(404, f"unknown event type {event_type!r}"), agency
        if not etype.may_produce(agency):
            return _problem(403, f"agency {agency} may not produce {event_type}"), agency
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in JSON_TYPES:
            return _problem(
                415, f"content-type {media or '(none)'!r}: send application/json"
            ), agency
        length = request.headers.get("content-length")
        limit = settings.ingress.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return _problem(413, f"body of {length} bytes exceeds the limit of {limit}"), agency
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _problem(413, f"body exceeds the limit of {limit} bytes"), agency
        try:
            document = jsontext.loads(body)
        except ValueError as error:  # not JSON, not UTF-8, or nested too deep
            return _invalid([(["body"], f"not valid JSON: {error}")]), agency

        structured = media.startswith("application/cloudevents")
        batch = isinstance(document, list)
        items = document if batch else [document]
        if not items:
            return _invalid([(["body"], "empty batch")]), agency
        if len(items) > settings.ingress.max_batch:
            return _problem(
                413, f"batch of {len(items)} exceeds {settings.ingress.max_batch}"
            ), agency

        idem = request.headers.get("idempotency-key")
        client_ids = [
            str(i.get("id")) if structured and isinstance(i, dict) and i.get("id") else None
            for i in items
        ]
        if not structured and request.headers.get("ce-id") and not batch:
            client_ids = [request.headers["ce-id"]]
        too_long = [i for i, ce_id in enumerate(client_ids) if len(ce_id or "") > MAX_ID_LENGTH]
        if too_long:
            return _invalid(
                [
                    (["body", i, "id"] if batch else ["body", "id"], f"longer than {MAX_ID_LENGTH}")
                    for i in too_long
                ]
            ), agency
        if idem and len(idem) > MAX_ID_LENGTH:
            return _invalid(
                [(["header", "Idempotency-Key"], f"longer than {MAX_ID_LENGTH} characters")]
            ), agency
        cache_key = None
        if idem:
            cache_key = f"key:{idem}"
            # Ids derived from the key: a retry the cache has forgotten (restart, budget)
            # publishes the same ce_ids again, and the store keeps one copy.
            client_ids = [
                ce_id or str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{agency}\x00{idem}\x00{n}"))
                for n, ce_id in enumerate(client_ids)
            ]
        elif all(client_ids):
            cache_key = "ids:" + "\x00".join(str(i) for i in client_ids)
        args = (etype, agency, items, structured, client_ids, batch)
        if cache_key is None:
            return await _validate_and_send(*args), agency
        digest = remembered.digest(cache_key)
        async with remembered.hold(agency, digest):
            if (seen := remembered.get(agency, digest)) is not None:
                answer = {"type": etype.name, "source": topology.agency(agency).source}
                return (
                    JSONResponse(
                        {**answer, "ids": list(seen.ids)},
                        seen.status,
                        headers={"Idempotent-Replayed": "true"},
                    ),
                    agency,
                )
            response = await _validate_and_send(*args)
            if response.status_code == 202:
                ids = tuple(json.loads(bytes(response.body))["ids"])
                remembered.put(agency, digest, response.status_code, ids)
            return response, agency

    async def _validate_and_send(
        etype: Any,
        agency: str,
        items: list[Any],
        structured: bool,
        client_ids: list[str | None],
        batch: bool,
    ) -> Response:
        schema = catalog.latest_schema(etype.name)
        agency_model = topology.agency(agency)
        prepared: list[tuple[dict[str, Any], str, dt.datetime | None]] = []
        problems: list[tuple[list[Any], str]] = []
        for index, item in enumerate(items):
            where: list[Any] = ["body", index] if batch else ["body"]
            time_value: dt.datetime | None = None
            data = item
            if structured:
                if not isinstance(item, Mapping):
                    problems.append((where, "expected a CloudEvent object"))
                    continue
                source = item.get("source")
                if source is not None and source != agency_model.source:
                    return _problem(
                        403, f"source {source!r}: your key speaks for {agency_model.source}"
                    )
                if item.get("type") not in (None, etype.name):
                    problems.append(([*where, "type"], f"{item.get('type')!r} is not {etype.name}"))
                if item.get("time"):
                    try:
                        time_value = parse_time(str(item["time"]))
                    except ValueError as error:
                        problems.append(([*where, "time"], f"not an RFC 3339 timestamp ({error})"))
                data = item.get("data")
                where = [*where, "data"]
            if not isinstance(data, Mapping):
                problems.append((where, f"expected a JSON object, got {type(data).__name__}"))
                continue
            declared = {f["name"] for f in schema.definition["fields"]}
            unknown = sorted(set(data) - declared)
            payload = map_payload(data, {}, schema.definition)
            found = [Problem(name, f"not a field of {etype.name}") for name in unknown]
            found += missing_fields(schema.definition, payload, {})
            found = found or catalog.payload_problems(etype, schema, payload)
            if not found and (scope := catalog.scope_problem(agency_model, payload)):
                found = [scope]
            for problem in found:
                path = problem.field.split(".") if problem.field else []
                problems.append(([*where, *path], problem.reason or problem))
            ce_id = client_ids[index] or str(uuid.uuid4())
            prepared.append((payload, ce_id, time_value))
        if problems:
            return _invalid(problems)

        publisher = publishers(agency)
        # One batch signature for the request's events (the worker checks it once).
        futures = publisher.publish_many(
            etype.name,
            [payload for payload, _, _ in prepared],
            ids=[ce_id for _, ce_id, _ in prepared],
            times=[when for _, _, when in prepared],
            validate=False,
        )
        timeout = settings.ingress.ack_timeout_s

        def wait_for_acks() -> None:
            publisher.flush(timeout)
            for future in futures:
                future.get(timeout=timeout)

        try:
            await asyncio.to_thread(wait_for_acks)
        except Exception as error:  # the broker never acked: nothing is promised
            return _problem(
                503, f"the broker did not acknowledge: {error}; retry with the same key"
            )
        metrics.INGRESS_EVENTS_PUBLISHED.labels(etype.name, agency).inc(len(prepared))
        return JSONResponse(
            {
                "type": etype.name,
                "source": agency_model.source,
                "ids": [ce_id for _, ce_id, _ in prepared],
            },
            status_code=202,
        )

    return app


def _mount_catalogue(app: FastAPI, settings: Settings, topology: Any) -> None:
    """The city's catalogue of event types (connectors/ingress/catalogue.py): open to read, like
    /docs, because it holds schemas and generated examples only, never an event."""
    from fastapi.responses import HTMLResponse

    from connectors.ingress.catalogue import build_catalogue, openapi_for, render_catalogue

    entries = {e.name: e for e in build_catalogue(topology, settings.paths.schemas_dir)}

    @app.get("/v1/catalogue", summary="The city's event types: schema, example, producers")
    def catalogue() -> dict[str, Any]:
        return {
            "city": topology.city,
            "region_code": topology.region_code,
            "event_types": [entry.as_dict() for entry in entries.values()],
        }

    @app.get("/catalogue.html", include_in_schema=False)
    def catalogue_page() -> HTMLResponse:
        return HTMLResponse(render_catalogue(list(entries.values()), topology))

    @app.get("/v1/catalogue/{event_type}/openapi.json", summary="OpenAPI for one event type")
    def catalogue_openapi(event_type: str) -> Response:
        entry = entries.get(event_type)
        if entry is None:
            return _problem(404, f"unknown event type {event_type!r}; see /v1/catalogue")
        return JSONResponse(openapi_for(entry, topology))


def _invalid(problems: list[tuple[list[Any], str]]) -> JSONResponse:
    detail = [
        {"loc": loc, "field": ".".join(str(p) for p in loc), "msg": msg, "type": "value_error"}
        for loc, msg in problems
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def serve(settings: Settings, topology: Any) -> None:
    """Run the ingress on ``settings.ingress_port`` until SIGINT/SIGTERM."""
    from simpul.db import make_engine
    from simpul.httpauth import TokenAuth, http_token, open_paths
    from simpul.registry.resolver import SchemaResolver
    from simpul.registry.store import SchemaStore
    from simpul.serving import run

    engine = make_engine(settings.store.database_url)
    catalog = EventCatalog(topology, SchemaResolver(SchemaStore(engine)))
    # The ingress authenticated the agency by its API key and signs as the ingress gateway.
    signer = signer_for(settings, "ingress")
    with PublisherPool(settings, catalog, signer=signer) as publishers:
        app = create_app(settings, catalog, ApiKeyStore(engine), publishers)
        # Events authenticate by API key; /metrics by the installation token (or the setting).
        token = http_token(settings, create=True) or ""
        guarded = TokenAuth(app, token, only=frozenset({"/metrics"}) - open_paths(settings))
        run(
            guarded, settings.ingress.port, settings.http.bind_host, settings.ingress.max_body_bytes
        )
