"""The console without a browser: users and secrets on disk, login, CSRF, rights, languages,
the city's clock, masking, charts, schema checks; and `simpul console` as a real process."""

from __future__ import annotations

import datetime as dt
import json
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from simpul import dbmigrate
from simpul.cli.console import charts, queries
from simpul.cli.console.app import create_app
from simpul.cli.console.auth import UserError, UserStore, session_secret, users_path
from simpul.cli.console.i18n import LOCALE_DIR, format_time
from simpul.cli.services.broker import free_port
from simpul.db import make_engine
from simpul.registry.store import SchemaStore
from simpul.settings import Settings
from simpul.topology.model import Topology, TopologyError, load_topology, parse_topology
from tests.support.paths import REPO_ROOT
from tests.support.processes import SimpulProcess
from tests.support.stack import SCHEMAS_DIR, TOPOLOGY_FILE

PASSWORD = "Palu-console-test-2026"
CONSOLE_DIR = REPO_ROOT / "simpul" / "console"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    return Settings(database_url=url, data_dir=tmp_path / "var", connect_port=free_port())


@pytest.fixture
def users(settings: Settings) -> UserStore:
    store = UserStore(users_path(settings))
    store.add("ops", "operator", PASSWORD)
    store.add("ina", "integrator", PASSWORD)
    store.add("dpo", "dpo", PASSWORD)
    return store


@pytest.fixture
def client(settings: Settings, users: UserStore, topology: Topology) -> Iterator[TestClient]:
    with TestClient(create_app(settings, topology)) as test_client:
        yield test_client


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def log_in(client: TestClient, name: str, password: str = PASSWORD) -> httpx.Response:
    token = _csrf(client.get("/login").text)
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


@pytest.mark.unit
def test_users_file_is_private_and_holds_only_an_argon2_hash(
    settings: Settings, users: UserStore
) -> None:
    path = users_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text
    assert json.loads(text)["users"]["ops"]["hash"].startswith("$argon2id$")
    assert users.authenticate("ops", PASSWORD) is not None
    assert users.authenticate("ops", PASSWORD + "x") is None
    assert users.authenticate("nobody", PASSWORD) is None


@pytest.mark.unit
def test_bad_user_input_is_refused_naming_the_field(users: UserStore) -> None:
    with pytest.raises(UserError, match=r"^role: 'admin' is not one of"):
        users.add("budi", "admin", PASSWORD)
    with pytest.raises(UserError, match=r"^password: must be at least 12"):
        users.add("budi", "operator", "short")
    with pytest.raises(UserError, match=r"^name: "):
        users.add("Budi Santoso", "operator", PASSWORD)
    with pytest.raises(UserError, match="exists already"):
        users.add("ops", "operator", PASSWORD)


@pytest.mark.unit
def test_no_secret_ships_each_installation_generates_its_own(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path / "a")
    second = Settings(data_dir=tmp_path / "b")
    secret = session_secret(first)
    assert len(secret) >= 48 and secret != session_secret(second)
    assert session_secret(first) == secret  # kept
    path = tmp_path / "a" / "console-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(UserError, match="SIMPUL_CONSOLE_SECRET"):
        session_secret(Settings(data_dir=tmp_path, console_secret="too-short"))


@pytest.mark.integration
def test_login_refuses_a_wrong_password_and_a_post_without_csrf(client: TestClient) -> None:
    assert client.get("/agencies", follow_redirects=False).headers["location"].startswith("/login")
    assert log_in(client, "ops", "wrong password!!").status_code == 401
    no_token = client.post(
        "/login", data={"name": "ops", "password": PASSWORD}, follow_redirects=False
    )
    assert no_token.status_code == 403
    logged_in = log_in(client, "ops")
    assert logged_in.status_code == 303
    cookie = logged_in.headers["set-cookie"].lower()
    assert "simpul_console=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/agencies")
    assert page.status_code == 200 and 'data-agency="dinsos"' in page.text
    # A POST without the session's token is refused even when logged in.
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    assert client.get("/agencies").status_code == 200  # still logged in


@pytest.mark.integration
def test_a_role_without_the_right_is_refused_with_403(client: TestClient) -> None:
    log_in(client, "ops")
    assert client.get("/privacy").status_code == 403
    token = _csrf(client.get("/agencies").text)
    refused = client.post(
        "/deadletters/replay", data={"csrf_token": token, "type": "permit.issued"}
    )
    assert refused.status_code == 403
    client.cookies.clear()
    log_in(client, "dpo")
    for path in ("/deadletters", "/connectors", "/schemas"):
        assert client.get(path).status_code == 403, path
    assert client.get("/privacy").status_code == 200
    assert client.get("/subscriptions").status_code == 200


