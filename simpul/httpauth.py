"""Who may call Simpul's HTTP surfaces: one installation token (Bearer), bounded bodies.

The token is the ``SIMPUL_HTTP_TOKEN`` setting or, when that is empty, a token generated once
per installation into ``data_dir/http-token`` (mode 0600); nothing ships with one. The same
guard serves the aiohttp servers (worker, joins, deliverer: Faust's web is aiohttp) and the
ASGI ones (connect REST; `serving.run` bounds every ASGI app's request bodies).
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simpul.installation import installation_secret
from simpul.settings import Settings

HTTP_TOKEN_FILE = "http-token"


def http_token(settings: Settings, *, create: bool = False) -> str | None:
    """The token Simpul's status, health and connect endpoints require."""
    if settings.http.token:
        return settings.http.token
    return installation_secret(settings.paths.data_dir / HTTP_TOKEN_FILE, create=create)


def auth_headers(settings: Settings) -> dict[str, str]:
    """What a client of those endpoints sends (the CLI, tests, the demo)."""
    token = http_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}


def bearer_ok(authorization: str | None, token: str) -> bool:
    """``Bearer <token>``, or HTTP Basic with the token as password (so that a person's
    browser can open /status.html: it prompts on the 401's ``WWW-Authenticate``)."""
    if not authorization or not token:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


CHALLENGE = 'Basic realm="simpul", charset="UTF-8"'


def open_paths(settings: Settings) -> frozenset[str]:
    """Paths that answer without the token: only /metrics, and only when the setting says."""
    return frozenset({"/metrics"}) if settings.http.metrics_open else frozenset()


UNAUTHORIZED = {"error": "unauthorized: send 'Authorization: Bearer <token>' (see simpul secrets)"}


def aiohttp_guard(settings: Settings) -> Any:
    """An aiohttp middleware that refuses requests without the token (401)."""
    from aiohttp import web

    token = http_token(settings, create=True) or ""
    exempt = open_paths(settings)

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in exempt and not bearer_ok(
            request.headers.get("Authorization"), token
        ):
            return web.json_response(
                UNAUTHORIZED, status=401, headers={"WWW-Authenticate": CHALLENGE}
            )
        return await handler(request)

    return guard


def aiohttp_options(settings: Settings) -> dict[str, Any]:
    """aiohttp ``Application`` options: the guard and the body bound."""
    return {
        "middlewares": [aiohttp_guard(settings)],
        "client_max_size": settings.http.max_body_bytes,
    }


class TokenAuth:
    """ASGI middleware: every HTTP request needs the token, except ``exempt`` paths; with
    ``only``, just those paths need it (an app that authenticates the rest itself)."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        exempt: frozenset[str] = frozenset(),
        only: frozenset[str] | None = None,
    ) -> None:
        self.app, self.token, self.exempt, self.only = app, token, exempt, only

    def _guarded(self, path: str) -> bool:
        if self.only is not None:
            return path in self.only
        return path not in self.exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._guarded(scope["path"]):
            headers = dict(scope.get("headers") or ())
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not bearer_ok(given, self.token):
                await _json(send, 401, UNAUTHORIZED, [(b"www-authenticate", CHALLENGE.encode())])
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 and is not read further
    (Content-Length is checked first; a chunked body is counted as it arrives)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        too_big = {"error": f"request body over {self.limit} bytes", "error_code": 41301}
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _json(send, 413, too_big)
            return
        seen = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _json(send, 413, too_big)


class _TooLarge(Exception):
    pass


async def _json(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
