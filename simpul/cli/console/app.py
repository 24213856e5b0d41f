"""The web console (FastAPI, Jinja2, htmx): agencies, connectors, subscriptions, dead
letters, schemas and data protection, for operators, integration staff and the DPO.

Pages are rendered on the server; htmx (vendored in ``static/``) refreshes the live parts
and posts the actions. Every page needs a login and a role that holds the page's right
(`simpul.cli.console.auth.RIGHTS`); every POST needs the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.middleware.sessions import SessionMiddleware

from simpul.catalog import EventCatalog
from simpul.cli.console import charts, queries
from simpul.cli.console.auth import (
    RIGHTS,
    LoginThrottle,
    User,
    UserStore,
    csrf_ok,
    new_csrf_token,
    session_secret,
    users_path,
)
from simpul.cli.console.i18n import LANGUAGES, format_time, language, translations
from simpul.db import make_engine
from simpul.deadletter import replay
from simpul.envelope import parse_time
from simpul.httpauth import auth_headers
from simpul.identifiers import check_nik, check_nip
from simpul.registry import compatibility
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import IncompatibleSchema, SchemaStore
from simpul.settings import Settings
from simpul.topology.model import Topology
from simpul.topology.subscriptions import mask
from sinks import audit
from sinks.reports.scorecard import build_scorecard, declared_connectors

HERE = Path(__file__).resolve().parent
#: The pages in the navigation, each with the right it needs.
PAGES = (
    ("agencies", "/agencies", "agencies.view"),
    ("connectors", "/connectors", "connectors.view"),
    ("subscriptions", "/subscriptions", "subscriptions.view"),
    ("deadletters", "/deadletters", "deadletters.view"),
    ("schemas", "/schemas", "schemas.view"),
    ("privacy", "/privacy", "privacy.view"),
)


class LoginRequired(Exception):
    pass


class Refused(Exception):
    def __init__(self, user: User | None, reason: str) -> None:
        super().__init__(reason)
        self.user = user
        self.reason = reason


@dataclass
class Console:
    settings: Settings
    topology: Topology
    users: UserStore
    env: Environment

    def __post_init__(self) -> None:
        self.engine = make_engine(self.settings.store.database_url)
        self.schemas = SchemaStore(self.engine)
        self.catalog = EventCatalog(self.topology, SchemaResolver(self.schemas))
        self.connect_url = (
            self.settings.console.connect_url or f"http://127.0.0.1:{self.settings.connect.port}"
        ).rstrip("/")
        self.throughput: dict[str, tuple[float, int, float | None]] = {}
        self.throttle = LoginThrottle()

    # -- who is asking -----------------------------------------------------------------------
    def user(self, request: Request) -> User | None:
        name = request.session.get("user")
        return self.users.get(name) if isinstance(name, str) else None

    def require(self, request: Request, right: str) -> User:
        user = self.user(request)
        if user is None:
            raise LoginRequired()
        if not user.may(right):
            raise Refused(user, right)
        return user

    def check_csrf(self, request: Request, form: Any) -> None:
        given = form.get("csrf_token") or request.headers.get("x-csrf-token")
        if not csrf_ok(request.session.get("csrf"), given):
            raise Refused(self.user(request), "csrf")

    def lang(self, request: Request, user: User | None) -> str:
        return language(user.language if user else request.session.get("lang"))

    # -- rendering ---------------------------------------------------------------------------
    def render(
        self,
        request: Request,
        template: str,
        user: User | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        lang = self.lang(request, user)
        catalog = translations(lang)
        if "csrf" not in request.session:
            request.session["csrf"] = new_csrf_token()
        topology = self.topology

        def when(value: dt.datetime | None) -> str:
            return format_time(value, topology.timezone, topology.timezone_abbreviation, lang)

        html = self.env.get_template(template).render(
            _=catalog.gettext,
            ngettext=catalog.ngettext,
            lang=lang,
            languages=LANGUAGES,
            user=user,
            csrf_token=request.session["csrf"],
            pages=[(n, href) for n, href, right in PAGES if user and user.may(right)],
            current=request.url.path,
            city=topology.city,
            tz=topology.timezone_abbreviation,
            when=when,
            refresh=self.settings.console.refresh_s,
            mask=mask,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    # -- connectors through the runtime's REST API -------------------------------------------
    def connector_statuses(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            response = httpx.get(
                f"{self.connect_url}/connectors?expand=status",
                headers=auth_headers(self.settings),
                timeout=5,
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            return None, f"{self.connect_url}: {type(error).__name__}"
        statuses: dict[str, Any] = {n: item["status"] for n, item in response.json().items()}
        now = time.monotonic()
        for name, status in statuses.items():
            published = int(status.get("metrics", {}).get("records_published", 0))
            before = self.throughput.get(name)
            rate = before[2] if before else None
            if before and now - before[0] >= 1:
                rate = max(0.0, (published - before[1]) / (now - before[0]))
            if before is None or now - before[0] >= 1:
                self.throughput[name] = (now, published, rate)
            status["throughput"] = rate
            last = status.get("metrics", {}).get("last_success")
            status["last_success_at"] = parse_time(last) if last else None
        return statuses, None

    def health_targets(self) -> list[tuple[str, str]]:
        """(name, URL) of each process whose ``/health`` the agencies page shows."""
        if self.settings.console.health_urls.strip():
            return parse_health_urls(self.settings.console.health_urls)
        port = self.settings
        return [
            ("worker", f"http://127.0.0.1:{port.worker.web_port}/health"),
            ("joins", f"http://127.0.0.1:{port.joins.web_port}/health"),
            ("deliver", f"http://127.0.0.1:{port.deliver.web_port}/health"),
            ("connect", f"{self.connect_url}/health"),
        ]

    def readiness(self) -> list[Readiness]:
        """Each process of the bus this console knows, asked for its ``/health`` at once."""
        targets = self.health_targets()
        with ThreadPoolExecutor(max(1, len(targets))) as pool:
            headers = auth_headers(self.settings)
            return list(pool.map(lambda t: _ask_health(t[0], t[1], headers), targets))

    def connector_action(self, name: str, action: str) -> str | None:
        method = "POST" if action == "restart" else "PUT"
        try:
            response = httpx.request(
                method,
                f"{self.connect_url}/connectors/{quote(name, safe='')}/{action}",
                headers=auth_headers(self.settings),
                timeout=30,
            )
        except httpx.HTTPError as error:
            return f"{self.connect_url}: {type(error).__name__}"
        if response.status_code >= 400:
            return f"{response.status_code}: {response.text[:200]}"
        return None


@dataclass(frozen=True, slots=True)
class Readiness:
    name: str
    state: str  # ready | degraded | down
    detail: str = ""  # the URL that did not answer, or the store's error
    partitions: int | None = None  # worker, joins: partitions held
    running: tuple[int, int] | None = None  # connect: (running, declared)


def parse_health_urls(text: str) -> list[tuple[str, str]]:
    """``worker=http://worker:6066/health,connect=http://connect:8083/health`` → pairs;
    raises ValueError naming the setting and the bad entry."""
    pairs = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, url = entry.partition("=")
        if not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ValueError(
                f"SIMPUL_CONSOLE_HEALTH_URLS: {entry!r} is not name=http(s)://host:port/path"
            )
        pairs.append((name.strip(), url.strip()))
    return pairs


def _ask_health(name: str, url: str, headers: dict[str, str]) -> Readiness:
    try:
        response = httpx.get(url, headers=headers, timeout=2)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return Readiness(name, "down", url)
    if not isinstance(body, dict):
        body = {}
    if "connectors" in body and "running" in body:  # the connector runtime's /health
        failed = int(body.get("failed", 0))
        running = (int(body.get("running", 0)), int(body.get("connectors", 0)))
        return Readiness(name, "degraded" if failed else "ready", running=running)
    if response.status_code != 200 or body.get("status", "ok") != "ok":
        return Readiness(name, "degraded", str(body.get("store_error") or response.status_code))
    partitions = body.get("assigned_partitions")
    return Readiness(name, "ready", partitions=int(partitions) if partitions is not None else None)


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _security_headers(response: Response) -> None:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")


def _local(target: str) -> str:
    """A path on this console, never another site (``//host``, ``/\\host``, ``https:``)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _pretty(schema_text: str) -> str:
    try:
        return json.dumps(json.loads(schema_text), indent=2, ensure_ascii=False)
    except ValueError:
        return schema_text


def create_app(settings: Settings, topology: Topology) -> FastAPI:
    parse_health_urls(settings.console.health_urls)  # a bad value fails at start
    console = Console(settings, topology, UserStore(users_path(settings)), _environment())
    app = FastAPI(title="Simpul console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie="simpul_console",
        max_age=int(settings.console.session_hours * 3600),
        same_site="strict",
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.console = console

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        _security_headers(response)
        return response

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> Response:
        target = f"/login?next={quote(request.url.path)}"
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(Refused)
    async def _refused(request: Request, error: Refused) -> Response:
        return console.render(
            request, "refused.html", error.user, status_code=403, reason=error.reason
        )

    @app.get("/health", include_in_schema=False)
    def health() -> Any:
        return JSONResponse({"ok": True})

    @app.get("/")
    def root(request: Request) -> Response:
        user = console.user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        first = next((href for _, href, right in PAGES if user.may(right)), "/login")
        return RedirectResponse(first, status_code=303)

    # -- login, logout, language ----------------------------------------------------------
    @app.get("/login")
    def login_page(request: Request, next: str = "/") -> Response:
        return console.render(request, "login.html", None, next=next, failed=False)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        console.check_csrf(request, form)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        target = _local(str(form.get("next") or "/"))
        wait = console.throttle.wait_s(name, time.monotonic())
        if wait > 0:
            return console.render(
                request,
                "login.html",
                None,
                status_code=429,
                next=target,
                failed=False,
                wait_minutes=max(1, round(wait / 60)),
            )
        user = console.users.authenticate(name, password)
        if user is None:
            console.throttle.failed(name, time.monotonic())
            return console.render(
                request, "login.html", None, status_code=401, next=target, failed=True
            )
        console.throttle.succeeded(name)
        chosen = request.session.get("lang")  # picked on the login page
        request.session.clear()  # a new session on login: no fixation
        request.session.update({"user": user.name, "csrf": new_csrf_token()})
        if chosen and chosen != user.language:
            console.users.set_language(user.name, language(chosen))
        return RedirectResponse(target, status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        console.check_csrf(request, await request.form())
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.post("/language")
    async def set_language(request: Request) -> Response:
        form = await request.form()
        console.check_csrf(request, form)
        lang = language(str(form.get("lang")))
        user = console.user(request)
        if user is not None:
            console.users.set_language(user.name, lang)
        else:
            request.session["lang"] = lang
        return RedirectResponse(_local(str(form.get("back") or "/")), status_code=303)

    # -- agencies --------------------------------------------------------------------------
    def agencies_context() -> dict[str, Any]:
        card = build_scorecard(
            console.engine, topology, connectors_dir=settings.paths.connectors_dir
        )
        trend = queries.hourly_trend(
            console.engine, [a.code for a in card.agencies], card.generated_at
        )
        return {
            "card": card,
            "trend": trend,
            "trend_svg": charts.trend_svg,
            "readiness": console.readiness(),
        }

    @app.get("/agencies")
    def agencies(request: Request) -> Response:
        user = console.require(request, "agencies.view")
        return console.render(request, "agencies.html", user, **agencies_context())

    @app.get("/agencies/table")
    def agencies_table(request: Request) -> Response:
        user = console.require(request, "agencies.view")
        return console.render(request, "_agencies_table.html", user, **agencies_context())

    # -- connectors ------------------------------------------------------------------------
    def connectors_context(problem: str | None = None) -> dict[str, Any]:
        statuses, unreachable = console.connector_statuses()
        declared = {c.name: c for c in declared_connectors(topology, settings.paths.connectors_dir)}
        names = sorted(set(declared) | set(statuses or {}))
        return {
            "names": names,
            "declared": declared,
            "statuses": statuses or {},
            "unreachable": unreachable,
            "connect_url": console.connect_url,
            "problem": problem,
        }

    @app.get("/connectors")
    def connectors(request: Request) -> Response:
        user = console.require(request, "connectors.view")
        return console.render(request, "connectors.html", user, **connectors_context())

    @app.get("/connectors/table")
    def connectors_table(request: Request) -> Response:
        user = console.require(request, "connectors.view")
        return console.render(request, "_connectors_table.html", user, **connectors_context())

    @app.post("/connectors/{name}/{action}")
    async def connector_action(request: Request, name: str, action: str) -> Response:
        user = console.require(request, "connectors.control")
        console.check_csrf(request, await request.form())
        if action not in ("pause", "resume", "restart"):
            raise Refused(user, "action")
        problem = console.connector_action(name, action)
        return console.render(
            request, "_connectors_table.html", user, **connectors_context(problem)
        )

    # -- subscriptions ---------------------------------------------------------------------
    @app.get("/subscriptions")
    def subscriptions(request: Request) -> Response:
        user = console.require(request, "subscriptions.view")
        _ = translations(console.lang(request, user)).gettext
        svg = charts.flow_svg(
            topology,
            _("Flows between agencies"),
            (_("Publishes"), _("Event type"), _("Receives")),
        )
        return console.render(
            request,
            "subscriptions.html",
            user,
            subscriptions=topology.subscriptions,
            flow_svg=svg,
        )

    # -- dead letters ----------------------------------------------------------------------
    @app.get("/deadletters")
    def deadletters(request: Request, type: str = "", agency: str = "", code: str = "") -> Response:
        user = console.require(request, "deadletters.view")
        letters = queries.logged_dead_letters(
            console.engine, event_type=type or None, agency=agency or None, code=code or None
        )
        return console.render(
            request,
            "deadletters.html",
            user,
            letters=letters,
            facets=queries.facets(console.engine),
            chosen={"type": type, "agency": agency, "code": code},
        )

    @app.get("/deadletters/{event_type}/{ce_id}")
    def deadletter(request: Request, event_type: str, ce_id: str) -> Response:
        user = console.require(request, "deadletters.view")
        etype = topology.types_by_name.get(event_type)
        found = (
            queries.inspect_dead_letter(settings, etype, console.catalog, ce_id) if etype else None
        )
        return console.render(
            request,
            "deadletter.html",
            user,
            status_code=200 if found else 404,
            found=found,
            event_type=event_type,
            ce_id=ce_id,
            mask_text=queries.mask_text,
        )

    @app.post("/deadletters/replay")
    async def deadletters_replay(request: Request) -> Response:
        user = console.require(request, "deadletters.replay")
        form = await request.form()
        console.check_csrf(request, form)
        etype = topology.types_by_name.get(str(form.get("type", "")))
        if etype is None:
            return console.render(
                request, "replayed.html", user, status_code=400, report=None, event_type=None
            )
        started = dt.datetime.now(dt.UTC)
        report = replay(
            settings,
            etype,
            ce_id=str(form.get("ce_id") or "") or None,
            code=str(form.get("code") or "") or None,
            agency=str(form.get("agency") or "") or None,
        )
        ids = [i for i in report.replayed if i]
        return console.render(
            request,
            "replayed.html",
            user,
            report=report,
            event_type=etype.name,
            ids=ids,
            since=started.isoformat(),
            outcomes=queries.replay_outcomes(console.engine, ids, started),
        )

    @app.post("/deadletters/outcome")
    async def deadletters_outcome(request: Request) -> Response:
        user = console.require(request, "deadletters.view")
        form = await request.form()
        console.check_csrf(request, form)
        ids = [str(i) for i in form.getlist("id")][:500]
        since = dt.datetime.fromisoformat(str(form.get("since")))
        return console.render(
            request,
            "_outcomes.html",
            user,
            ids=ids,
            since=since.isoformat(),
            outcomes=queries.replay_outcomes(console.engine, ids, since),
        )

    # -- schemas ---------------------------------------------------------------------------
    @app.get("/schemas")
    def schemas(request: Request) -> Response:
        user = console.require(request, "schemas.view")
        subjects = [
            (s, console.schemas.versions(s), console.schemas.compatibility(s))
            for s in console.schemas.subjects()
        ]
        return console.render(request, "schemas.html", user, subjects=subjects)

    def subject_context(subject: str, a: int | None, b: int | None) -> dict[str, Any]:
        versions = console.schemas.subject_versions(subject)
        numbers = [v.version for v in versions]
        by_number = {v.version: v for v in versions}
        b = b if b in by_number else (numbers[-1] if numbers else None)
        a = a if a in by_number else (numbers[-2] if len(numbers) > 1 else b)
        diff: list[str] = []
        if a is not None and b is not None:
            diff = list(
                difflib.unified_diff(
                    _pretty(by_number[a].schema).splitlines(),
                    _pretty(by_number[b].schema).splitlines(),
                    f"v{a}",
                    f"v{b}",
                    lineterm="",
                )
            )
        return {
            "subject": subject,
            "versions": versions,
            "numbers": numbers,
            "a": a,
            "b": b,
            "diff": diff,
            "latest": _pretty(versions[-1].schema) if versions else "",
            "mode": console.schemas.compatibility(subject),
        }

    @app.get("/schemas/{subject}")
    def schema_subject(
        request: Request, subject: str, a: int | None = None, b: int | None = None
    ) -> Response:
        user = console.require(request, "schemas.view")
        if not console.schemas.subject_versions(subject):
            return console.render(
                request, "schema.html", user, status_code=404, subject=subject, versions=[]
            )
        return console.render(request, "schema.html", user, **subject_context(subject, a, b))

    @app.post("/schemas/{subject}/check")
    async def schema_check(request: Request, subject: str) -> Response:
        user = console.require(request, "schemas.view")
        form = await request.form()
        console.check_csrf(request, form)
        text = str(form.get("schema", ""))
        register = form.get("register") == "1"
        if register:
            console.require(request, "schemas.register")
        live = [(v.version, v.schema) for v in console.schemas.subject_versions(subject)]
        mode = console.schemas.compatibility(subject)
        result: dict[str, Any] = {"mode": mode, "problems": [], "invalid": None, "registered": None}
        try:
            result["problems"] = [p.explain() for p in compatibility.check(text, live, mode)]
            if register and not result["problems"]:
                schema_id, version = console.schemas.register_checked(subject, text)
                result["registered"] = (schema_id, version)
        except compatibility.InvalidSchema as error:
            result["invalid"] = str(error)
        except IncompatibleSchema as error:
            result["problems"] = [p.explain() for p in error.problems]
        return console.render(request, "_check.html", user, subject=subject, **result)

    # -- data protection -------------------------------------------------------------------
    @app.get("/privacy")
    def privacy(request: Request) -> Response:
        user = console.require(request, "privacy.view")
        return console.render(request, "privacy.html", user, receipts=None, problem=None)

    @app.post("/privacy/subject")
    async def privacy_subject(request: Request) -> Response:
        # A POST, so the NIK is in no URL, browser history or access log.
        user = console.require(request, "privacy.view")
        form = await request.form()
        console.check_csrf(request, form)
        identifier = str(form.get("identifier", "")).strip()
        reason = check_nip(identifier) if len(identifier) == 18 else check_nik(identifier)
        receipts = None
        if not reason:
            receipts = audit.receipts_for(console.engine, settings.audit_secret(), identifier, 500)
        return console.render(
            request,
            "_receipts.html",
            user,
            receipts=receipts,
            problem=reason,
            masked=mask(identifier) if identifier else "",
        )

    @app.post("/privacy/verify")
    async def privacy_verify(request: Request) -> Response:
        user = console.require(request, "privacy.view")
        console.check_csrf(request, await request.form())
        started = time.perf_counter()
        report = audit.verify(console.engine, settings.audit_secret(), settings.audit.heads_file)
        return console.render(
            request,
            "_verify.html",
            user,
            report=report,
            took=time.perf_counter() - started,
            checked_at=dt.datetime.now(dt.UTC),
        )

    return app


def serve(settings: Settings, topology: Topology, host: str, port: int) -> None:
    """Run the console until SIGINT/SIGTERM (then return: exit 0)."""
    from simpul.serving import run

    run(
        create_app(settings, topology),
        port,
        host=host,
        max_body=settings.http.max_body_bytes,
        access_log=False,
    )


__all__ = ["RIGHTS", "create_app", "serve"]
