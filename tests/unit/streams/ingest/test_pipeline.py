"""The validation path as pure functions: each rejection names the field and the reason."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from simpul.catalog import EventCatalog
from simpul.codec import frame
from simpul.errors import InvalidMessage
from simpul.settings import Settings
from simpul.signing import KeyRing
from streams.ingest.pipeline import DedupWindow, RawRecord, process_batch, validate_record
from streams.runtime.batching import Outgoing
from tests.support.records import NOW, recipient, record, signed

pytestmark = pytest.mark.unit


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing(Settings().public_keys_path)


def rejection(catalog: EventCatalog, rec: RawRecord) -> InvalidMessage:
    event_type = catalog.topology.event_type("social.recipient.updated")
    with pytest.raises(InvalidMessage) as caught:
        validate_record(rec, event_type, catalog)
    return caught.value


def test_valid_event_is_accepted_with_its_payload(catalog: EventCatalog) -> None:
    event_type = catalog.topology.event_type("social.recipient.updated")
    accepted = validate_record(record(catalog, recipient()), event_type, catalog)
    assert accepted.payload["nik"] == "7271054507910003"
    stored = accepted.to_stored(event_type, NOW)
    assert (stored.entity, stored.key, stored.source) == (
        "recipients",
        "7271054507910003",
        "/agency/dinsos",
    )


def test_invalid_nik_names_the_field(catalog: EventCatalog) -> None:
    error = rejection(
        catalog, record(catalog, recipient(nik="727105450791000"), key="727105450791000")
    )
    assert (error.stage, error.code) == ("validate", "identifier.nik")
    assert error.reason == "nik: expected 16 digits, got 15"


def test_agency_not_allowed_to_produce_is_refused(catalog: EventCatalog) -> None:
    error = rejection(catalog, record(catalog, recipient(), source="dpmptsp"))
    assert error.stage == "authorize"
    assert error.reason == "ce_source: agency dpmptsp may not produce social.recipient.updated"
    unknown = rejection(catalog, record(catalog, recipient(), source="bappeda"))
    assert unknown.reason == "ce_source: '/agency/bappeda' is not a declared agency"


def test_kelurahan_office_may_only_report_its_own_kelurahan(catalog: EventCatalog) -> None:
    event_type = catalog.topology.event_type("kelurahan.document.issued")
    payload = {
        "document_number": "470/00001/1002/2026",
        "document_type": "SKTM",
        "kelurahan_code": "7271051001",
        "resident_nik": "7271054507910003",
        "purpose": "keringanan biaya sekolah",
        "issued_at": NOW,
    }
    rec = record(
        catalog,
        payload,
        source="kel-ujuna",
        type_name=event_type.name,
        key=payload["document_number"],
    )
    with pytest.raises(InvalidMessage) as caught:
        validate_record(rec, event_type, catalog)
    assert caught.value.reason == (
        "kelurahan_code: kel-ujuna may only report for 7271021002, not 7271051001"
    )


def test_schema_of_another_type_and_unknown_schema_id(catalog: EventCatalog) -> None:
    rec = record(catalog, recipient())
    permit_id = catalog.latest_schema("permit.issued").id
    wrong = dataclasses.replace(rec, value=frame(permit_id, rec.value[5:]))
    unknown = dataclasses.replace(rec, value=frame(999, rec.value[5:]))
    error = rejection(catalog, wrong)
    assert error.code == "schema.wrong_subject"
    assert "is not a version of simpul.in.social.recipient.updated-value" in error.reason
    assert rejection(catalog, unknown).reason == "value: schema id 999 is not registered"


def test_key_must_match_the_payload(catalog: EventCatalog) -> None:
    error = rejection(catalog, record(catalog, recipient(), key="7271010101010001"))
    assert error.code == "key.mismatch" and error.reason.startswith("key: Kafka key")


def test_batch_drops_duplicates_and_keeps_going_after_poison(
    catalog: EventCatalog, keyring: KeyRing
) -> None:
    event_type = catalog.topology.event_type("social.recipient.updated")
    good = record(catalog, recipient(), ce_id="e-1", offset=0)
    copy = record(catalog, recipient(), ce_id="e-1", offset=1)
    poison = signed(
        dataclasses.replace(good, offset=2, value=b"\x00\x00\x00\x00\x05\xff\xff\xff"), "dinsos"
    )
    after = record(
        catalog,
        recipient(nik="7271010101900001", kelurahan_code="7271011004"),
        ce_id="e-2",
        offset=3,
    )
    outcome = process_batch(
        [good, copy, poison, after], event_type, catalog, DedupWindow(10), keyring
    )
    assert [a.envelope.id for a in outcome.accepted] == ["e-1", "e-2"]
    assert [d.record.offset for d in outcome.duplicates] == [1]
    assert [(r.record.offset, r.error.stage) for r in outcome.rejected] == [(2, "decode")]


def test_dedup_window_is_bounded_per_partition() -> None:
    window = DedupWindow(4)  # two generations of two ids
    assert not window.seen(0, "a") and not window.seen(0, "b") and window.seen(0, "a")
    assert not window.seen(1, "a")  # another partition has its own window
    window.seen(0, "c")  # a new generation: a and b are the previous one, still remembered
    assert window.seen(0, "b")
    window.seen(0, "d")
    window.seen(0, "e")  # another generation: a and b are forgotten
    assert window.remembered(0) <= 4
    assert not window.seen(0, "a")
    window.forget([0])
    assert not window.seen(0, "c")


def test_forwarded_record_keeps_its_timestamp_in_milliseconds() -> None:
    # Seconds handed to the producer dated forwarded events and dead letters in January 1970,
    # and Apache Kafka's 7-day time retention deleted them within minutes.
    sent_at = dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC).timestamp() + 0.25
    outgoing = Outgoing("simpul.valid.permit.issued", b"k", b"v", [], sent_at, b"k")
    assert outgoing.timestamp_ms == 1_796_113_800_250
    assert dataclasses.replace(outgoing, timestamp=None).timestamp_ms is None


def test_problem_is_its_sentence_with_the_field_kept_apart() -> None:
    from simpul.errors import Problem
    from simpul.validation import check_identifiers

    (problem,) = check_identifiers({"nik": "nik"}, {"nik": "727101520388000"})
    assert isinstance(problem, Problem)
    assert problem.field == "nik" and problem == f"nik: {problem.reason}"
    assert "16 digits" in problem.reason
