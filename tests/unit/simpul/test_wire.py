"""CloudEvents headers and the Confluent wire format, including malformed input."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from simpul.codec import AvroSchema, frame, normalize, unframe
from simpul.envelope import Envelope
from simpul.errors import InvalidMessage
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

SCHEMAS = REPO_ROOT / "schemas"


def test_envelope_round_trips_through_headers() -> None:
    when = dt.datetime(2026, 11, 23, 2, 30, 0, 123000, tzinfo=dt.UTC)
    sent = Envelope(type="permit.issued", source="/agency/dpmptsp", time=when)
    headers = sent.to_headers()
    assert dict(headers)["ce_time"] == b"2026-11-23T02:30:00.123Z"
    assert dict(headers)["content-type"] == b"application/avro"
    assert Envelope.from_headers(headers) == sent
    assert sent.agency == "dpmptsp"


@pytest.mark.parametrize(
    ("drop", "replace", "expected"),
    [
        ("ce_id", None, "ce_id: header missing"),
        ("ce_source", None, "ce_source: header missing"),
        (None, ("ce_time", b"yesterday"), "ce_time: 'yesterday' is not an RFC 3339 timestamp"),
        (None, ("ce_source", b"dpmptsp"), "ce_source: 'dpmptsp' is not of the form /agency/<code>"),
        (None, ("ce_specversion", b"0.3"), "ce_specversion: '0.3' is not 1.0"),
        (None, ("content-type", b"application/json"), "content-type: 'application/json'"),
        (None, ("ce_id", b"\xff\xfe"), "ce_id: header is not UTF-8"),
    ],
)
def test_bad_headers_name_the_header(drop, replace, expected) -> None:  # type: ignore[no-untyped-def]
    headers = Envelope(type="permit.issued", source="/agency/dpmptsp").to_headers()
    headers = [(k, v) for k, v in headers if k != drop]
    if replace:
        headers = [(k, replace[1] if k == replace[0] else v) for k, v in headers]
    with pytest.raises(InvalidMessage) as caught:
        Envelope.from_headers(headers)
    assert caught.value.stage == "headers"
    assert expected in caught.value.reason


def _permit_schema() -> AvroSchema:
    return AvroSchema.from_text(7, (SCHEMAS / "permit.issued.v1.avsc").read_text())


PERMIT = {
    "permit_number": "503/00001/DPMPTSP/2026",
    "permit_type": "PBG",
    "nib": "9120001234567",
    "applicant_nik": "7271015203880002",
    "business_name": "Warung Kaledo Lasadindi",
    "kelurahan_code": "7271021002",
    "issued_at": dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC),
    "valid_until": dt.date(2031, 11, 1),
    "signature_digest": "ab" * 32,
}


def test_avro_round_trip_in_confluent_framing() -> None:
    schema = _permit_schema()
    data = schema.encode(PERMIT)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 7
    schema_id, body = unframe(data)
    assert schema_id == 7
    assert schema.decode_body(body) == PERMIT


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, "wire.empty"),
        (b"\x00\x00", "wire.short"),
        (b"\x01\x00\x00\x00\x07abc", "wire.magic"),
    ],
)
def test_bad_framing_is_refused(data: bytes | None, code: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        unframe(data)
    assert caught.value.code == code and caught.value.reason.startswith("value:")


def test_truncated_and_padded_bodies_are_refused() -> None:
    schema = _permit_schema()
    _, body = unframe(schema.encode(PERMIT))
    with pytest.raises(InvalidMessage) as truncated:
        schema.decode_body(bytes(body)[:-20])
    assert truncated.value.code == "avro.body"
    with pytest.raises(InvalidMessage) as padded:
        schema.decode_body(bytes(body) + b"\x00\x01")
    assert padded.value.code == "avro.trailing"
    assert frame(7, bytes(body))[5:] == bytes(body)


def test_normalisation_ignores_whitespace_and_key_order() -> None:
    text = (SCHEMAS / "permit.issued.v1.avsc").read_text()
    reordered = json.dumps(dict(reversed(list(json.loads(text).items()))), indent=4)
    assert normalize(text) == normalize(reordered)


def test_every_schema_field_is_documented() -> None:
    for path in SCHEMAS.glob("*.avsc"):
        definition = json.loads(path.read_text())
        assert definition.get("doc"), path.name
        for item in definition["fields"]:
            assert item.get("doc"), f"{path.name}: field {item['name']} has no doc"
        AvroSchema.from_text(1, path.read_text())  # parses
