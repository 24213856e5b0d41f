"""Nothing a producer sends stops the pipeline: named regressions for every crash found.

Each test is one message that once raised out of a batch (and so crash-looped the worker, since
the batch was never committed); now it is a dead letter with a stage, a code and a reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tracemalloc

import pytest

from simpul.catalog import EventCatalog
from simpul.envelope import MAX_ID_LENGTH, Envelope, parse_time
from simpul.errors import InvalidMessage
from simpul.settings import Settings
from simpul.signing import KeyRing
from streams.ingest.pipeline import (
    DedupWindow,
    Invalid,
    agency_label,
    check_record,
    forwardable_timestamp,
    process_batch,
)
from streams.ingest.service import _letter_row
from tests.support.records import recipient, record

pytestmark = pytest.mark.unit

TYPE = "social.recipient.updated"


def _with_header(rec, name: str, value: bytes | None):  # type: ignore[no-untyped-def]
    headers = [(k, v) for k, v in rec.headers if k != name]
    return dataclasses.replace(rec, headers=[*headers, (name, value)])


def _rejected(catalog: EventCatalog, rec) -> InvalidMessage:  # type: ignore[no-untyped-def]
    event_type = catalog.topology.event_type(TYPE)
    with pytest.raises(InvalidMessage) as caught:
        check_record(rec, event_type, catalog)
    return caught.value


def test_ce_time_that_overflows_in_utc_is_a_dead_letter(catalog: EventCatalog) -> None:
    # Issue 14: OverflowError: date value out of range, in astimezone(UTC).
    rec = _with_header(record(catalog, recipient()), "ce_time", b"9999-12-31T23:59:59-01:00")
    error = _rejected(catalog, rec)
    assert (error.stage, error.code) == ("headers", "header.time")
    assert "ce_time" in error.reason and "9999" in error.reason


def test_ce_time_before_year_one_in_utc_is_a_dead_letter(catalog: EventCatalog) -> None:
    rec = _with_header(record(catalog, recipient()), "ce_time", b"0001-01-01T00:00:00+01:00")
    assert _rejected(catalog, rec).code == "header.time"


def test_parse_time_raises_value_error_not_overflow() -> None:
    with pytest.raises(ValueError, match="years 1 to 9999"):
        parse_time("9999-12-31T23:59:59-01:00")


def test_kafka_timestamp_beyond_year_9999_is_a_dead_letter(catalog: EventCatalog) -> None:
    # Issue 14: datetime.fromtimestamp() raised ValueError/OverflowError outside validation.
    rec = dataclasses.replace(record(catalog, recipient()), timestamp=2**62 / 1000)
    error = _rejected(catalog, rec)
    assert (error.stage, error.code) == ("decode", "record.timestamp")
    assert error.reason.startswith("timestamp: Kafka record timestamp")
    assert forwardable_timestamp(rec) is None  # its dead letter gets the broker's time


def test_kafka_timestamp_missing_or_negative_is_no_published_time(catalog: EventCatalog) -> None:
    event_type = catalog.topology.event_type(TYPE)
    for stamp in (None, -0.001, 0.0):
        rec = dataclasses.replace(record(catalog, recipient()), timestamp=stamp)
        assert check_record(rec, event_type, catalog).published_at is None
        assert forwardable_timestamp(rec) is None


def test_too_long_ce_id_is_a_dead_letter(catalog: EventCatalog) -> None:
    rec = record(catalog, recipient(), ce_id="x" * (MAX_ID_LENGTH + 1))
    error = _rejected(catalog, rec)
    assert (error.stage, error.code) == ("headers", "header.id_too_long")
    assert error.reason == f"ce_id: {MAX_ID_LENGTH + 1} characters exceeds the limit of 255"
    ok = record(catalog, recipient(), ce_id="x" * MAX_ID_LENGTH)
    assert (
        check_record(ok, catalog.topology.event_type(TYPE), catalog).envelope.id
        == ok.headers[1][1].decode()
    )


def test_huge_header_value_is_a_dead_letter_with_a_bounded_reason(catalog: EventCatalog) -> None:
    rec = _with_header(record(catalog, recipient()), "ce_type", b"x" * 1_000_000)
    error = _rejected(catalog, rec)
    assert error.code == "header.too_long" and len(error.reason) < 100


def test_non_utf8_header_is_a_dead_letter(catalog: EventCatalog) -> None:
    rec = _with_header(record(catalog, recipient()), "ce_source", b"/agency/\xff\xfe")
    assert _rejected(catalog, rec).code == "header.encoding"


def test_unread_producer_headers_are_ignored_whatever_they_hold(catalog: EventCatalog) -> None:
    rec = record(catalog, recipient())
    rec = dataclasses.replace(
        rec, headers=[*rec.headers, ("x-trace", b"\xff" * 5000), ("\x00\udcff", None)]
    )
    assert check_record(rec, catalog.topology.event_type(TYPE), catalog).envelope.id


def test_huge_key_is_shortened_in_the_reason(catalog: EventCatalog) -> None:
    rec = dataclasses.replace(record(catalog, recipient()), key=b"7" * 500_000)
    error = _rejected(catalog, rec)
    assert error.code == "key.mismatch" and len(error.reason) < 300


def test_an_unforeseen_exception_becomes_a_dead_letter_without_the_payload(
    catalog: EventCatalog,
) -> None:
    class Exploding(EventCatalog):
        def scope_problem(self, agency, payload):  # type: ignore[no-untyped-def]
            raise KeyError(payload["nik"])  # the text would carry the NIK

    exploding = Exploding(catalog.topology, catalog.resolver)
    error = _rejected(exploding, record(catalog, recipient()))
    assert (error.stage, error.code) == ("validate", "unexpected.KeyError")
    assert "7271054507910003" not in error.reason
    assert "KeyError at test_robustness.py:" in error.reason


def test_outages_are_still_raised_so_the_batch_is_retried(catalog: EventCatalog) -> None:
    class Down(EventCatalog):
        def scope_problem(self, agency, payload):  # type: ignore[no-untyped-def]
            raise ConnectionError("registry down")

    with pytest.raises(ConnectionError):
        check_record(
            record(catalog, recipient()),
            catalog.topology.event_type(TYPE),
            Down(catalog.topology, catalog.resolver),
        )


def test_batch_of_every_poison_keeps_the_valid_events(catalog: EventCatalog) -> None:
    keyring = KeyRing(Settings().public_keys_path)  # the test keys every valid record is signed by
    event_type = catalog.topology.event_type(TYPE)
    good = record(catalog, recipient(), ce_id="good-1", offset=0)
    poisons = [
        _with_header(good, "ce_time", b"9999-12-31T23:59:59-01:00"),
        dataclasses.replace(good, timestamp=9e15),
        record(catalog, recipient(), ce_id="y" * 10_000),
        dataclasses.replace(good, value=None),
        dataclasses.replace(good, value=b"\x00\x7f\xff\xff\xff" + b"\x01" * 10),
        dataclasses.replace(good, headers=[]),
    ]
    poisons = [dataclasses.replace(p, offset=i + 1) for i, p in enumerate(poisons)]
    last = record(
        catalog,
        recipient(nik="7271010101900001", kelurahan_code="7271011004"),
        ce_id="good-2",
        offset=99,
    )
    outcome = process_batch([good, *poisons, last], event_type, catalog, DedupWindow(10), keyring)
    assert [a.envelope.id for a in outcome.accepted] == ["good-1", "good-2"]
    assert sorted(r.record.offset for r in outcome.rejected) == [1, 2, 3, 4, 5, 6]
    received_at = dt.datetime.now(dt.UTC)
    assert all(a.to_stored(event_type, received_at).ce_id for a in outcome.accepted)


def test_dead_letter_row_fits_its_columns_whatever_the_headers() -> None:
    # PostgreSQL refuses NUL in text and an over-long varchar: the letter's own row must fit.
    from streams.ingest.pipeline import RawRecord

    raw = RawRecord(
        "simpul.in.social.recipient.updated",
        0,
        7,
        None,
        b"",
        [("ce_id", b"a\x00b" * 200), ("ce_source", b"/agency/\x00evil")],
    )
    rejected = Invalid(raw, InvalidMessage("headers", "header.missing", "x\x00y" * 1000))

    class _Type:  # only .name is read
        name = TYPE

    row = _letter_row(_Type(), rejected, dt.datetime.now(dt.UTC))  # type: ignore[arg-type]
    assert row.ce_id is not None and len(row.ce_id) <= MAX_ID_LENGTH and "\x00" not in row.ce_id
    assert "\x00" not in row.reason and len(row.reason) <= 2000
    assert row.agency == "unknown" == agency_label(raw.headers)


def test_dedup_window_memory_stays_within_its_budget() -> None:
    budget = 4 * 1024 * 1024
    window = DedupWindow.within(budget)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(window.capacity * 3):  # three times over: generations rotate
        window.seen(0, f"{i:0255d}")  # the longest ce_id allowed
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert window.remembered(0) <= window.capacity
    assert window.remembered(0) >= window.capacity // 2
    assert used <= budget, f"{used} bytes for a budget of {budget}"


def test_envelope_round_trip_is_unchanged() -> None:
    envelope = Envelope(
        type=TYPE, source="/agency/dinsos", time=dt.datetime(2026, 11, 2, 1, 2, 3, tzinfo=dt.UTC)
    )
    assert Envelope.from_headers(envelope.to_headers()) == envelope


def test_dead_letter_of_a_message_near_the_size_limit_is_cut_to_fit() -> None:
    # A 1 MiB value the broker accepted, plus the dead-letter headers, exceeded the producer's
    # max_request_size: the send failed and the batch was never committed.
    from simpul.deadletter import DLQ_HEADERS, MAX_DEAD_LETTER_BYTES, fit_dead_letter

    value = b"\x00" + b"\xab" * 1_048_000
    headers = [("ce_id", b"x" * 200), ("x-big", b"y" * 600_000), ("simpul_dlq_reason", b"why")]
    key, cut, kept = fit_dead_letter(b"k" * 5000, value, headers)
    total = len(key or b"") + len(cut or b"") + sum(len(n) + len(v or b"") + 8 for n, v in kept)
    assert total <= MAX_DEAD_LETTER_BYTES
    assert cut is not None and value.startswith(cut) and len(cut) > 500_000
    assert dict(kept)["simpul_dlq_truncated"] == b"value=1048001;key=5000"
    assert dict(kept)["simpul_dlq_reason"] == b"why" and "x-big" not in dict(kept)
    assert "simpul_dlq_truncated" in DLQ_HEADERS  # a replay strips it
    small = fit_dead_letter(b"k", b"v", [("a", b"b")])
    assert small == (b"k", b"v", [("a", b"b")])


def test_registry_refuses_a_deeply_nested_schema_with_a_reason() -> None:
    # Found by tests/unit/test_fuzz_properties.py: RecursionError out of json.loads, a 500.
    from simpul.registry import compatibility

    with pytest.raises(compatibility.InvalidSchema, match="nested deeper than 32"):
        compatibility.parse('{"type":' * 3000 + '"int"' + "}" * 3000)


def test_registry_refuses_a_schema_the_workers_codec_cannot_use() -> None:
    from simpul.registry import compatibility

    with pytest.raises(compatibility.InvalidSchema, match="schema: not a valid Avro schema"):
        compatibility.parse('{"type": "record", "name": "R", "fields": [{"name": "a"}]}')


def test_file_drop_line_nested_too_deep_is_a_rejected_row() -> None:
    # Found by tests/unit/test_fuzz_properties.py: RecursionError out of the JSON Lines parser.
    import io

    from connectors.kinds.filedrop import read_rows

    content = ("[" * 5000 + "]" * 5000 + "\n" + '{"nik": "7271054507910003"}\n').encode()
    rows = list(read_rows(io.BytesIO(content), "jsonl", ","))
    assert rows[0] == (1, None, "line: nested deeper than 32 levels of objects and arrays")
    assert rows[1] == (2, {"nik": "7271054507910003"}, None)


def test_a_column_holding_deeply_nested_json_is_left_for_the_schema_check() -> None:
    from connectors.mapping import coerce

    text = "[" * 5000 + "]" * 5000
    assert coerce(text, {"type": "array", "items": "string"}) == text


def test_nul_in_a_header_or_a_payload_field_is_a_dead_letter(catalog: EventCatalog) -> None:
    # Found by the poison drill: PostgreSQL refused the row, but the event had already gone to
    # simpul.valid, and the fan-out's audit insert of its ce_id crashed the worker.
    rec = record(catalog, recipient(), ce_id="nul\x00id")
    error = _rejected(catalog, rec)
    assert (error.stage, error.code, error.reason) == (
        "headers",
        "header.nul",
        "ce_id: header contains a NUL character",
    )
    from streams.ingest.pipeline import nul_field

    assert nul_field({"business_name": "Toko\x00Kain"}) == "business_name"
    assert nul_field({"programs": ["PKH", "BP\x00NT"], "a": {"b": "ok"}}) == "programs.1"
    assert nul_field({"programs": ["PKH"], "n": 1, "when": None}) is None
    deep: dict[str, object] = {"note": "NUL\x00"}
    for _ in range(5000):  # deeper than Python's recursion limit: no RecursionError
        deep = {"n": [deep]}
    assert nul_field(deep) == "n.0." * 5000 + "note"
    clean: dict[str, object] = {"note": "ok"}
    for _ in range(5000):
        clean = {"n": [clean]}
    assert nul_field(clean) is None


def test_http_source_answer_to_a_client_that_gave_up_is_dropped() -> None:
    # Found by tests/unit/connectors/ingress/test_memory_bounds.py: set_result on the future
    # a timed-out request had cancelled raised InvalidStateError out of the connector's commit
    # (and its stop).
    from connectors.kinds.http import _Pending

    pending = _Pending([])
    pending.answer.cancel()
    pending.reply(202, {"ids": []})  # no InvalidStateError
    assert pending.answer.cancelled()
