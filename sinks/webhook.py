"""The webhook sink: one inbox message as a signed CloudEvent, POSTed once to its URL.

The body is a CloudEvents 1.0 structured-mode JSON document
(``Content-Type: application/cloudevents+json``). The signature header is
``Simpul-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>``;
docs/subscriptions.md has verification snippets for Python and PHP.

The consumer half — reading the inboxes, attempts and back-off, dead letters, audit, offsets —
is ``streams/deliver/service.py``; this module signs and POSTs, and says what one attempt
came to (`Attempt`).

Delivery guarantee: none of its own. One `WebhookSink.post` is one attempt; the deliverer
makes delivery at-least-once by retrying and committing an offset only once its message is
finished.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import email.utils
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from simpul.envelope import header
from simpul.installation import known_development_secret
from simpul.topology.model import Topology

SIGNATURE_HEADER = "Simpul-Signature"
CONTENT_TYPE = "application/cloudevents+json"
#: Statuses worth another attempt; any other 4xx is the subscriber refusing the message.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookConfigError(ValueError):
    """A webhook's secret is missing; the message names the topology field."""


# --- pure functions --------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Simpul-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_cloudevent(
    headers: Iterable[tuple[str, bytes]], key: bytes | None, record: Mapping[str, Any]
) -> bytes:
    """The structured-mode CloudEvent for one inbox message (attributes from the ce_ headers)."""
    event: dict[str, Any] = {
        "specversion": header(headers, "ce_specversion") or "1.0",
        "id": header(headers, "ce_id"),
        "source": header(headers, "ce_source"),
        "type": header(headers, "ce_type"),
        "time": header(headers, "ce_time"),
        "datacontenttype": "application/json",
    }
    if key is not None:
        event["subject"] = key.decode("utf-8", errors="replace")
    event["simpulsubscription"] = header(headers, "simpul_subscription")
    event["simpulpurpose"] = header(headers, "simpul_purpose")
    event["data"] = dict(record)
    return json.dumps(
        event, default=_json_default, ensure_ascii=False, separators=(",", ":")
    ).encode()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST came to."""

    #: The HTTP status, None when no response came (timeout, connection refused).
    status: int | None
    #: Bounded metrics label: the status, ``timeout`` or ``connect``.
    label: str
    #: The sentence for the dead letter and the log.
    reason: str
    #: Seconds the endpoint asked to wait (429/503 ``Retry-After``).
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        """The subscriber refused the message: another attempt would not help."""
        return self.status is not None and not self.delivered and self.status not in RETRYABLE


@dataclass(frozen=True, slots=True)
class Post:
    """One attempt to make: the body goes to ``url``, signed with ``secret`` at ``timestamp``."""

    url: str
    secret: bytes
    body: bytes
    attempt: int
    timestamp: int


#: How much of a response body is read (the status is the answer; the body only lets the
#: connection be reused). A larger one closes the connection instead.
RESPONSE_BODY_MAX = 64 * 1024


class WebhookSink:
    """An HTTP client for the webhook endpoints. As a `sinks.base.Sink`: `add` a `Post`,
    await `flush` for each one's `Attempt` (sent concurrently, each once); `post` is the two
    for one attempt. A failed POST is a value, never an exception.

    aiohttp, not httpx: measured on this machine against a local keep-alive endpoint, an
    httpx POST cost 2 000 µs of CPU and an aiohttp POST 160 µs; the deliverer spent most of
    its CPU in httpx. Redirects are not followed (a 3xx is the endpoint's answer)."""

    def __init__(self, timeout_s: float, max_connections: int) -> None:
        self._buffer: list[Post] = []
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that will run it (aiohttp's rule).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": "Simpul-Webhook/1"},
            )
        return self._session

    def add(self, item: Post) -> None:
        self._buffer.append(item)

    def flush(self) -> Awaitable[list[Attempt]]:
        batch, self._buffer = self._buffer, []

        async def send_all() -> list[Attempt]:
            return list(await asyncio.gather(*(self._send(p) for p in batch)))

        return send_all()

    async def post(
        self, url: str, secret: bytes, body: bytes, attempt: int, timestamp: int
    ) -> Attempt:
        """One POST now (`add` and `flush` of one)."""
        self.add(Post(url, secret, body, attempt, timestamp))
        (result,) = await self.flush()
        return result

    async def _send(self, post: Post) -> Attempt:
        url, secret, body, attempt, timestamp = (
            post.url,
            post.secret,
            post.body,
            post.attempt,
            post.timestamp,
        )
        headers = {
            "Content-Type": CONTENT_TYPE,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            "Simpul-Attempt": str(attempt),
        }
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                wait_header = response.headers.get("Retry-After")
                await response.content.read(RESPONSE_BODY_MAX)
        except TimeoutError:
            return Attempt(None, "timeout", f"timed out ({self.timeout_s:g}s)")
        except (aiohttp.ClientError, ValueError) as error:
            # Refused, reset, TLS, a malformed answer or URL: no status came back.
            return Attempt(None, "connect", f"{type(error).__name__}: {error}")
        wait = retry_after(wait_header) if status in (429, 503) else None
        return Attempt(status, str(status), f"HTTP {status}", wait)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def webhook_secrets(
    topology: Topology, environ: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """Each webhook subscription's secret from its environment variable, or an error naming
    the field."""
    environ = os.environ if environ is None else environ
    secrets, missing = {}, []
    for i, sub in enumerate(topology.subscriptions):
        if sub.webhook is None:
            continue
        value = environ.get(sub.webhook.secret_env, "")
        if value and known_development_secret(value):
            missing.append(
                f"  subscriptions.{i}.webhook.secret_env: {sub.webhook.secret_env} holds a "
                "published development value; generate one with `simpul secrets init`"
            )
        elif not value:
            missing.append(
                f"  subscriptions.{i}.webhook.secret_env: environment variable "
                f"{sub.webhook.secret_env} is not set"
            )
        secrets[sub.name] = value.encode()
    if missing:
        raise WebhookConfigError("webhook secrets missing:\n" + "\n".join(missing))
    return secrets