@pytest.mark.integration
def test_indonesian_by_default_english_per_user(client: TestClient, users: UserStore) -> None:
    log_in(client, "ops")
    page = client.get("/agencies")
    assert "<h1>Perangkat daerah</h1>" in page.text and 'lang="id"' in page.text
    token = _csrf(page.text)
    client.post("/language", data={"csrf_token": token, "lang": "en", "back": "/agencies"})
    assert "<h1>Agencies</h1>" in client.get("/agencies").text
    user = users.get("ops")
    assert user is not None and user.language == "en"
    client.cookies.clear()
    log_in(client, "ops")  # a new session keeps the user's choice
    assert "<h1>Agencies</h1>" in client.get("/agencies").text


@pytest.mark.unit
def test_dates_are_shown_in_the_citys_time_zone(topology: Topology) -> None:
    assert topology.timezone == "Asia/Makassar" and topology.timezone_abbreviation == "WITA"
    moment = dt.datetime(2026, 12, 1, 10, 40, tzinfo=dt.UTC)
    assert format_time(moment, "Asia/Makassar", "WITA", "id") == "1 Des 2026 18:40:00 WITA"
    assert format_time(moment, "Asia/Jayapura", "WIT", "en") == "1 Dec 2026 19:40:00 WIT"
    assert format_time(moment, "Asia/Jakarta", "WIB", "id") == "1 Des 2026 17:40:00 WIB"


@pytest.mark.unit
def test_topology_timezone_must_be_one_of_indonesias_three() -> None:
    import yaml

    data = yaml.safe_load(TOPOLOGY_FILE.read_text())
    data["timezone"] = "Europe/Amsterdam"
    with pytest.raises(TopologyError, match=r"timezone: Input should be 'Asia/Jakarta'"):
        parse_topology(data)
    del data["timezone"]
    assert parse_topology(data).timezone_abbreviation == "WIB"


def _messages(catalog: Any) -> dict[Any, Any]:
    def plain(value: Any) -> Any:
        return value if isinstance(value, str) else tuple(value)

    return {plain(m.id): plain(m.string) for m in catalog if m.id}


@pytest.mark.unit
def test_every_string_of_the_console_is_translated_and_the_mo_is_current() -> None:
    method_map = [("templates/**.html", "jinja2"), ("**.py", "python")]
    found = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract_from_dir(
            str(CONSOLE_DIR),
            method_map,
            options_map={"templates/**.html": {"trim_blocks": "True", "lstrip_blocks": "True"}},
        )
    }
    po_path = LOCALE_DIR / "id" / "LC_MESSAGES" / "messages.po"
    with po_path.open("rb") as handle:
        po = read_po(handle)
    translated = {m.id if isinstance(m.id, str) else m.id[0]: m.string for m in po if m.id}
    missing = sorted(found - set(translated))
    assert not missing, f"add these to {po_path.name}: {missing}"
    assert all(translated.values()), "every msgid needs an Indonesian msgstr"
    with po_path.with_suffix(".mo").open("rb") as handle:
        mo = read_mo(handle)
    assert _messages(mo) == _messages(po), (
        "messages.mo is older than messages.po: run python -m simpul.cli.console.i18n"
    )


@pytest.mark.unit
def test_long_numbers_are_masked_in_free_text_kelurahan_codes_are_not() -> None:
    text = "key: Kafka key '7271015203880004' is not the payload's nik; kelurahan 7271011004"
    masked = queries.mask_text(text)
    assert "7271015203880004" not in masked and "7271••••••••0004" in masked
    assert "7271011004" in masked


@pytest.mark.unit
def test_trend_and_flow_diagram_are_svg(topology: Topology) -> None:
    svg = charts.trend_svg([0] * 22 + [5, 10], [0] * 23 + [2], "dinsos <per hour>")
    assert svg.count('class="ev"') == 2 and svg.count('class="dl"') == 1
    assert "&lt;per hour&gt;" in svg
    flows = charts.flow_svg(topology, "flows", ("a", "b", "c"))
    assert 'data-from="dukcapil" data-to="population.death.registered"' in flows
    assert 'data-from="population.death.registered" data-to="dinsos"' in flows


