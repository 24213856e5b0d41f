"""Property-based fuzzing (hypothesis): whatever a producer sends, every entry point answers.

The property everywhere is totality: the worker's check of a record returns an `Accepted` or
raises `InvalidMessage` with a stage, a code and a reason; the file-drop parser yields rows
or problems; connector row mapping returns a payload; the registry's schema parsing refuses
with an error naming the problem; the ingress answers with a 4xx, never a 500.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.kinds.filedrop import read_rows
from connectors.mapping import map_payload, missing_fields
from simpul import jsontext
from simpul.catalog import EventCatalog
from simpul.codec import AvroSchema, frame
from simpul.envelope import REQUIRED, Envelope
from simpul.errors import InvalidMessage
from streams.ingest.pipeline import RawRecord, check_record
from tests.support.records import recipient, record

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore::avro.errors.IgnoredLogicalType"),
]

TYPE = "social.recipient.updated"
EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

header_names = st.one_of(
    st.sampled_from([*REQUIRED, "content-type", "simpul_dlq_reason", "traceparent"]),
    st.text(max_size=30),
)
header_values = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"9999-12-31T23:59:59-01:00",
            b"0001-01-01T00:00:00+01:00",
            b"2026-11-02T08:00:00+08:00",
            b"2026-13-45T99:99:99Z",
            b"/agency/dinsos",
            b"/agency/",
            b"social.recipient.updated",
            b"1.0",
            b"application/avro",
            b"\xff\xfe",
            b"x" * 2000,
        ]
    ),
)
timestamps = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda ms: ms / 1000),
    st.sampled_from([9e15, 2**62 / 1000, -1 / 1000, 0.0]),
)


def _assert_total(catalog: EventCatalog, rec: RawRecord) -> None:
    event_type = catalog.topology.event_type(TYPE)
    try:
        accepted = check_record(rec, event_type, catalog)
    except InvalidMessage as error:
        assert error.stage and error.code and error.reason
        assert len(error.reason) < 5000
        return
    stored = accepted.to_stored(event_type, dt.datetime.now(dt.UTC))
    assert stored.ce_id == accepted.envelope.id


@EXAMPLES
@given(
    replace=st.dictionaries(st.sampled_from([*REQUIRED, "content-type"]), header_values),
    changes=st.lists(st.tuples(header_names, header_values), max_size=8),
    drop=st.lists(st.sampled_from([*REQUIRED, "content-type"]), max_size=3),
    repeat=st.booleans(),
)
def test_worker_check_is_total_over_headers(
    catalog: EventCatalog,
    replace: dict[str, bytes | None],
    changes: list[tuple[str, bytes | None]],
    drop: list[str],
    repeat: bool,
) -> None:
    base = record(catalog, recipient())
    headers = [(k, replace.get(k, v)) for k, v in base.headers if k not in drop]
    headers = [*changes, *headers] if repeat else [*headers, *changes]
    _assert_total(catalog, dataclasses.replace(base, headers=headers))


@EXAMPLES
@given(
    key=st.one_of(st.none(), st.binary(max_size=40), st.just(b"7271054507910003")),
    value=st.one_of(
        st.none(),
        st.binary(max_size=300),
        st.integers(0, 2**32 - 1).flatmap(
            lambda sid: st.binary(max_size=200).map(lambda body: frame(sid, body))
        ),
    ),
    timestamp=timestamps,
)
def test_worker_check_is_total_over_keys_values_and_timestamps(
    catalog: EventCatalog, key: bytes | None, value: bytes | None, timestamp: float | None
) -> None:
    base = record(catalog, recipient())
    _assert_total(catalog, dataclasses.replace(base, key=key, value=value, timestamp=timestamp))


@EXAMPLES
@given(cut=st.integers(0, 200), extra=st.binary(max_size=20), timestamp=timestamps)
def test_worker_check_is_total_over_truncated_and_padded_values(
    catalog: EventCatalog, cut: int, extra: bytes, timestamp: float | None
) -> None:
    base = record(catalog, recipient())
    assert base.value is not None
    value = base.value[: len(base.value) - cut] + extra
    _assert_total(catalog, dataclasses.replace(base, value=value, timestamp=timestamp))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.integers(1, 4_000_000), schema_id=st.sampled_from([1, 2, 3, 99, 2**31 - 1]))
def test_worker_check_is_total_over_huge_values_and_wrong_schema_ids(
    catalog: EventCatalog, size: int, schema_id: int
) -> None:
    base = record(catalog, recipient())
    assert base.value is not None
    value = frame(schema_id, base.value[5:] + b"\x02" * size)
    _assert_total(catalog, dataclasses.replace(base, value=value))


@EXAMPLES
@given(
    payload=st.fixed_dictionaries(
        {},
        optional={
            "nik": st.one_of(st.text(max_size=20), st.from_regex(r"\A[0-9]{16}\Z")),
            "programs": st.lists(st.text(max_size=8), max_size=4),
            "disability_category": st.one_of(st.none(), st.text(max_size=20)),
            "kelurahan_code": st.one_of(st.text(max_size=12), st.just("7271051001")),
            "status": st.text(max_size=10),
            "updated_at": st.datetimes(timezones=st.just(dt.UTC)),
        },
    )
)
def test_worker_check_is_total_over_payloads_that_encode(
    catalog: EventCatalog, payload: dict[str, Any]
) -> None:
    full = {**recipient(), **payload}
    schema = catalog.latest_schema(TYPE)
    try:
        value = schema.encode(full)
    except (ValueError, TypeError, OverflowError, AttributeError):
        return  # the publisher refuses it before Kafka
    base = record(catalog, recipient())
    _assert_total(catalog, dataclasses.replace(base, value=value, key=str(full["nik"]).encode()))


def test_every_header_check_reason_names_its_header(catalog: EventCatalog) -> None:
    envelope = Envelope(type=TYPE, source="/agency/dinsos")
    for name in REQUIRED:
        headers = [(k, v) for k, v in envelope.to_headers() if k != name]
        with pytest.raises(InvalidMessage) as caught:
            Envelope.from_headers(headers)
        assert caught.value.reason.startswith(name)


# --- the file-drop parser and connector row mapping --------------------------------------------

_DEFINITION = json.loads(
    json.dumps(
        {
            "type": "record",
            "name": "Doc",
            "fields": [
                {"name": "nik", "type": "string"},
                {"name": "n", "type": ["null", "long"], "default": None},
                {"name": "ok", "type": "boolean"},
                {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "day", "type": {"type": "int", "logicalType": "date"}},
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "score", "type": "double"},
            ],
        }
    )
)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["9999-12-31T23:59:59-01:00", "[[[[1]]]]", "9" * 5000, " 12 ", "1e400"]),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@EXAMPLES
@given(content=st.binary(max_size=2000), fmt=st.sampled_from(["csv", "jsonl"]))
def test_file_drop_parser_is_total_over_bytes(content: bytes, fmt: str) -> None:
    for line, row, problem in read_rows(io.BytesIO(content), fmt, ","):
        assert line >= 1 and (row is None) != (problem is None)


@EXAMPLES
@given(
    lines=st.lists(
        st.one_of(
            json_values.map(lambda v: json.dumps(v)),
            st.text(max_size=50),
            st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
        ),
        max_size=10,
    ),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
)
def test_file_drop_parser_is_total_over_text_lines(lines: list[str], delimiter: str) -> None:
    content = "\n".join(lines).encode("utf-8", "surrogatepass")
    for fmt in ("csv", "jsonl"):
        rows = list(read_rows(io.BytesIO(content), fmt, delimiter))
        assert all((row is None) != (problem is None) for _, row, problem in rows)


@EXAMPLES
@given(
    data=st.dictionaries(
        st.sampled_from(["nik", "n", "ok", "when", "day", "tags", "score", "other", "a.b"]),
        json_values,
    ),
    mapping=st.dictionaries(
        st.sampled_from(["nik", "n", "when"]), st.sampled_from(["a.b", "other", "x.y.z"])
    ),
)
def test_connector_row_mapping_is_total(data: dict[str, Any], mapping: dict[str, str]) -> None:
    payload = map_payload(data, mapping, _DEFINITION)
    assert set(payload) <= {f["name"] for f in _DEFINITION["fields"]}
    assert isinstance(missing_fields(_DEFINITION, payload, mapping), list)
    schema = AvroSchema.from_text(1, json.dumps(_DEFINITION))
    from simpul.validation import check_avro

    assert isinstance(check_avro(schema, payload), list)


@EXAMPLES
@given(text=st.text(max_size=200) | json_values.map(json.dumps))
def test_bounded_json_loader_raises_only_value_error(text: str) -> None:
    try:
        value = jsontext.loads(text)
    except ValueError:
        return
    assert jsontext.depth(value) <= jsontext.MAX_DEPTH


# --- the registry's schema parsing --------------------------------------------------------------

avro_types = st.recursive(
    st.sampled_from(["null", "boolean", "int", "long", "float", "double", "bytes", "string"])
    | st.text(string.ascii_letters, max_size=6),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.fixed_dictionaries({"type": st.just("array"), "items": children}),
        st.fixed_dictionaries(
            {
                "type": st.just("record"),
                "name": st.text(string.ascii_letters, min_size=1, max_size=6),
                "fields": st.lists(
                    st.fixed_dictionaries(
                        {"name": st.text(string.ascii_letters, max_size=6), "type": children}
                    ),
                    max_size=3,
                ),
            }
        ),
        st.fixed_dictionaries({"type": children, "logicalType": st.text(max_size=12)}),
    ),
    max_leaves=10,
)


@EXAMPLES
@given(
    schema=st.one_of(
        avro_types.map(json.dumps),
        st.text(max_size=100),
        st.integers(1, 3000).map(lambda n: '{"type":' * n + '"int"' + "}" * n),
    )
)
def test_registry_schema_parsing_refuses_with_a_reason(schema: str) -> None:
    from simpul.registry import compatibility

    try:
        compatibility.parse(schema)
    except compatibility.InvalidSchema as error:
        assert str(error).startswith("schema: not ")
        return
    AvroSchema.from_text(1, schema)  # what the registry accepts, the codec can use
