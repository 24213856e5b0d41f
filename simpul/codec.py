"""Avro binary in the Confluent wire format: byte 0x00, 4-byte big-endian schema id, body."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.types import Schema

from simpul.errors import InvalidMessage

MAGIC = 0
_HEADER = struct.Struct(">bI")


def frame(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, schema_id) + body


def unframe(data: bytes | None) -> tuple[int, memoryview]:
    """Split a framed value into schema id and Avro body, or raise `InvalidMessage`."""
    if data is None:
        raise InvalidMessage("decode", "wire.empty", "value: message has no value (tombstone)")
    if len(data) < _HEADER.size:
        raise InvalidMessage(
            "decode", "wire.short", f"value: {len(data)} bytes is shorter than the 5-byte header"
        )
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise InvalidMessage(
            "decode", "wire.magic", f"value: magic byte {magic} is not 0 (not Confluent framing)"
        )
    return schema_id, memoryview(data)[_HEADER.size :]


def normalize(schema_text: str) -> str:
    """Whitespace- and key-order-insensitive JSON form, keeping docs and custom attributes.

    Avro's Parsing Canonical Form would drop ``doc`` and the ``simpul.identifier`` attributes
    that validation reads, so it is used for fingerprints only by the registry.
    """
    return json.dumps(json.loads(schema_text), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """One registered schema: its id, its JSON text and the parsed form fastavro uses."""

    id: int
    text: str
    parsed: Schema
    #: The record's full name and its top-level fields, read once (checks ask per event).
    name: str = ""
    field_names: frozenset[str] = frozenset()

    @classmethod
    def from_text(cls, schema_id: int, text: str) -> AvroSchema:
        definition = json.loads(text)
        record = definition if isinstance(definition, dict) else {}
        fields = record.get("fields") or ()
        return cls(
            schema_id,
            text,
            fastavro.parse_schema(definition),
            str(record.get("name", "")),
            frozenset(f["name"] for f in fields if isinstance(f, dict) and "name" in f),
        )

    @property
    def definition(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text)
        return parsed

    def encode(self, payload: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.parsed, payload)
        return frame(self.id, buffer.getvalue())

    def decode_body(self, body: memoryview | bytes) -> dict[str, Any]:
        buffer = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buffer, self.parsed, None)
        except Exception as error:  # random bytes can fail fastavro in many ways
            raise InvalidMessage(
                "decode",
                "avro.body",
                f"value: body does not decode with schema id {self.id} "
                f"({type(error).__name__}: {error})",
            ) from None
        if buffer.tell() != len(body):
            raise InvalidMessage(
                "decode",
                "avro.trailing",
                f"value: {len(body) - buffer.tell()} bytes left after the record "
                f"(schema id {self.id} does not match the body)",
            )
        if not isinstance(record, dict):
            raise InvalidMessage("decode", "avro.not_record", "value: body is not an Avro record")
        return record
