"""`simpul registry`: the Confluent Schema Registry REST subset, over the central store.

Stock clients (confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer``, Kafka
Connect converters) work unmodified: same paths, bodies, content type and error codes.
Writes (register, config, delete) need the admin token as ``Authorization: Bearer <token>``
or as the password of HTTP basic auth (what ``basic.auth.user.info`` sends).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from simpul import jsontext, metrics
from simpul.codec import normalize
from simpul.db import make_engine
from simpul.registry import compatibility
from simpul.registry.client import admin_token
from simpul.registry.store import (
    IncompatibleSchema,
    NotSoftDeleted,
    SchemaStore,
    SubjectNotFound,
    VersionNotFound,
)
from simpul.settings import Settings

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_VERSION = 2**31 - 1


class RegistryJSON(JSONResponse):
    media_type = CONTENT_TYPE


class RegistryError(Exception):
    """An error answered as Confluent does: ``{"error_code": ..., "message": ...}``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: int, message: str) -> RegistryJSON:
    return RegistryJSON({"error_code": code, "message": message}, status_code=status)


def _version(value: str) -> int | str:
    """A version path segment: ``latest``, ``-1`` (latest) or 1..2^31-1, else 42202."""
    if value == "latest" or value == "-1":
        return "latest"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_VERSION:
        raise RegistryError(
            422,
            42202,
            f"The specified version '{value}' is not a valid version id. Allowed values are "
            f'between [1, {MAX_VERSION}] and the string "latest"',
        )
    return number


def _lookup_error(error: LookupError) -> RegistryError:
    if isinstance(error, SubjectNotFound):
        return RegistryError(404, 40401, str(error))
    if isinstance(error, VersionNotFound):
        return RegistryError(404, 40402, str(error))
    if isinstance(error, NotSoftDeleted):
        code = 40407 if "Version" in str(error) else 40405
        return RegistryError(404, code, str(error))
    return RegistryError(404, 40403, str(error) or "Schema not found")


