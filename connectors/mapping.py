"""From a source row to an event payload: field mapping, then coercion by the Avro schema.

Agency systems hand over text (CSV), JSON and database types; the schema says what each field
must be. Coercion only converts what is unambiguous (``"2026-11-02T08:00:00+08:00"`` to a
timestamp, ``"12"`` to an int, ``""`` to null for a nullable field); anything else is left as it
is, and the schema check that follows names the field and the reason.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any

from simpul import jsontext
from simpul.errors import Problem

_MISSING = object()


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """``data[path]``, or a dotted path into nested objects (``after.nip``)."""
    if path in data:
        return data[path]
    current: Any = data
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


def map_payload(
    data: Mapping[str, Any], mapping: Mapping[str, str], definition: Mapping[str, Any]
) -> dict[str, Any]:
    """The schema's fields taken from ``data`` (``mapping`` renames: field -> source column)."""
    payload: dict[str, Any] = {}
    for item in definition["fields"]:
        name = item["name"]
        value = lookup(data, mapping.get(name, name))
        if value is _MISSING:
            continue
        payload[name] = coerce(value, item["type"])
    return payload


def coerce(value: Any, avro_type: Any) -> Any:
    if isinstance(avro_type, list):  # union
        if value is None or (value == "" and "null" in avro_type):
            return None
        for branch in avro_type:
            if branch != "null":
                converted = coerce(value, branch)
                if converted is not value:
                    return converted
        return value
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical in ("timestamp-millis", "timestamp-micros"):
            return _timestamp(value)
        if logical == "date":
            return _date(value)
        if avro_type.get("type") == "array":
            return _array(value, avro_type.get("items"))
        return coerce(value, avro_type.get("type"))
    if value is None:
        return value
    try:
        if avro_type in ("int", "long") and isinstance(value, str | decimal.Decimal | float):
            if isinstance(value, str):
                value = value.strip()
                return int(value) if value.lstrip("-").isdigit() else value
            return int(value) if value == int(value) else value
        if avro_type in ("float", "double") and isinstance(value, str | decimal.Decimal | int):
            return float(value) if not isinstance(value, bool) else value
        if avro_type == "boolean" and isinstance(value, str):
            lowered = value.strip().lower()
            return {"true": True, "1": True, "false": False, "0": False}.get(lowered, value)
        if avro_type == "string":
            if isinstance(value, str):
                return value.strip()
            if isinstance(value, int | decimal.Decimal) and not isinstance(value, bool):
                return str(value)
            if isinstance(value, dt.datetime | dt.date):
                return value.isoformat()
    except (ValueError, decimal.InvalidOperation):
        return value
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, str) and value.strip():
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        # A timestamp without offset is read as UTC; declare offsets in the source to be sure.
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return value


def _date(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str) and value.strip():
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            return value
    return value


def _array(value: Any, items: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = jsontext.loads(text)
            except ValueError:  # not JSON, or nested too deep: the schema check names it
                return value
        else:
            value = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [coerce(v, items) for v in value]
    return value


def missing_fields(
    definition: Mapping[str, Any], payload: Mapping[str, Any], mapping: Mapping[str, str]
) -> list[Problem]:
    """Required fields (no default) absent from the payload, naming the source column."""
    problems: list[Problem] = []
    for item in definition["fields"]:
        name = item["name"]
        if name not in payload and "default" not in item:
            source = mapping.get(name, name)
            where = f" (source column {source!r})" if source != name else ""
            problems.append(Problem(name, f"missing{where}"))
    return problems
