"""Letters issued at any kelurahan office (Kota Kupang's Soda Molek): the letter names the
issuing office's kelurahan apart from the resident's; the topology says whether it is allowed;
subscriptions follow the resident's kelurahan and the issuing office gets the credit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from simpul import dbmigrate
from simpul.catalog import EventCatalog
from simpul.citydata import CityData
from simpul.db import make_engine
from simpul.envelope import Envelope
from simpul.errors import InvalidMessage
from simpul.registry.resolver import SchemaResolver
from simpul.registry.store import SchemaStore, register_all
from simpul.topology.model import Topology, load_topology
from streams.ingest.pipeline import RawRecord, validate_record
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
# Kelurahan Oepura (Maulafa, 53.71.02) issues for a resident of Kelurahan Oebobo (Oebobo,
# 53.71.04); the resident is generated (born 4 March 1988, a woman: day 44).
OEPURA, OEBOBO = "5371021001", "5371041001"
RESIDENT_NIK = "5371044403880007"


def _catalog(tmp_path: Path, topology: Topology) -> EventCatalog:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    dbmigrate.upgrade(url)
    store = SchemaStore(make_engine(url))
    register_all(store, topology, REPO_ROOT / "schemas")
    return EventCatalog(topology, SchemaResolver(store))


@pytest.fixture(scope="module")
def kupang() -> Topology:
    return load_topology(REPO_ROOT / "topology" / "kupang.yaml")


def _letter(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "document_number": "470/00031/1001/2026",
        "document_type": "DOMISILI",
        "kelurahan_code": OEBOBO,
        "resident_nik": RESIDENT_NIK,
        "purpose": "pembukaan rekening bank",
        "issued_at": NOW,
        "issuing_kelurahan_code": OEPURA,
    }
    payload.update(changes)
    return payload


def _validate(catalog: EventCatalog, payload: dict[str, object], source: str) -> object:
    schema = catalog.latest_schema("kelurahan.document.issued")
    envelope = Envelope(type="kelurahan.document.issued", source=f"/agency/{source}", time=NOW)
    record = RawRecord(
        topic="simpul.in.kelurahan.document.issued",
        partition=0,
        offset=0,
        key=str(payload["document_number"]).encode(),
        value=schema.encode(payload),
        headers=envelope.to_headers(),
    )
    return validate_record(record, catalog.topology.event_type(record.topic[10:]), catalog)


def _office(topology: Topology, kelurahan_code: str) -> str:
    return next(a.code for a in topology.agencies if a.kelurahan_code == kelurahan_code)


def test_kupang_topology_lets_any_office_issue_for_any_resident(kupang: Topology) -> None:
    assert kupang.offices_issue_for_any_kelurahan
    assert not load_topology(REPO_ROOT / "topology" / "palu.yaml").offices_issue_for_any_kelurahan
    assert len([a for a in kupang.agencies if a.kelurahan_code]) == 51


def test_a_letter_for_a_resident_of_another_kelurahan_is_accepted_in_kupang(
    tmp_path: Path, kupang: Topology
) -> None:
    catalog = _catalog(tmp_path, kupang)
    accepted = _validate(catalog, _letter(), _office(kupang, OEPURA))
    assert accepted.payload["kelurahan_code"] == OEBOBO  # type: ignore[attr-defined]
    assert accepted.payload["issuing_kelurahan_code"] == OEPURA  # type: ignore[attr-defined]


def test_an_office_may_not_claim_another_office_issued_it(tmp_path: Path, kupang: Topology) -> None:
    catalog = _catalog(tmp_path, kupang)
    with pytest.raises(InvalidMessage) as caught:
        _validate(catalog, _letter(), _office(kupang, OEBOBO))
    assert caught.value.stage == "authorize"
    assert caught.value.reason == (
        f"issuing_kelurahan_code: kel-oebobo issues for {OEBOBO}, not {OEPURA}"
    )


def test_a_cross_kelurahan_letter_must_name_the_issuing_office(
    tmp_path: Path, kupang: Topology
) -> None:
    catalog = _catalog(tmp_path, kupang)
    with pytest.raises(InvalidMessage) as caught:
        _validate(catalog, _letter(issuing_kelurahan_code=None), _office(kupang, OEPURA))
    assert caught.value.reason == (
        f"issuing_kelurahan_code: required when kel-oepura ({OEPURA}) issues for a resident "
        f"of {OEBOBO}"
    )


def test_where_the_topology_does_not_allow_it_the_letter_is_refused(
    tmp_path: Path, kupang: Topology
) -> None:
    strict = kupang.model_copy(update={"offices_issue_for_any_kelurahan": False})
    catalog = _catalog(tmp_path, strict)
    with pytest.raises(InvalidMessage) as caught:
        _validate(catalog, _letter(), _office(kupang, OEPURA))
    assert caught.value.reason == (
        f"kelurahan_code: kel-oepura may only report for {OEPURA}, not {OEBOBO}"
    )


def test_a_letter_without_the_new_field_still_validates(tmp_path: Path, kupang: Topology) -> None:
    catalog = _catalog(tmp_path, kupang)
    old = _letter(kelurahan_code=OEPURA)
    del old["issuing_kelurahan_code"]
    accepted = _validate(catalog, old, _office(kupang, OEPURA))
    assert accepted.payload["issuing_kelurahan_code"] is None  # type: ignore[attr-defined]


def test_subscription_filters_follow_the_residents_kelurahan(kupang: Topology) -> None:
    office = _office(kupang, OEBOBO)
    subscription = next(s for s in kupang.subscriptions if s.agency == "kel-namosain")
    namosain = "5371011001"
    # kel-namosain's register follows its residents, wherever their letter was printed.
    for_resident = _letter(kelurahan_code=namosain, document_type="PINDAH")
    printed_there = _letter(kelurahan_code=OEBOBO, issuing_kelurahan_code=namosain)
    assert subscription.matches(for_resident | {"issuing_kelurahan_code": OEBOBO})
    assert not subscription.matches(printed_there | {"document_type": "PINDAH"})
    assert office == "kel-oebobo"


def test_the_simulator_credits_the_issuing_office(kupang: Topology) -> None:
    data = CityData(kupang, seed=5371, residents_count=2000, employees_count=10)
    letters = [data.payload("kelurahan.document.issued", NOW) for _ in range(400)]
    crossing = [p for p in letters if p.get("issuing_kelurahan_code")]
    assert 60 < len(crossing) < 200
    for payload in crossing:
        assert payload["issuing_kelurahan_code"] != payload["kelurahan_code"]
        producer = data.producer_of("kelurahan.document.issued", payload)
        assert kupang.agency(producer).kelurahan_code == payload["issuing_kelurahan_code"]
        resident = next(r for r in data.residents if r.nik == payload["resident_nik"])
        assert resident.kelurahan_code == payload["kelurahan_code"]


def test_the_sktm_join_follows_the_residents_kelurahan(kupang: Topology) -> None:
    from streams.joins.state import Effects, JoinPartition
    from tests.support.join_events import event, logic

    join, state, effects = logic(kupang, "sktm-verification", 60), JoinPartition(), Effects()
    join.on_left(state, event("kelurahan.document.issued", _letter(document_type="SKTM")), effects)
    join.expire(state, 60.0, effects)  # no DTKS entry for the resident: Dinsos verifies
    (out,) = effects.derived
    assert out.payload["kelurahan_code"] == OEBOBO  # where the resident lives, not Oepura
    assert out.payload["nik"] == RESIDENT_NIK
