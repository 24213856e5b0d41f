"""HTTP client of `simpul registry`, cached so that a registry restart does not stop a stream.

Schema ids never change meaning: a schema fetched by id is cached for the life of the
process. A subject's latest version is trusted for ``registry_cache_ttl_s``. While the
registry does not answer, a request is retried for ``registry_retry_s``; then the last
answer cached is used, however old, and only when there is none does the caller see
`RegistryUnavailable` (the worker then retries the batch, as it does for a store outage).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from simpul.installation import installation_secret
from simpul.settings import Settings

if TYPE_CHECKING:  # the resolver pulls in SQLAlchemy; a CLI command need not pay for it
    from simpul.registry.resolver import SchemaResolver, SchemaSource

log = logging.getLogger("simpul.registry.client")
# httpx logs every request at INFO; a worker resolving ids would flood its log with them.
logging.getLogger("httpx").setLevel(logging.WARNING)

TOKEN_FILE = "registry-admin-token"


class RegistryUnavailable(ConnectionError):
    """The registry did not answer (down, restarting, 5xx) and nothing usable was cached."""


class RegistryRequestError(RuntimeError):
    """The registry answered with a Confluent error body (4xx)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, error_code {code})")
        self.status, self.code, self.message = status, code, message


def token_path(settings: Settings) -> Path:
    return settings.paths.data_dir / TOKEN_FILE


def admin_token(settings: Settings, *, create: bool = False) -> str | None:
    """The registry admin token: the setting, else the token file, made (0600) on request."""
    if settings.registry.admin_token:
        return settings.registry.admin_token
    return installation_secret(token_path(settings), create=create)


def _subject(subject: str) -> str:
    return quote(subject, safe="")


class RegistryClient:
    """The registry over HTTP; also a `SchemaSource` for `SchemaResolver`. Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        retry_s: float = 3.0,
        latest_ttl_s: float = 5.0,
    ) -> None:
        headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.retry_s = retry_s
        self.latest_ttl_s = latest_ttl_s
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)
        self._schemas: dict[int, str] = {}
        self._latest: dict[str, tuple[float, tuple[int, int]]] = {}
        self._version_ids: dict[tuple[str, int], int] = {}
        self._subject_ids: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryClient:
        return cls(
            settings.registry.url,
            token=admin_token(settings),
            timeout_s=settings.registry.timeout_s,
            retry_s=settings.registry.retry_s,
            latest_ttl_s=settings.registry.cache_ttl_s,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One call; retried while the registry is unreachable or answers 5xx."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        while True:
            try:
                response = self._http.request(
                    method,
                    path,
                    json=body,
                    params={k: v for k, v in params.items() if v is not None} or None,
                )
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 500:
                    break
                problem = f"HTTP {response.status_code}"
            if time.monotonic() + delay > deadline:
                raise RegistryUnavailable(f"schema registry at {self.url} unavailable ({problem})")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        if response.status_code >= 400:
            try:
                error_body = response.json()
                code, message = int(error_body["error_code"]), str(error_body["message"])
            except (ValueError, KeyError, TypeError):
                code, message = response.status_code, response.text
            raise RegistryRequestError(response.status_code, code, message)
        if not response.content:
            return None
        return response.json()

    def _get_or_none(self, path: str, *not_found: int) -> Any:
        try:
            return self.request("GET", path)
        except RegistryRequestError as error:
            if error.code in not_found:
                return None
            raise

    # --- SchemaSource -----------------------------------------------------------------------

    def schema(self, schema_id: int) -> str | None:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        found = self._get_or_none(f"/schemas/ids/{schema_id}", 40403, 404)
        if found is None:
            return None
        text: str = found["schema"]
        with self._lock:
            self._schemas[schema_id] = text
        return text

    def latest(self, subject: str) -> tuple[int, int] | None:
        cached = self._latest.get(subject)
        if cached is not None and time.monotonic() - cached[0] < self.latest_ttl_s:
            return cached[1]
        try:
            found = self._get_or_none(
                f"/subjects/{_subject(subject)}/versions/latest", 40401, 40402
            )
        except RegistryUnavailable:
            if cached is None:
                raise
            log.warning("registry unavailable; using cached latest version of %s", subject)
            return cached[1]
        if found is None:
            return None
        answer = (int(found["id"]), int(found["version"]))
        with self._lock:
            self._latest[subject] = (time.monotonic(), answer)
            self._schemas.setdefault(answer[0], found["schema"])
            self._version_ids[(subject, answer[1])] = answer[0]
        return answer

    def subject_ids(self, subject: str) -> set[int]:
        try:
            versions = self._get_or_none(f"/subjects/{_subject(subject)}/versions", 40401) or []
            ids = set()
            for version in versions:
                key = (subject, int(version))
                schema_id = self._version_ids.get(key)
                if schema_id is None:
                    found = self.request(
                        "GET", f"/subjects/{_subject(subject)}/versions/{int(version)}"
                    )
                    schema_id = int(found["id"])
                    with self._lock:
                        self._version_ids[key] = schema_id
                ids.add(schema_id)
        except RegistryUnavailable:
            cached = self._subject_ids.get(subject)
            if cached is None:
                raise
            return cached
        with self._lock:
            self._subject_ids[subject] = ids
        return ids

    # --- the rest of the API the CLI uses ----------------------------------------------------

    def register(self, subject: str, schema_text: str) -> int:
        body = {"schema": schema_text, "schemaType": "AVRO"}
        return int(self.request("POST", f"/subjects/{_subject(subject)}/versions", body)["id"])

    def subject_versions(self, subject: str) -> list[dict[str, Any]]:
        """Every live version of the subject, oldest first; [] when the subject is unknown."""
        versions = self._get_or_none(f"/subjects/{_subject(subject)}/versions", 40401) or []
        return [
            self.request("GET", f"/subjects/{_subject(subject)}/versions/{int(v)}")
            for v in versions
        ]

    def compatibility(self, subject: str) -> str:
        found = self.request("GET", f"/config/{_subject(subject)}", defaultToGlobal="true")
        return str(found["compatibilityLevel"])

    def set_compatibility(self, mode: str, subject: str | None = None) -> str:
        path = f"/config/{_subject(subject)}" if subject else "/config"
        return str(self.request("PUT", path, {"compatibility": mode})["compatibility"])


def schema_source(settings: Settings) -> SchemaSource:
    """Where ids are resolved: `simpul registry` when ``registry_url`` is set, else the
    central store read directly (tests, benchmarks, a single-process setup)."""
    if settings.registry.url:
        return RegistryClient.from_settings(settings)
    from simpul.db import make_engine
    from simpul.registry.store import SchemaStore

    return SchemaStore(make_engine(settings.store.database_url))


def make_resolver(settings: Settings) -> SchemaResolver:
    """A `SchemaResolver` over `schema_source`, with the configured latest-version TTL."""
    from simpul.registry.resolver import SchemaResolver

    return SchemaResolver(schema_source(settings), latest_ttl_s=settings.registry.cache_ttl_s)