async def _json_body(request: Request) -> dict[str, Any]:
    # Confluent accepts its own media types, plain JSON and octet-stream: parse the bytes.
    raw = await request.body()
    try:
        body = jsontext.loads(raw or b"{}")
    except ValueError as error:  # not JSON, not UTF-8, or nested too deep
        raise RegistryError(400, 400, f"request body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise RegistryError(422, 422, "request body must be a JSON object")
    return body


def _schema_text(body: dict[str, Any]) -> str:
    """The ``schema`` of a register/lookup/compatibility body, validated as Avro (42201)."""
    schema_type = body.get("schemaType") or "AVRO"
    if str(schema_type).upper() != "AVRO":
        raise RegistryError(
            422, 42201, f"Invalid schema: schemaType {schema_type!r} is not supported (AVRO only)"
        )
    if body.get("references"):
        raise RegistryError(422, 42201, "Invalid schema: schema references are not supported")
    text = body.get("schema")
    if not isinstance(text, str) or not text.strip():
        raise RegistryError(422, 42201, "Invalid schema: body needs a non-empty 'schema' string")
    try:
        compatibility.parse(text)
    except compatibility.InvalidSchema as error:
        raise RegistryError(422, 42201, f"Invalid schema {error}") from None
    return normalize(text)


def _mode(body: dict[str, Any]) -> str:
    mode = str(body.get("compatibility") or body.get("compatibilityLevel") or "").upper()
    if mode not in compatibility.MODES:
        raise RegistryError(
            422,
            42203,
            f"Invalid compatibility level {mode or '(missing)'!r}; valid: "
            + ", ".join(compatibility.MODES),
        )
    return mode


def _bearer_or_basic(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def _store(request: Request) -> SchemaStore:
    store: SchemaStore = request.app.state.store
    return store


def _authorize(request: Request) -> None:
    token: str = request.app.state.admin_token
    given = _bearer_or_basic(request)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise RegistryError(
            401, 40101, "Unauthorized: send the admin token as 'Authorization: Bearer <token>'"
        )


def _reader(request: Request) -> None:
    if request.app.state.read_auth:
        _authorize(request)


# Module level: with postponed annotations FastAPI resolves these names in module globals.
Body = Annotated[dict[str, Any], Depends(_json_body)]
Deleted = Annotated[bool, Query(description="Include soft-deleted entries")]
Store = Annotated[SchemaStore, Depends(_store)]
Read = Depends(_reader)
Write = Depends(_authorize)

#: One router per concern of the Confluent API; `create_app` mounts them all.
subjects = APIRouter(tags=["subjects"])
schemas = APIRouter(tags=["schemas"])
config = APIRouter(tags=["config"])
compatibility_checks = APIRouter(tags=["compatibility"])


def _found(store: SchemaStore, subject: str, version: str, deleted: bool) -> dict[str, Any]:
    wanted = _version(version)
    found = store.version(subject, wanted, deleted=deleted)
    if found is None:
        try:
            store.versions(subject, deleted=True)
        except LookupError as error:
            raise _lookup_error(error) from None
        raise RegistryError(404, 40402, f"Version {version} not found.")
    return {
        "subject": found.subject,
        "version": found.version,
        "id": found.id,
        "schema": found.schema,
    }


# --- subjects and their versions ---------------------------------------------------------------


@subjects.get("/subjects", dependencies=[Read])
def list_subjects(store: Store, deleted: Deleted = False) -> list[str]:
    return store.subjects(deleted=deleted)


@subjects.get("/subjects/{subject}/versions", dependencies=[Read])
def versions(store: Store, subject: str, deleted: Deleted = False) -> list[int]:
    try:
        return store.versions(subject, deleted=deleted)
    except LookupError as error:
        raise _lookup_error(error) from None


@subjects.get("/subjects/{subject}/versions/{version}", dependencies=[Read])
def get_version(
    store: Store, subject: str, version: str, deleted: Deleted = False
) -> dict[str, Any]:
    return _found(store, subject, version, deleted)


@subjects.get("/subjects/{subject}/versions/{version}/schema", dependencies=[Read])
def get_version_schema(
    store: Store, subject: str, version: str, deleted: Deleted = False
) -> Response:
    found = _found(store, subject, version, deleted)
    return Response(found["schema"], media_type=CONTENT_TYPE)


@subjects.get("/subjects/{subject}/versions/{version}/referencedby", dependencies=[Read])
def referenced_by(store: Store, subject: str, version: str) -> list[int]:
    _found(store, subject, version, False)
    return []  # schema references are not supported, so nothing refers to a version


@subjects.post("/subjects/{subject}/versions", dependencies=[Write])
def register(store: Store, subject: str, body: Body) -> dict[str, Any]:
    text = _schema_text(body)
    try:
        schema_id, _ = store.register_checked(subject, text)
    except IncompatibleSchema as error:
        raise RegistryError(409, 409, str(error)) from None
    return {"id": schema_id}


@subjects.post("/subjects/{subject}", dependencies=[Read])
def lookup(store: Store, subject: str, body: Body, deleted: Deleted = False) -> dict[str, Any]:
    text = _schema_text(body)
    try:
        found = store.lookup(subject, text, deleted=deleted)
    except LookupError as error:
        raise _lookup_error(error) from None
    return {
        "subject": found.subject,
        "version": found.version,
        "id": found.id,
        "schema": found.schema,
    }


@subjects.delete("/subjects/{subject}", dependencies=[Write])
def delete_subject(store: Store, subject: str, permanent: bool = False) -> list[int]:
    try:
        return store.delete_subject(subject, permanent=permanent)
    except LookupError as error:
        raise _lookup_error(error) from None


@subjects.delete("/subjects/{subject}/versions/{version}", dependencies=[Write])
def delete_version(store: Store, subject: str, version: str, permanent: bool = False) -> int:
    try:
        return store.delete_version(subject, _version(version), permanent=permanent)
    except LookupError as error:
        raise _lookup_error(error) from None


# --- schemas by id ------------------------------------------------------------------------------


def _schema(store: SchemaStore, schema_id: int) -> str:
    text = store.schema(schema_id) if 0 < schema_id <= MAX_VERSION else None
    if text is None:
        raise RegistryError(404, 40403, f"Schema {schema_id} not found")
    return text


@schemas.get("/schemas/types", dependencies=[Read])
def schema_types() -> list[str]:
    return ["AVRO"]


@schemas.get("/schemas/ids/{schema_id}", dependencies=[Read])
def schema_by_id(store: Store, schema_id: int) -> dict[str, Any]:
    return {"schema": _schema(store, schema_id)}


@schemas.get("/schemas/ids/{schema_id}/schema", dependencies=[Read])
def raw_schema_by_id(store: Store, schema_id: int) -> Response:
    return Response(_schema(store, schema_id), media_type=CONTENT_TYPE)


@schemas.get("/schemas/ids/{schema_id}/versions", dependencies=[Read])
def schema_versions(store: Store, schema_id: int, deleted: Deleted = False) -> list[dict[str, Any]]:
    _schema(store, schema_id)
    return [{"subject": s, "version": v} for s, v in store.id_versions(schema_id, deleted=deleted)]


@schemas.get("/schemas/ids/{schema_id}/subjects", dependencies=[Read])
def schema_subjects(store: Store, schema_id: int, deleted: Deleted = False) -> list[str]:
    _schema(store, schema_id)
    return sorted({s for s, _ in store.id_versions(schema_id, deleted=deleted)})


# --- compatibility configuration ----------------------------------------------------------------


@config.get("/config", dependencies=[Read])
def get_global_config(store: Store) -> dict[str, Any]:
    return {"compatibilityLevel": store.compatibility(None)}


@config.put("/config", dependencies=[Write])
def put_global_config(store: Store, body: Body) -> dict[str, Any]:
    return {"compatibility": store.set_config(None, _mode(body))}


@config.get("/config/{subject}", dependencies=[Read])
def get_subject_config(
    store: Store,
    subject: str,
    defaultToGlobal: bool = False,
) -> dict[str, Any]:
    level = store.config(subject)
    if level is None:
        if not defaultToGlobal:
            raise RegistryError(
                404,
                40408,
                f"Subject '{subject}' does not have subject-level compatibility configured",
            )
        level = store.compatibility(None)
    return {"compatibilityLevel": level}


@config.put("/config/{subject}", dependencies=[Write])
def put_subject_config(store: Store, subject: str, body: Body) -> dict[str, Any]:
    return {"compatibility": store.set_config(subject, _mode(body))}


@config.delete("/config/{subject}", dependencies=[Write])
def delete_subject_config(store: Store, subject: str) -> dict[str, Any]:
    was = store.delete_config(subject)
    if was is None:
        raise RegistryError(404, 40401, f"Subject '{subject}' not found.")
    return {"compatibilityLevel": was}


# --- compatibility checks -----------------------------------------------------------------------


def _compatibility_answer(
    problems: list[compatibility.Incompatibility], verbose: bool
) -> dict[str, Any]:
    answer: dict[str, Any] = {"is_compatible": not problems}
    if verbose:
        answer["messages"] = [p.explain() for p in problems]
    return answer


@compatibility_checks.post(
    "/compatibility/subjects/{subject}/versions/{version}", dependencies=[Read]
)
def check_version(
    store: Store, subject: str, version: str, body: Body, verbose: bool = False
) -> dict[str, Any]:
    text = _schema_text(body)
    found = _found(store, subject, version, False)
    mode = store.compatibility(subject)
    # Against one given version, the transitive modes mean the same as their base mode.
    problems = compatibility.check(text, [(found["version"], found["schema"])], mode)
    return _compatibility_answer(problems, verbose)


@compatibility_checks.post("/compatibility/subjects/{subject}/versions", dependencies=[Read])
def check_all(store: Store, subject: str, body: Body, verbose: bool = False) -> dict[str, Any]:
    text = _schema_text(body)
    live = [(v.version, v.schema) for v in store.subject_versions(subject)]
    problems = compatibility.check(text, live, store.compatibility(subject))
    return _compatibility_answer(problems, verbose)


# --- the app ------------------------------------------------------------------------------------


async def _registry_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RegistryError)
    response = _error(error.status, error.code, error.message)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _validation_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
    )
    return _error(422, 422, problems)