@pytest.mark.integration
def test_schema_check_explains_a_break_and_only_an_integrator_registers(
    client: TestClient, settings: Settings
) -> None:
    subject = "simpul.in.permit.issued-value"
    v1 = (SCHEMAS_DIR / "permit.issued.v1.avsc").read_text()
    SchemaStore(make_engine(settings.store.database_url)).register(subject, v1)
    breaking = json.loads(v1)
    breaking["fields"].append({"name": "catatan", "type": "string"})  # no default
    compatible = json.loads(v1)
    compatible["fields"].append({"name": "catatan", "type": ["null", "string"], "default": None})

    log_in(client, "ops")
    token = _csrf(client.get(f"/schemas/{subject}").text)
    result = client.post(
        f"/schemas/{subject}/check",
        data={"csrf_token": token, "schema": json.dumps(breaking), "register": "0"},
    )
    assert 'data-compatible="no"' in result.text and "catatan" in result.text
    refused = client.post(
        f"/schemas/{subject}/check",
        data={"csrf_token": token, "schema": json.dumps(compatible), "register": "1"},
    )
    assert refused.status_code == 403

    client.cookies.clear()
    log_in(client, "ina")
    token = _csrf(client.get(f"/schemas/{subject}").text)
    done = client.post(
        f"/schemas/{subject}/check",
        data={"csrf_token": token, "schema": json.dumps(compatible), "register": "1"},
    )
    assert 'id="registered"' in done.text
    diff = client.get(f"/schemas/{subject}?a=1&b=2").text
    assert '<span class="add">+' in diff and "catatan" in diff


@pytest.mark.integration
def test_dpo_lookup_refuses_a_malformed_nik_naming_the_reason(client: TestClient) -> None:
    log_in(client, "dpo")
    token = _csrf(client.get("/privacy").text)
    answer = client.post("/privacy/subject", data={"csrf_token": token, "identifier": "72710"})
    assert 'id="lookup-problem"' in answer.text and "16 digits" in answer.text


