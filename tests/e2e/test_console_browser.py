"""The console in a real browser (Playwright driving Debian's Chromium) against real parts:
the broker fixture, a worker and a schema registry process, PostgreSQL, a `simpul connect`
process and a `simpul console` process. Screenshots of each page at 1280 and 390 pixels wide
go to var/screenshots/ (or SIMPUL_SCREENSHOTS_DIR)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from simpul.citydata import PaluData
from simpul.cli.services.broker import free_port
from simpul.codec import AvroSchema
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.publisher import Publisher
from simpul.registry.store import SchemaStore
from sinks.audit import receipts_for
from sinks.dead_letters import dead_letters
from tests.support.connector_cases import LETTER_COLUMNS, LetterFiles
from tests.support.paths import REPO_ROOT
from tests.support.processes import SimpulProcess, wait_until
from tests.support.signing import auth
from tests.support.stack import SCHEMAS_DIR, Stack

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

SCREENSHOTS = Path(os.environ.get("SIMPUL_SCREENSHOTS_DIR", REPO_ROOT / "var" / "screenshots"))
PASSWORD = "Palu-console-test-2026"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def console(pg_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`simpul connect` with Kelurahan Besusu Barat's file-drop connector, and the console."""
    work = tmp_path_factory.mktemp("console")
    drop = work / "drop"
    drop.mkdir()
    connectors = work / "connectors"
    connectors.mkdir()
    (connectors / "besusu.yaml").write_text(
        yaml.safe_dump(
            {
                "connectors": [
                    {
                        "name": "kel-besusu-barat-letters",
                        "connector.class": "file",
                        "event.type": "kelurahan.document.issued",
                        "agency": "kel-besusu-barat",
                        "input.path": str(drop),
                        "field.mapping": LETTER_COLUMNS,
                        "file.minimum.age.ms": 100,
                        "poll.interval.ms": 200,
                        "errors.tolerance": "all",
                    }
                ]
            }
        )
    )
    connect_port, console_port = free_port(), free_port()
    env = {
        **pg_stack.env,
        "SIMPUL_DATA_DIR": str(work / "var"),
        "SIMPUL_CONNECTORS_DIR": str(connectors),
        "SIMPUL_CONNECT_PORT": str(connect_port),
        "SIMPUL_CONNECT_POLL_INTERVAL_S": "0.2",
        "SIMPUL_CONSOLE_REFRESH_S": "1",
    }
    connect = SimpulProcess(["connect"], env, work / "connect.log")
    connect.wait_http(f"http://127.0.0.1:{connect_port}/connectors")
    for name, role in (("ops", "operator"), ("ina", "integrator"), ("dpo", "dpo")):
        subprocess.run(
            [sys.executable, "-m", "simpul", "console", "users", "add", name, "--role", role,
             "--password-stdin"],
            input=PASSWORD + "\n", env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
    served = SimpulProcess(["console", "--port", str(console_port)], env, work / "console.log")
    base = f"http://127.0.0.1:{console_port}"
    served.wait_http(f"{base}/health")
    yield {
        "base": base,
        "connect": f"http://127.0.0.1:{connect_port}",
        "env": env,
        "letters": LetterFiles(drop, pg_stack.topology),
    }
    assert served.stop() == 0, "the console did not stop cleanly on SIGTERM"
    connect.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    opened = context.new_page()
    yield opened
    context.close()


def shoot(page: Any, name: str) -> None:
    """The page as it is now, at desktop and phone width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def log_in(page: Any, console: dict[str, Any], name: str, target: str = "/") -> None:
    page.goto(console["base"] + target)
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("#login")
    expect(page.locator("#who")).to_contain_text(name)


def test_log_in_shows_the_scorecard_in_indonesian_and_english_on_request(
    page: Any, console: dict[str, Any]
) -> None:
    page.goto(console["base"] + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    shoot(page, "login")
    page.fill("input[name=name]", "ops")
    page.fill("input[name=password]", "not the password at all")
    page.click("#login")
    expect(page.locator("#login-error")).to_have_text("Nama atau kata sandi salah.")
    log_in(page, console, "ops")
    expect(page).to_have_url(re.compile(r"/agencies$"))
    expect(page.locator("h1")).to_have_text("Perangkat daerah")
    expect(page.locator("footer")).to_contain_text("WITA")
    page.click("button[name=lang][value=en]")
    expect(page.locator("h1")).to_have_text("Agencies")
    page.click("button[name=lang][value=id]")
    expect(page.locator("h1")).to_have_text("Perangkat daerah")


def test_agency_goes_from_never_to_connected_as_events_arrive(
    page: Any, console: dict[str, Any], pg_stack: Stack
) -> None:
    log_in(page, console, "ops", "/agencies")
    status = page.locator("tr[data-agency=dinsos] td.status")
    expect(status).to_have_attribute("data-status", "never")
    expect(status).to_have_text("belum pernah mengirim")
    for process in ("worker", "connect"):
        ready = page.locator(f"#readiness li[data-process={process}]")
        expect(ready).to_have_attribute("data-state", "ready")
    data = PaluData(pg_stack.topology, seed=18, residents_count=20, employees_count=3)
    now = dt.datetime.now(dt.UTC)
    with Publisher("dinsos", settings=pg_stack.settings, catalog=pg_stack.catalog()) as pub:
        for _ in range(3):
            pub.publish("social.recipient.updated", data.payload("social.recipient.updated", now))
    # No reload: the table refreshes itself (htmx) as the events reach the store.
    expect(status).to_have_attribute("data-status", "connected", timeout=WAIT_MS)
    expect(status).to_have_text("terhubung")
    expect(page.locator("tr[data-agency=dinsos] svg.trend rect.ev").first).to_be_visible()
    shoot(page, "agencies")


def test_pause_and_resume_a_connector(page: Any, console: dict[str, Any]) -> None:
    name = "kel-besusu-barat-letters"
    log_in(page, console, "ops", "/connectors")
    state = page.locator(f"tr[data-connector={name}] td.state")
    expect(state).to_have_text("RUNNING", timeout=WAIT_MS)
    page.click(f"tr[data-connector={name}] button[data-action=pause]")
    expect(state).to_have_text("PAUSED", timeout=WAIT_MS)
    status = httpx.get(f"{console['connect']}/connectors/{name}/status", headers=auth()).json()
    assert status["tasks"][0]["state"] == "PAUSED"
    shoot(page, "connectors-paused")
    page.click(f"tr[data-connector={name}] button[data-action=resume]")
    expect(state).to_have_text("RUNNING", timeout=WAIT_MS)
    status = httpx.get(f"{console['connect']}/connectors/{name}/status", headers=auth()).json()
    assert status["tasks"][0]["state"] == "RUNNING"
    # Resumed, it reads the kelurahan's next export; the console shows what it published.
    console["letters"].add(3)
    row = page.locator(f"tr[data-connector={name}]")
    expect(row.locator("td.published")).to_have_text("3", timeout=WAIT_MS)
    expect(row.locator("td.last-success")).to_contain_text("WITA")
    shoot(page, "connectors")


def _permit_variant() -> str:
    """permit.issued v1 plus an optional field: a backward-compatible next version."""
    definition = json.loads((SCHEMAS_DIR / "permit.issued.v1.avsc").read_text())
    definition["fields"].append({"name": "catatan", "type": ["null", "string"], "default": None})
    return json.dumps(definition)


def test_replay_a_dead_letter_after_registering_its_schema(
    page: Any, console: dict[str, Any], pg_stack: Stack
) -> None:
    # DPMPTSP's system moved to a schema that was registered under the wrong subject: the
    # worker dead-letters its permit (schema.wrong_subject).
    engine = make_engine(pg_stack.settings.store.database_url)
    variant = _permit_variant()
    schema_id, _ = SchemaStore(engine).register("ptsp.staging-value", variant)
    data = PaluData(pg_stack.topology, seed=19, residents_count=20, employees_count=3)
    sent = []
    with Publisher("dpmptsp", settings=pg_stack.settings, catalog=pg_stack.catalog()) as pub:
        for _ in range(2):
            payload = {**data.payload("permit.issued", dt.datetime.now(dt.UTC)), "catatan": None}
            envelope = Envelope(type="permit.issued", source="/agency/dpmptsp")
            pub.send_signed(
                "simpul.in.permit.issued",
                payload["permit_number"].encode(),
                AvroSchema.from_text(schema_id, variant).encode(payload),
                envelope.to_headers(),
            ).get(30)
            sent.append((envelope.id, payload))
    (ce_id, payload), (other_id, _) = sent
    nik = payload["applicant_nik"]

    def dead_lettered() -> bool:
        with engine.connect() as conn:
            found = select(dead_letters.c.ce_id).where(dead_letters.c.ce_id.in_([ce_id, other_id]))
            return len(conn.scalars(found).all()) == 2

    wait_until(dead_lettered, 60, "the permit dead-lettered")

    log_in(page, console, "ina", "/deadletters")
    row = page.locator(f"tr[data-ce-id='{ce_id}']")
    expect(row.locator("td.reason")).to_contain_text(
        "is not a version of simpul.in.permit.issued-value"
    )
    expect(row.locator("td.now")).to_have_text("belum tersimpan")
    shoot(page, "deadletters")
    row.locator("a").click()
    expect(page.locator("#payload")).to_contain_text(payload["permit_number"])
    content = page.content()
    assert nik not in content, "the applicant's NIK must never be shown unmasked"
    assert nik[:4] + "•" * 8 + nik[-4:] in content
    shoot(page, "deadletter")

    # The fix: register the schema as the subject's next version, after checking it.
    page.goto(console["base"] + "/schemas/simpul.in.permit.issued-value")
    page.fill("#schema-text", variant)
    page.click("#check")
    expect(page.locator(".check-result")).to_have_attribute("data-compatible", "yes")
    page.click("#register")
    expect(page.locator("#registered")).to_contain_text("versi 2")
    page.goto(console["base"] + "/schemas/simpul.in.permit.issued-value?a=1&b=2")
    expect(page.locator("#diff .add").filter(has_text="catatan")).to_have_count(1)
    shoot(page, "schema")

    # Replay it from the console and watch the outcome.
    page.goto(console["base"] + f"/deadletters/permit.issued/{ce_id}")
    page.click("#replay-one")
    expect(page.locator("#replay-summary")).to_contain_text("1 dikirim kembali")
    outcome = page.locator(f"#outcomes tr[data-ce-id='{ce_id}']")
    expect(outcome).to_have_attribute("data-outcome", "stored", timeout=WAIT_MS)
    assert ce_id in pg_stack.store.event_ids()
    shoot(page, "replayed")

    # Then the rest of the selection: every permit dead-lettered for the same reason.
    page.goto(console["base"] + "/deadletters?type=permit.issued&code=schema.wrong_subject")
    page.click("#replay-set")
    expect(page.locator("#replay-summary")).to_contain_text("2 dikirim kembali")
    for replayed in (ce_id, other_id):
        expect(page.locator(f"#outcomes tr[data-ce-id='{replayed}']")).to_have_attribute(
            "data-outcome", "stored", timeout=WAIT_MS
        )
    page.goto(console["base"] + "/deadletters?type=permit.issued")
    for replayed in (ce_id, other_id):
        expect(page.locator(f"tr[data-ce-id='{replayed}'] td.now")).to_contain_text("tersimpan")


def test_data_protection_officer_finds_a_subjects_deliveries(
    page: Any, console: dict[str, Any], pg_stack: Stack
) -> None:
    data = PaluData(pg_stack.topology, seed=20, residents_count=20, employees_count=3)
    death = data.payload("population.death.registered", dt.datetime.now(dt.UTC))
    nik = death["nik"]
    with Publisher("dukcapil", settings=pg_stack.settings, catalog=pg_stack.catalog()) as pub:
        pub.publish("population.death.registered", death)
    engine = make_engine(pg_stack.settings.store.database_url)
    key = pg_stack.settings.audit_secret()
    wait_until(lambda: receipts_for(engine, key, nik), 60, "the death's delivery audited")

    log_in(page, console, "dpo", "/privacy")
    page.fill("#identifier", nik)
    page.click("#lookup")
    row = page.locator("#receipts tr[data-agency=dinsos]")
    expect(row).to_contain_text("Stop social assistance to recipients who have died")
    expect(row).to_contain_text("nik, date_of_death, kelurahan_code")
    expect(page.locator("#receipts-summary")).to_contain_text(nik[:4] + "•" * 8 + nik[-4:])
    assert nik not in page.locator("#receipts").inner_html()
    page.click("#verify-button")
    expect(page.locator("#verified")).to_contain_text("Terverifikasi")
    shoot(page, "privacy")
    page.goto(console["base"] + "/subscriptions")
    expect(page.locator("svg.flows g[data-node=dinsos]")).to_have_count(1)
    shoot(page, "subscriptions")


def test_a_role_without_rights_is_refused(page: Any, console: dict[str, Any]) -> None:
    log_in(page, console, "ops", "/agencies")
    expect(page.locator("nav a[data-page=privacy]")).to_have_count(0)
    response = page.goto(console["base"] + "/privacy")
    assert response is not None and response.status == 403
    expect(page.locator("#refused")).to_contain_text("Tidak diizinkan")
    shoot(page, "refused")
    page.click("#logout")
    log_in(page, console, "dpo", "/agencies")
    response = page.goto(console["base"] + "/deadletters")
    assert response is not None and response.status == 403


def test_screenshots_were_written() -> None:
    if not shutil.which(CHROMIUM):
        pytest.skip("no chromium")
    names = {p.name for p in SCREENSHOTS.glob("*.png")}
    for page_name in ("login", "agencies", "connectors", "deadletter", "privacy", "refused"):
        assert {f"{page_name}-1280.png", f"{page_name}-390.png"} <= names
