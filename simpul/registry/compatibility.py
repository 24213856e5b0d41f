"""Avro compatibility under Confluent's modes, decided by the avro package's own checker.

``avro.compatibility.ReaderWriterCompatibilityChecker`` (Apache Avro) answers "can a reader
with schema R read data written with schema W?". It honours reader field aliases (a field
renamed with ``"aliases": ["old_name"]`` still finds the old writer field), reader record
aliases, enum defaults and type promotion (int → long → float → double, string ↔ bytes).
This module only maps Confluent's modes onto reader/writer pairs and turns the checker's
JSON-pointer locations into field names a person can read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

import avro.errors
import avro.schema
import fastavro
import fastavro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from simpul import jsontext

Mode = Literal[
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
]
MODES: tuple[str, ...] = get_args(Mode)
DEFAULT_MODE: Mode = "BACKWARD"


class InvalidSchema(ValueError):
    """Schema text that is not valid JSON or not a valid Avro schema."""


def parse(text: str) -> avro.schema.Schema:
    """Parse Avro schema text, or raise `InvalidSchema` saying why."""
    try:
        definition = jsontext.loads(text)
    except ValueError as error:  # not JSON, or nested too deep
        raise InvalidSchema(f"schema: not valid JSON ({error})") from None
    try:
        parsed = avro.schema.parse(text)
        # What the registry accepts, the workers' codec (fastavro) must be able to use.
        fastavro.parse_schema(definition)
    except (avro.errors.AvroException, fastavro.schema.SchemaParseException) as error:
        raise InvalidSchema(f"schema: not a valid Avro schema ({error})") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
        # Both parsers index into the JSON and fail this way on odd shapes.
        raise InvalidSchema(
            f"schema: not a valid Avro schema ({type(error).__name__}: {error})"
        ) from None
    return parsed


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason a new schema may not follow an existing version.

    ``direction`` is "backward" (the new schema cannot read data written with the old one:
    consumers that upgrade break on old events, replays and the stored log) or "forward"
    (the old schema cannot read data written with the new one: consumers not yet upgraded
    break on new events).
    """

    direction: Literal["backward", "forward"]
    version: int  # 0: not a registered version (the file as committed at HEAD)
    kind: str
    location: str
    field: str
    detail: str

    def explain(self) -> str:
        old = f"version {self.version}" if self.version else "the committed (HEAD) schema"
        if self.direction == "backward":
            who = f"the new schema cannot read data written with {old}"
        else:
            who = f"readers still on {old} cannot read data written with the new one"
        detail = f" ({self.detail})" if self.detail and self.detail != self.field else ""
        return f"{self.field}: {_KIND_TEXT.get(self.kind, self.kind)}{detail}; {who}"


_KIND_TEXT = {
    "reader_field_missing_default_value": "field is missing on one side and has no default",
    "type_mismatch": "type changed incompatibly",
    "missing_enum_symbols": "enum symbols are missing on the reading side",
    "name_mismatch": "record/enum/fixed name changed without an alias",
    "fixed_size_mismatch": "fixed size changed",
    "missing_union_branch": "union lost a branch the other side uses",
}


def _field_path(definition: Any, location: str) -> str:
    """Turn ``/fields/3/type/fields/0`` into ``address.street`` by walking the reader's JSON."""
    names: list[str] = []
    node = definition
    parts = [p for p in location.split("/") if p]
    i = 0
    while i < len(parts):
        part = parts[i]
        if part == "fields" and i + 1 < len(parts) and isinstance(node, dict):
            try:
                node = node["fields"][int(parts[i + 1])]
            except (KeyError, IndexError, ValueError, TypeError):
                break
            names.append(str(node.get("name", "?")))
            i += 2
            continue
        if part == "type" and isinstance(node, dict):
            node = node.get("type")
        elif part.isdigit() and isinstance(node, list):
            node = node[int(part)] if int(part) < len(node) else None
        i += 1
    return ".".join(names) or "(record)"


def _kind(location: str, field: str, messages: set[str], kinds: set[str]) -> str:
    # The checker merges messages, kinds and locations into unordered sets, so pair them
    # back by what each location points at.
    leaf = field.rsplit(".", 1)[-1]
    if leaf in messages and "reader_field_missing_default_value" in kinds:
        return "reader_field_missing_default_value"
    for suffix, kind in (
        ("/symbols", "missing_enum_symbols"),
        ("/name", "name_mismatch"),
        ("/size", "fixed_size_mismatch"),
    ):
        if location.endswith(suffix) and kind in kinds:
            return kind
    rest = kinds - {"reader_field_missing_default_value", "missing_enum_symbols"}
    return sorted(rest)[0] if rest else sorted(kinds)[0] if kinds else "incompatible"


def _check_pair(
    reader_text: str, writer_text: str, direction: Literal["backward", "forward"], version: int
) -> list[Incompatibility]:
    reader, writer = parse(reader_text), parse(writer_text)
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]  # avro ships no annotations
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    definition = json.loads(reader_text)
    kinds = {k.value for k in result.incompatibilities}
    messages = set(result.messages)
    locations = sorted(result.locations - {"/"}) or ["/"]
    problems: list[Incompatibility] = []
    for location in locations:
        field = _field_path(definition, location)
        kind = _kind(location, field, messages, kinds)
        leaf = field.rsplit(".", 1)[-1]
        if kind == "reader_field_missing_default_value":
            detail = ""
        else:
            # Messages that are field names belong to missing-default problems elsewhere.
            other = sorted(m for m in messages if m not in _all_names(definition))
            detail = "; ".join(other) if len(other) <= 2 else other[0]
        if leaf == "(record)" and locations != ["/"]:
            continue
        problem = Incompatibility(direction, version, kind, location, field, detail)
        if problem not in problems:
            problems.append(problem)
    return problems


def _all_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("name"), str):
            names.add(node["name"])
        for value in node.values():
            names |= _all_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _all_names(value)
    return names


def check(new_text: str, versions: list[tuple[int, str]], mode: str) -> list[Incompatibility]:
    """Reasons ``new_text`` may not be registered after ``versions`` (oldest first, live ones
    only) under ``mode``; an empty list means compatible. Raises `InvalidSchema`."""
    parse(new_text)
    mode = mode.upper()
    if mode not in MODES:
        raise ValueError(f"compatibility: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "NONE" or not versions:
        return []
    against = versions if mode.endswith("_TRANSITIVE") else versions[-1:]
    base = mode.removesuffix("_TRANSITIVE")
    problems: list[Incompatibility] = []
    for version, old_text in against:
        if base in ("BACKWARD", "FULL"):
            problems += _check_pair(new_text, old_text, "backward", version)
        if base in ("FORWARD", "FULL"):
            problems += _check_pair(old_text, new_text, "forward", version)
    return problems