@pytest.mark.integration
def test_console_command_manages_users_and_stops_with_exit_0_on_sigterm(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIMPUL_DATABASE_URL": url,
        "SIMPUL_DATA_DIR": str(tmp_path / "var"),
        "SIMPUL_TOPOLOGY_FILE": str(TOPOLOGY_FILE),
    }
    add = [sys.executable, "-m", "simpul", "console", "users", "add", "ops"]
    added = subprocess.run(
        [*add, "--role", "operator", "--password-stdin"],
        input=PASSWORD + "\n", env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    bad = subprocess.run(
        [*add[:-1], "budi", "--role", "root", "--password-stdin"],
        input=PASSWORD + "\n", env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "role: 'root'" in bad.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "simpul", "console", "users", "list"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "ops" in listed.stdout and "operator" in listed.stdout and "argon2" not in listed.stdout

    process = SimpulProcess(["console", "--port", str(port)], env, capture=True)
    try:
        process.wait_http(
            f"http://127.0.0.1:{port}/health", ok=lambda status: 200 <= status < 300, token=False
        )
        login = httpx.get(f"http://127.0.0.1:{port}/login")
        assert "Masuk ke konsol Simpul" in login.text
        assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
    finally:
        code = process.stop(timeout=30)
    output = process.output()
    assert code == 0, output
    assert f"http://127.0.0.1:{port}/" in output  # bound to this machine only by default


def test_palu_topology_loads_with_its_timezone() -> None:
    assert load_topology(TOPOLOGY_FILE).timezone == "Asia/Makassar"


@pytest.mark.integration
def test_trend_dead_letter_log_and_replay_outcomes_on_both_stores(store_url: str) -> None:
    from sqlalchemy import insert

    from sinks.central_store import event_log
    from sinks.dead_letters import DeadLetterLog, DeadLetterRow

    engine = make_engine(store_url)
    now = dt.datetime.now(dt.UTC)

    def event(ce_id: str, source: str, at: dt.datetime) -> dict[str, Any]:
        return {
            "ce_id": ce_id,
            "type": "social.recipient.updated",
            "source": source,
            "key": "k",
            "event_time": at,
            "schema_id": 1,
            "payload": {},
            "received_at": at,
            "stored_at": at,
        }

    with engine.begin() as conn:
        conn.execute(
            insert(event_log),
            [
                event("a", "/agency/dinsos", now),
                event("b", "/agency/dinsos", now),
                event("c", "/agency/dinsos", now - dt.timedelta(hours=3)),
                event("d", "/agency/dukcapil", now - dt.timedelta(hours=30)),  # too old
            ],
        )
    DeadLetterLog(engine).record(
        [
            DeadLetterRow(
                "simpul.in.social.recipient.updated", 0, 7, "social.recipient.updated",
                "dinsos", "validate", "key.mismatch",
                "key: Kafka key '7271015203880004' is not the payload's nik", "b", now,
            ),
            DeadLetterRow(
                "simpul.in.social.recipient.updated", 0, 8, "social.recipient.updated",
                "dinsos", "validate", "identifier.nik", "nik: expected 16 digits", "x", now,
            ),
        ]
    )  # fmt: skip
    trend = queries.hourly_trend(engine, ["dinsos", "dukcapil"], now)
    events, dead = trend["dinsos"]
    assert len(events) == 24 and events[-1] == 2 and events[-4] == 1 and sum(events) == 3
    assert dead[-1] == 2 and sum(dead) == 2
    assert sum(trend["dukcapil"][0]) == 0

    letters = queries.logged_dead_letters(engine, agency="dinsos", code="key.mismatch")
    assert [item.row.ce_id for item in letters] == ["b"]
    assert letters[0].stored_at is not None  # event b is in the store
    assert "7271015203880004" not in letters[0].reason
    assert queries.facets(engine)["code"] == ["identifier.nik", "key.mismatch"]
    outcomes = queries.replay_outcomes(engine, ["a", "x", "y"], now - dt.timedelta(minutes=1))
    assert [(o.ce_id, o.state) for o in outcomes] == [
        ("a", "stored"),
        ("x", "dead_lettered"),
        ("y", "waiting"),
    ]


@pytest.mark.integration
def test_repeated_wrong_passwords_lock_the_name_for_a_while(client: TestClient) -> None:
    for _ in range(5):
        assert log_in(client, "ops", "wrong password!!").status_code == 401
    locked = log_in(client, "ops")  # even the right password, for now
    assert locked.status_code == 429 and 'id="login-throttled"' in locked.text
    assert log_in(client, "ina").status_code == 303  # other names are not affected


@pytest.mark.unit
def test_login_throttle_forgets_failures_after_the_window() -> None:
    from simpul.cli.console.auth import LoginThrottle

    throttle = LoginThrottle(attempts=2, window_s=60)
    throttle.failed("ops", 0)
    assert throttle.wait_s("ops", 1) == 0
    throttle.failed("ops", 10)
    assert throttle.wait_s("ops", 11) == pytest.approx(49)
    assert throttle.wait_s("ops", 61) == 0


@pytest.mark.integration
def test_redirects_stay_on_the_console(client: TestClient) -> None:
    token = _csrf(client.get("/login").text)
    answer = client.post(
        "/login",
        data={"name": "ops", "password": PASSWORD, "csrf_token": token, "next": "//evil.example"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"
    token = _csrf(client.get("/agencies").text)
    back = client.post(
        "/language",
        data={"csrf_token": token, "lang": "en", "back": "https://evil.example/"},
        follow_redirects=False,
    )
    assert back.headers["location"] == "/"


@pytest.mark.integration
def test_connectors_page_says_when_the_runtime_does_not_answer(client: TestClient) -> None:
    log_in(client, "ops")
    page = client.get("/connectors")
    assert page.status_code == 200 and 'id="unreachable"' in page.text
    # The declared connectors are listed all the same, their state unknown.
    assert 'data-connector="simpeg-pegawai"' in page.text and 'data-state="UNKNOWN"' in page.text


@pytest.mark.integration
def test_a_language_chosen_on_the_login_page_is_kept_for_the_user(
    client: TestClient, users: UserStore
) -> None:
    token = _csrf(client.get("/login").text)
    client.post("/language", data={"csrf_token": token, "lang": "en", "back": "/login"})
    assert "Log in to the Simpul console" in client.get("/login").text
    log_in(client, "dpo")
    assert "<h1>Data protection</h1>" in client.get("/privacy").text
    user = users.get("dpo")
    assert user is not None and user.language == "en"


@pytest.mark.unit
def test_health_urls_setting_is_parsed_and_a_bad_entry_named() -> None:
    from simpul.cli.console.app import parse_health_urls

    assert parse_health_urls("worker=http://worker:6066/health, connect=http://c:8083/health") == [
        ("worker", "http://worker:6066/health"),
        ("connect", "http://c:8083/health"),
    ]
    with pytest.raises(ValueError, match=r"SIMPUL_CONSOLE_HEALTH_URLS: 'worker:6066'"):
        parse_health_urls("worker:6066")


@pytest.mark.integration
def test_readiness_asks_the_configured_processes(
    settings: Settings, users: UserStore, topology: Topology
) -> None:
    port = free_port()
    configured = settings.model_copy(
        update={"console_health_urls": f"worker=http://127.0.0.1:{port}/health"}
    )
    with TestClient(create_app(configured, topology)) as test_client:
        log_in(test_client, "ops")
        page = test_client.get("/agencies").text
    assert 'data-process="worker" data-state="down"' in page
    assert 'data-process="joins"' not in page
