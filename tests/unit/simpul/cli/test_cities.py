"""The seed cities' topologies (Kupang, Malang, Batu, Yogyakarta beside Palu) are valid, reflect
what each city asked for, and their simulated agencies send only events Simpul accepts."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from simpul import dbmigrate
from simpul.catalog import EventCatalog
from simpul.citydata import CityData
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import SchemaStore, register_all
from simpul.topology.connectors import located_connectors
from simpul.topology.model import Topology, load_topology
from streams.fanout.plan import SubscriptionPlan
from streams.ingest.pipeline import RawRecord, validate_record
from tests.support.paths import REPO_ROOT

CITIES = {
    # file stem: (city, region code, kelurahan + desa)
    "palu": ("Kota Palu", "7271", 46),
    "kupang": ("Kota Kupang", "5371", 51),
    "malang": ("Kota Malang", "3573", 57),
    "batu": ("Kota Batu", "3579", 24),
    "yogyakarta": ("Kota Yogyakarta", "3471", 45),
}
NOW = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)


def _topology(city: str) -> Topology:
    return load_topology(REPO_ROOT / "topology" / f"{city}.yaml")


@pytest.mark.unit
@pytest.mark.parametrize("city", sorted(CITIES))
def test_city_topology_is_valid_with_its_connectors_and_subscriptions(city: str) -> None:
    name, region, villages = CITIES[city]
    topology = _topology(city)
    assert (topology.city, topology.region_code, len(topology.kelurahan)) == (
        name,
        region,
        villages,
    )
    # The shipped connectors directory holds Palu's; each city sees only its own.
    located = located_connectors(topology, REPO_ROOT / "topology" / "connectors")
    assert all(spec.agency in topology.agencies_by_code for spec, _ in located)
    assert SubscriptionPlan.build(topology, REPO_ROOT / "schemas").routes_for("permit.issued")


@pytest.mark.unit
def test_kupang_reflects_its_seed() -> None:
    kupang = _topology("kupang")
    assert kupang.offices_issue_for_any_kelurahan  # Soda Molek
    assert kupang.event_type("hr.employee.updated").producers == ["bkpp", "bkn"]  # SIMPEG, SIASN
    assert any(c.kind == "rest" and c.agency == "bkn" for c in kupang.connectors)
    names = {s.name: s for s in kupang.subscriptions}
    assert names["bkd-tpp-payroll-basis"].event_types == ["hr.allowance.basis"]
    assert names["dinkes-brigade-kupang-sehat"].agency == "dinkes"


@pytest.mark.unit
def test_malang_connects_five_opd_first_and_feeds_kominfo_command_view() -> None:
    malang = _topology("malang")
    opd = [a for a in malang.agencies if not a.kelurahan_code and not a.system]
    assert {a.code for a in opd if a.onboarded} == {
        "bkpsdm",
        "dpmptsp",
        "dinsos",
        "dukcapil",
        "kominfo",
    }
    command = [s for s in malang.subscriptions if s.agency == "kominfo"]
    assert {t for s in command for t in s.event_types} >= {
        "permit.issued",
        "kelurahan.document.issued",
        "population.death.registered",
        "social.recipient.updated",
    }
    assert all("nik" not in f for s in command for f in s.fields)


@pytest.mark.unit
def test_batu_has_32_opd_of_which_15_are_on_the_platform() -> None:
    batu = _topology("batu")
    opd = [a for a in batu.agencies if not a.kelurahan_code and not a.system]
    assert len(opd) == 32
    assert len([a for a in opd if a.onboarded]) == 15
    not_yet = {a.code for a in opd if not a.onboarded}
    assert {"dispendukcapil", "dinkes", "dpupr"} <= not_yet
    assert len([a for a in batu.agencies if a.code.startswith("desa-")]) == 19


@pytest.mark.unit
def test_yogyakarta_agencies_come_through_the_jogja_smart_service_gateway() -> None:
    jogja = _topology("yogyakarta")
    assert jogja.agency("kominfo").name == "Dinas Komunikasi Informatika dan Persandian"
    http = {c.name: c for c in jogja.connectors if c.kind == "http"}
    assert {"jss-permits", "jss-recipients"} <= set(http)


def _catalog(tmp_path: Path, topology: Topology) -> EventCatalog:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    dbmigrate.upgrade(url)
    store = SchemaStore(make_engine(url))
    register_all(store, topology, REPO_ROOT / "schemas")
    return EventCatalog(topology, SchemaResolver(store))


@pytest.mark.unit
@pytest.mark.parametrize("city", sorted(CITIES))
def test_simulated_agencies_send_events_the_city_accepts(tmp_path: Path, city: str) -> None:
    topology = _topology(city)
    catalog = _catalog(tmp_path, topology)
    data = CityData(topology, seed=11, residents_count=1500, employees_count=60)
    producers: Counter[str] = Counter()
    for i in range(600):
        event_type = data.simulated_types[i % len(data.simulated_types)]
        payload = data.payload(event_type, NOW)
        agency = data.producer_of(event_type, payload)
        assert topology.agency(agency).onboarded
        schema = catalog.latest_schema(event_type)
        etype = topology.event_type(event_type)
        record = RawRecord(
            topic=etype.topic("in"),
            partition=0,
            offset=i,
            key=str(payload[etype.key]).encode(),
            value=schema.encode(payload),
            headers=Envelope(type=event_type, source=f"/agency/{agency}", time=NOW).to_headers(),
        )
        validate_record(record, etype, catalog)  # raises InvalidMessage naming the field
        producers[agency] += 1
        for field in ("kelurahan_code", "issuing_kelurahan_code"):
            if payload.get(field):
                assert str(payload[field]).startswith(topology.region_code)
    if city == "kupang":  # BKN's register beside BKPP's SIMPEG
        assert producers["bkn"] > 0 and producers["bkpp"] > producers["bkn"]
    if city == "batu":  # Dispendukcapil is not on the platform yet: no deaths are sent
        assert "population.death.registered" not in data.simulated_types
        assert "dispendukcapil" not in producers
    else:
        assert "population.death.registered" in data.simulated_types


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("city", ["kupang", "malang", "batu", "yogyakarta"])
def test_demo_runs_each_city_end_to_end(city: str) -> None:
    env = dict(os.environ)
    env.pop("SIMPUL_DATABASE_URL", None)
    env.pop("SIMPUL_TOPOLOGY_FILE", None)
    # Random free ports, not the well-known defaults other demos on the machine may hold.
    from simpul.cli.services.broker import free_port

    for name in ("BROKER_PORT", "WORKER_WEB_PORT", "JOINS_WEB_PORT", "REGISTRY_PORT"):
        env[f"SIMPUL_{name}"] = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "simpul", "demo", "--city", city, "--duration", "4", "--rate", "40"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Simpul demo — {CITIES[city][0]}" in result.stdout
    assert "every received message is stored" in result.stdout
    assert "hash chains intact" in result.stdout
    assert "agency.out_of_scope" not in result.stdout


@pytest.mark.unit
def test_demo_refuses_an_unknown_city() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simpul", "demo", "--city", "atlantis"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no topology/atlantis.yaml; known: batu, kupang, malang, palu, yogyakarta" in (
        result.stderr
    )
