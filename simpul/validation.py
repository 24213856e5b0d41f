"""Payload checks beyond Avro types: identifiers declared in the schema with
``"simpul.identifier": "<kind>"``, and the payload-to-envelope consistency rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate as avro_validate

from simpul.codec import AvroSchema
from simpul.errors import Problem
from simpul.identifiers import CHECKS


def identifier_fields(definition: Mapping[str, Any]) -> dict[str, str]:
    """Top-level field name -> identifier kind, as declared in the schema."""
    found: dict[str, str] = {}
    for item in definition.get("fields", []):
        kind = item.get("simpul.identifier")
        if kind is not None:
            if kind not in CHECKS:
                raise ValueError(f"field {item['name']}: unknown simpul.identifier {kind!r}")
            found[item["name"]] = kind
    return found


def check_identifiers(fields: Mapping[str, str], payload: Mapping[str, Any]) -> list[Problem]:
    """Every identifier problem in the payload, as ``field: reason``."""
    problems: list[Problem] = []
    for name, kind in fields.items():
        value = payload.get(name)
        if value is None:
            continue  # nullability is Avro's business
        if reason := CHECKS[kind](value):
            problems.append(Problem(name, reason))
    return problems


def check_avro(schema: AvroSchema, payload: Mapping[str, Any]) -> list[Problem]:
    """Avro type problems, each naming the field, before anything is encoded."""
    if not isinstance(payload, Mapping):
        return [Problem("(payload)", f"expected an object, got {type(payload).__name__}")]
    problems: list[Problem] = []
    for name in sorted(set(payload) - schema.field_names):
        problems.append(Problem(name, f"not a field of {schema.name}"))
    datum = payload if isinstance(payload, dict) else dict(payload)  # fastavro reads dicts
    # The yes-or-no check first: with raise_errors=True fastavro raises, and formats as JSON,
    # an error for every union branch a value does not take ("null" of ["null", "string"]
    # for each string): 9x the cost of the answer, paid for every valid derived event.
    if avro_validate(datum, schema.parsed, raise_errors=False):
        return problems
    try:
        avro_validate(datum, schema.parsed, raise_errors=True)
    except AvroValidationError as error:
        for message in error.errors:
            problems.append(_field_first(str(message), schema.name))
    else:  # not seen: the two modes of fastavro disagree
        problems.append(Problem("(payload)", f"does not match {schema.name}"))
    return problems


def _field_first(message: str, record_name: str) -> Problem:
    # fastavro says "simpul.hr.v1.EmployeeUpdated.nip is <15> of type <class 'int'> must be string"
    head, sep, rest = message.partition(" is ")
    if sep and "." in head:
        path = head.split(f"{record_name}.", 1)[-1]
        return Problem(path, f"is {rest}")
    return Problem.of(message)
