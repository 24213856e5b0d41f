"""Scorecard and open data export read the real central store (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text, update

from simpul import dbmigrate
from simpul.citydata import PaluData
from simpul.db import make_engine
from simpul.topology.connectors import ConnectorSpec
from simpul.topology.model import Topology, TopologyError, parse_topology
from sinks.central_store import CentralStore, StoredEvent, event_log
from sinks.dead_letters import DeadLetterLog, DeadLetterRow, dead_letters
from sinks.reports.open_data import ExportError, export_open_data, parse_period
from sinks.reports.scorecard import build_scorecard, connectors_by_agency, render_html
from tests.support.postgres import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
PERIOD_DAY = dt.datetime(2026, 11, 14, 9, 30, tzinfo=dt.UTC)
PERSONAL_FIELDS = (
    "nik",
    "applicant_nik",
    "resident_nik",
    "nip",
    "assessor_nip",
    "name",
    "business_name",
    "nib",
    "permit_number",
    "document_number",
    "certificate_number",
    "signature_digest",
)


class Loaded:
    def __init__(self, url: str, topology: Topology) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.topology = topology
        self.personal_values: set[str] = set()


def _event(data: PaluData, event_type: str, at: dt.datetime) -> StoredEvent:
    et = data.topology.event_type(event_type)
    payload = data.payload(event_type, at)
    return StoredEvent(
        ce_id=str(uuid.uuid4()),
        type=event_type,
        entity=et.entity,
        source=f"/agency/{data.producer_of(event_type, payload)}",
        key=str(payload[et.key]),
        event_time=at,
        schema_id=1,
        payload=payload,
        published_at=at,
        received_at=at,
    )


def _load(url: str, topology: Topology) -> Loaded:
    dbmigrate.upgrade(url)
    loaded = Loaded(url, topology)
    data = PaluData(topology, seed=11, residents_count=400, employees_count=40)
    events = [_event(data, "hr.employee.updated", NOW) for _ in range(30)]
    events += [_event(data, "permit.issued", PERIOD_DAY) for _ in range(120)]
    events += [_event(data, "kelurahan.document.issued", PERIOD_DAY) for _ in range(150)]
    events += [_event(data, "social.recipient.updated", PERIOD_DAY) for _ in range(300)]
    # Outside the period: must not be counted in November's permits.
    events += [_event(data, "permit.issued", PERIOD_DAY.replace(month=10)) for _ in range(7)]
    CentralStore(loaded.engine).write(events)
    for event in events:
        for name in PERSONAL_FIELDS:
            if isinstance(event.payload.get(name), str):
                loaded.personal_values.add(event.payload[name])
    loaded.personal_values |= {r.name for r in data.residents} | {e.name for e in data.employees}
    with loaded.engine.begin() as conn:
        # dpmptsp (cadence 1h) last published 3 hours ago: stale.
        conn.execute(
            update(event_log)
            .where(event_log.c.source == "/agency/dpmptsp")
            .values(stored_at=NOW - dt.timedelta(hours=3))
        )
        # Kelurahan offices (cadence 30d) published 10 days ago: still connected.
        conn.execute(
            update(event_log)
            .where(event_log.c.source.like("/agency/kel-%"))
            .values(stored_at=NOW - dt.timedelta(days=10))
        )
    letters = [
        DeadLetterRow(
            topic="simpul.in.hr.employee.updated",
            partition=0,
            offset=i,
            type="hr.employee.updated",
            agency="bkpsdm",
            stage="store" if i == 0 else "validate",
            code="identifier.nip",
            reason="nip: expected 18 digits, got 17",
            ce_id=str(uuid.uuid4()),
            dead_lettered_at=NOW,
        )
        for i in range(10)
    ]
    log = DeadLetterLog(loaded.engine)
    log.record(letters)
    log.record(letters[:3])  # a re-delivered batch records nothing twice
    return loaded


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    topology: Topology,
) -> Iterator[Loaded]:
    if request.param == "sqlite":
        yield _load(f"sqlite:///{tmp_path_factory.mktemp('ops') / 'store.db'}", topology)
        return
    url = create_pg_database()
    try:
        yield _load(url, topology)
    finally:
        drop_pg_database(url)


def test_dead_letter_log_is_idempotent(loaded: Loaded) -> None:
    with loaded.engine.connect() as conn:
        assert conn.scalar(text("select count(*) from dead_letters")) == 10


def test_scorecard_shows_connected_stale_never_and_receiving_agencies(loaded: Loaded) -> None:
    card = build_scorecard(loaded.engine, loaded.topology)
    by_code = {a.code: a for a in card.agencies}
    assert by_code["bkpsdm"].status == "connected"
    assert by_code["bkpsdm"].events_24h == 30
    assert by_code["bkpsdm"].dead_letters_24h == 10
    assert by_code["bkpsdm"].errors_24h == 1  # the store-stage one
    assert by_code["bkpsdm"].dead_letter_rate == pytest.approx(10 / 40)
    assert by_code["dpmptsp"].status == "stale"
    assert by_code["dpmptsp"].events_24h == 127
    assert by_code["dukcapil"].status == "never"
    assert by_code["kominfo"].status == "receives-only"
    assert by_code["kel-ujuna"].status == "connected"
    assert by_code["kel-ujuna"].events_24h == 0
    last = by_code["kel-ujuna"].last_event_at
    assert last is not None and abs((NOW - last).total_seconds() - 10 * 86400) < 5
    # bkpsdm, dinsos and 8 kelurahan offices connected; dpmptsp stale; dukcapil never.
    assert card.summary == "10 of 12 agencies connected"
    page = render_html(card)
    assert "10 of 12 agencies connected" in page
    assert 'class="stale" data-agency="dpmptsp"' in page


@pytest.mark.parametrize("loaded", ["postgresql"], indirect=True)  # plans are PostgreSQL's
def test_scorecard_agency_queries_use_the_indexes(loaded: Loaded) -> None:
    with loaded.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(
            conn.scalars(
                text("EXPLAIN SELECT max(stored_at) FROM event_log WHERE source = '/agency/bkpsdm'")
            )
        )
        assert "ix_event_log_source_stored_at" in plan
        plan = "\n".join(
            conn.scalars(
                text(
                    "EXPLAIN SELECT count(*) FROM dead_letters WHERE agency = 'bkpsdm' "
                    "AND dead_lettered_at >= now() - interval '1 day'"
                )
            )
        )
        assert "ix_dead_letters_agency_dead_lettered_at" in plan


def test_cadence_errors_name_the_field(topology: Topology) -> None:
    data = topology.model_dump(by_alias=True)
    data["agencies"][2]["cadence"] = "monthly"
    with pytest.raises(TopologyError, match=r"agencies\.2\.cadence: cadence 'monthly'"):
        parse_topology(data)


def test_export_writes_three_datasets_with_metadata_and_suppression(
    loaded: Loaded, tmp_path: Path
) -> None:
    result = export_open_data(loaded.engine, loaded.topology, "2026-11", tmp_path)
    names = sorted(p.name for p in result.files)
    assert names == [
        "izin-terbit-per-kelurahan-2026-11.csv",
        "izin-terbit-per-kelurahan-2026-11.json",
        "penerima-bansos-per-program-2026-11.csv",
        "penerima-bansos-per-program-2026-11.json",
        "surat-keterangan-per-jenis-2026-11.csv",
        "surat-keterangan-per-jenis-2026-11.json",
    ]
    permits_csv = (tmp_path / "izin-terbit-per-kelurahan-2026-11.csv").read_text().splitlines()
    assert permits_csv[0] == "kode_kelurahan,nama_kelurahan,kecamatan,jenis_izin,jumlah"
    counts = [row.rsplit(",", 1)[1] for row in permits_csv[1:]]
    assert all(c == "<5" or int(c) >= 5 for c in counts)
    assert "<5" in counts  # 120 permits over 40 kelurahan x types: small cells exist
    # November holds 120 permits (October's 7 are outside the period): the shown counts
    # plus 1..4 per suppressed cell bracket exactly that.
    shown, hidden = sum(int(c) for c in counts if c != "<5"), counts.count("<5")
    assert shown + hidden <= 120 <= shown + 4 * hidden
    meta = json.loads((tmp_path / "izin-terbit-per-kelurahan-2026-11.json").read_text())
    assert meta["producer"] == "Dinas Penanaman Modal dan Pelayanan Terpadu Satu Pintu"
    assert meta["period"] == "2026-11" and meta["license"] == "CC-BY-4.0"
    assert [v["name"] for v in meta["variables"]][-1] == "jumlah"
    assert meta["title"].startswith("Permits issued per kelurahan, Kota Palu")
    letters = json.loads((tmp_path / "surat-keterangan-per-jenis-2026-11.json").read_text())
    assert letters["producer"] == "8 kelurahan offices of Kota Palu"


def test_no_personal_value_ever_appears_in_an_export(loaded: Loaded, tmp_path: Path) -> None:
    result = export_open_data(loaded.engine, loaded.topology, "2026-11", tmp_path)
    assert len(loaded.personal_values) > 500
    for path in result.files:
        content = path.read_text(encoding="utf-8")
        leaked = [v for v in loaded.personal_values if v in content]
        assert leaked == [], f"{path.name} contains personal values {leaked[:5]}"
        if path.suffix == ".csv":
            columns = set(content.splitlines()[0].split(","))
        else:
            columns = {v["name"] for v in json.loads(content)["variables"]}
        assert not columns & set(PERSONAL_FIELDS), path.name


def test_export_refuses_a_bad_period(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"--period: '2026-13' is not a month"):
        parse_period("2026-13")
    start, end = parse_period("2026-12")
    assert start == dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)  # WITA is UTC+8
    assert end == dt.datetime(2027, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@pytest.mark.parametrize("loaded", ["sqlite"], indirect=True)  # the CLI is exercised once
def test_cli_status_and_export(loaded: Loaded, tmp_path: Path) -> None:
    env = {**os.environ, "SIMPUL_DATABASE_URL": loaded.url}
    status = subprocess.run(
        [sys.executable, "-m", "simpul", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["summary"] == "10 of 12 agencies connected"
    table = subprocess.run(
        [sys.executable, "-m", "simpul", "status"],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "10 of 12 agencies connected" in table.stdout
    assert "STALE" in table.stdout and "Dinas Penanaman Modal" in table.stdout
    narrow = subprocess.run(
        [sys.executable, "-m", "simpul", "status"],
        env={**env, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = [line for line in narrow.stdout.splitlines() if "dpmptsp" in line]
    assert rows and "STALE" in rows[0], narrow.stdout  # code and status on one line
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 100
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, "-m", "simpul", "export", "--period", "2026-11", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.csv"))) == 3 and len(list(out.glob("*.json"))) == 3
    bad = subprocess.run(
        [sys.executable, "-m", "simpul", "export", "--period", "11-2026", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--period" in bad.stderr


def test_dead_letters_table_keys_on_the_message_position() -> None:
    assert [c.name for c in dead_letters.primary_key.columns] == ["topic", "partition", "offset"]


def test_scorecard_lists_connectors_from_topology_and_files_and_subscriptions(
    loaded: Loaded, tmp_path: Path
) -> None:
    from sinks.reports.scorecard import subscriptions_by_agency

    topology = loaded.topology.model_copy(
        update={
            "connectors": [
                ConnectorSpec.model_validate(
                    {
                        "name": "simpeg-outbox",
                        "connector.class": "outbox",
                        "event.type": "hr.employee.updated",
                        "agency": "bkpsdm",
                    }
                )
            ]
        }
    )
    (tmp_path / "kelurahan.yaml").write_text(
        "connectors:\n"
        "  - {name: surat-ujuna, connector.class: file, event.type: kelurahan.document.issued,\n"
        "     agency: kel-ujuna, directory: /tmp/drop}\n"
    )
    assert connectors_by_agency(topology.connectors) == {"bkpsdm": ["simpeg-outbox (outbox)"]}
    card = build_scorecard(loaded.engine, topology, connectors_dir=tmp_path)
    by_code = {a.code: a for a in card.agencies}
    assert by_code["bkpsdm"].connectors == ["simpeg-outbox (outbox)"]
    assert by_code["kel-ujuna"].connectors == ["surat-ujuna (file)"]
    assert "simpul" not in by_code  # the system agency is not an agency system
    # An invalid connectors file does not take the scorecard down.
    (tmp_path / "broken.yaml").write_text("connectors: [{name: x}]\n")
    card = build_scorecard(loaded.engine, topology, connectors_dir=tmp_path)
    assert {a.code: a for a in card.agencies}["bkpsdm"].connectors == ["simpeg-outbox (outbox)"]
    page = render_html(card)
    assert "simpeg-outbox (outbox)" in page
    by_subscriber = subscriptions_by_agency(loaded.topology.subscriptions)
    assert by_subscriber and all(code in loaded.topology.agencies_by_code for code in by_subscriber)
    for subscription in loaded.topology.subscriptions:
        assert subscription.name in by_code[subscription.agency].subscriptions
        assert subscription.name in page


def test_export_carries_satu_data_variable_metadata_from_the_schemas(
    loaded: Loaded, tmp_path: Path
) -> None:
    export_open_data(loaded.engine, loaded.topology, "2026-11", tmp_path)
    letters = json.loads((tmp_path / "surat-keterangan-per-jenis-2026-11.json").read_text())
    assert letters["metadata_standard"].startswith("Peraturan BPS Nomor 5 Tahun 2020")
    variables = {v["nama_variabel"]: v for v in letters["satu_data_variables"]}
    assert list(variables) == [v["name"] for v in letters["variables"]]
    required = {
        "nama_variabel", "alias", "konsep", "definisi", "klasifikasi", "aturan_validasi",
        "satuan", "tipe_data", "akses_publik",
    }  # fmt: skip
    assert all(required <= set(v) for v in variables.values())
    kind = variables["jenis_surat"]
    # From kelurahan.document.issued.v1.avsc: the record doc, the field doc, the enum symbols.
    assert kind["konsep"] == "A kelurahan office issued a letter to a resident."
    assert kind["definisi"] == "Kind of letter."
    assert kind["klasifikasi"]["codes"][:3] == ["SKTM", "DOMISILI", "SKU"]
    assert kind["aturan_validasi"] == "One of the codes listed"
    assert kind["sumber_field"] == "kelurahan.document.issued.document_type"
    code = variables["kode_kelurahan"]
    assert "Kepmendagri" in code["klasifikasi"]["name"]
    assert code["klasifikasi"]["codes"]["7271011004"] == "Besusu Barat"
    assert code["aturan_validasi"].startswith("10 digits: province (2)")
    assert variables["jumlah"]["satuan"] == "count"
    assert all(v["akses_publik"] == "terbuka" for v in variables.values())
    recipients = json.loads((tmp_path / "penerima-bansos-per-program-2026-11.json").read_text())
    program = {v["nama_variabel"]: v for v in recipients["satu_data_variables"]}["program"]
    assert program["klasifikasi"]["codes"] == ["PKH", "BPNT", "PBI_JK", "ATENSI"]
    assert "PKH: conditional cash transfer" in program["klasifikasi"]["description"]
