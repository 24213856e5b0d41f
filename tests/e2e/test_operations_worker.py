"""The worker's scorecard, dead-letter log and metrics, with real parts: embedded broker,
worker process, PostgreSQL store, promtool and headless Chromium where installed."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update

from simpul.citydata import PaluData
from simpul.db import make_engine
from simpul.publisher import Publisher
from sinks.central_store import event_log
from sinks.dead_letters import dead_letters
from tests.support.processes import wait_until
from tests.support.signing import auth
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(stack: Stack, path: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.settings.worker.web_port}{path}", headers=auth()
    )
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers.get("Content-Type", ""), response.read().decode()


@pytest.fixture(scope="module")
def traffic(pg_stack: Stack) -> dict[str, str]:
    """dpmptsp: 3 permits and 1 invalid; dukcapil: 1 death, made 2 hours old (stale)."""
    data = PaluData(pg_stack.topology, seed=3, residents_count=50, employees_count=5)
    now = dt.datetime.now(dt.UTC)
    catalog = pg_stack.catalog()
    ids = {"bad": str(uuid.uuid4()), "death": str(uuid.uuid4())}
    with Publisher("dpmptsp", settings=pg_stack.settings, catalog=catalog) as pub:
        for i in range(3):
            ids[f"permit{i}"] = str(uuid.uuid4())
            pub.publish("permit.issued", data.payload("permit.issued", now), id=ids[f"permit{i}"])
        bad = {**data.payload("permit.issued", now), "applicant_nik": "727101520388000"}
        pub.publish("permit.issued", bad, id=ids["bad"], validate=False)
    with Publisher("dukcapil", settings=pg_stack.settings, catalog=catalog) as pub:
        death = data.payload("population.death.registered", now)
        pub.publish("population.death.registered", death, id=ids["death"])
    wanted = {v for k, v in ids.items() if k != "bad"}
    wait_until(lambda: wanted <= pg_stack.store.event_ids(), 60, "events stored")
    engine = make_engine(pg_stack.settings.store.database_url)

    def letter_recorded() -> bool:
        with engine.connect() as conn:
            return bool(conn.scalar(select(dead_letters.c.ce_id).where(
                dead_letters.c.ce_id == ids["bad"])))  # fmt: skip

    wait_until(letter_recorded, 60, "dead letter recorded in the store")
    with engine.begin() as conn:
        conn.execute(
            update(event_log)
            .where(event_log.c.ce_id == ids["death"])
            .values(stored_at=now - dt.timedelta(hours=2))
        )
    return ids


def test_dead_letter_is_recorded_once_with_its_reason(pg_stack: Stack, traffic: dict) -> None:
    with make_engine(pg_stack.settings.store.database_url).connect() as conn:
        rows = conn.execute(select(dead_letters)).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert row["ce_id"] == traffic["bad"] and row["agency"] == "dpmptsp"
    assert row["topic"] == "simpul.in.permit.issued" and row["stage"] == "validate"
    assert row["reason"] == "applicant_nik: expected 16 digits, got 15"


def test_status_json_scores_each_agency(pg_stack: Stack, traffic: dict) -> None:
    content_type, body = _get(pg_stack, "/status")
    assert content_type.startswith("application/json")
    card = json.loads(body)
    agencies = {a["code"]: a for a in card["agencies"]}
    dpmptsp = agencies["dpmptsp"]
    assert dpmptsp["status"] == "connected" and dpmptsp["connected"] is True
    assert dpmptsp["events_24h"] == 3 and dpmptsp["dead_letters_24h"] == 1
    assert dpmptsp["dead_letter_rate"] == pytest.approx(0.25)
    assert agencies["dukcapil"]["status"] == "stale"
    assert agencies["bkpsdm"]["status"] == "never"
    assert agencies["bkd"]["status"] == "receives-only"
    assert card["summary"] == "1 of 12 agencies connected"


def test_metrics_scrape_passes_promtool_and_exports_freshness(
    pg_stack: Stack, traffic: dict
) -> None:
    _get(pg_stack, "/status")  # refreshes the gauges now rather than within 30 s
    scrape = pg_stack.metrics()
    assert 'simpul_agency_connected{agency="dpmptsp"} 1.0' in scrape
    assert 'simpul_agency_connected{agency="dukcapil"} 0.0' in scrape
    assert 'simpul_agency_cadence_seconds{agency="dukcapil"} 3600.0' in scrape
    assert 'simpul_agency_last_event_timestamp_seconds{agency="dpmptsp"}' in scrape
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (`apt-get install prometheus` provides it)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == ""  # no lint findings


def test_status_page_in_headless_chromium_shows_what_a_person_needs(
    pg_stack: Stack, traffic: dict, tmp_path: Path
) -> None:
    content_type, page = _get(pg_stack, "/status", accept="text/html,application/xhtml+xml")
    assert content_type.startswith("text/html") and "1 of 12 agencies connected" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (`apt-get install chromium`)")
    # A person's browser authenticates with the installation token as the Basic password.
    token = os.environ["SIMPUL_HTTP_TOKEN"]
    url = f"http://simpul:{token}@127.0.0.1:{pg_stack.settings.worker.web_port}/status.html"
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path}",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert "Simpul integration status: Kota Palu" in dom
    assert "1 of 12 agencies connected" in dom
    assert "Dinas Penanaman Modal dan Pelayanan Terpadu Satu Pintu" in dom
    assert "Kantor Kelurahan Besusu Barat" in dom
    stale_row = dom.split('data-agency="dukcapil"')[1].split("</tr>")[0]
    assert "STALE" in stale_row and "Dinas Kependudukan dan Pencatatan Sipil" in dom
    assert '<tr class="stale" data-agency="dukcapil"' in dom
    shot = tmp_path / "status.png"
    subprocess.run(
        [*common, "--window-size=1400,1000", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_readiness_page_shows_rejections_and_fields(pg_stack: Stack, traffic: dict) -> None:
    content_type, body = _get(pg_stack, "/readiness.html")
    assert content_type.startswith("text/html")
    assert "Data readiness: Kota Palu" in body
    row = next(line for line in body.split("<tr>") if "<small>dpmptsp</small>" in line)
    assert "identifier.nik (1)" in row and "applicant_nik (0 missing, 1 malformed)" in row
    assert "25.0 %" in row
    assert "727101520388000" not in body  # the bad NIK itself never appears
    assert "agencies connected</td>" in body