async def _http_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    return _error(error.status_code, error.status_code, str(error.detail))


def create_app(settings: Settings, store: SchemaStore | None = None) -> FastAPI:
    """The registry app over the central store at ``settings.database_url``."""
    token = admin_token(settings, create=True) or ""
    if not token:
        raise ValueError("registry_admin_token: the token file is empty; delete it to regenerate")
    app = FastAPI(
        title="Simpul schema registry",
        description="Confluent Schema Registry REST subset (Avro), backed by the central store",
        default_response_class=RegistryJSON,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.store = store or SchemaStore(make_engine(settings.store.database_url))
    app.state.admin_token = token
    app.state.read_auth = settings.registry.read_auth
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        metrics.REGISTRY_REQUESTS.labels(request.method, str(response.status_code)).inc()
        return response

    @app.get("/", dependencies=[Read])
    def root() -> dict[str, Any]:
        return {}

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus scrape of this process (open: it holds no schema content)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in (schemas, subjects, config, compatibility_checks):
        app.include_router(router)
    return app


def serve(settings: Settings, port: int | None = None, host: str | None = None) -> None:
    """Run the registry in the foreground (uvicorn, on ``bind_host``) until SIGTERM/SIGINT.
    Writes need the admin token; /metrics the installation token unless ``metrics_open``."""
    from simpul.httpauth import TokenAuth, http_token, open_paths
    from simpul.serving import run

    token = http_token(settings, create=True) or ""
    app = TokenAuth(
        create_app(settings), token, only=frozenset({"/metrics"}) - open_paths(settings)
    )
    run(
        app,
        port or settings.registry.port,
        host or settings.http.bind_host,
        settings.http.max_body_bytes,
        access_log=False,
    )
