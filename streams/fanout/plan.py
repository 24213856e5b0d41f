"""The fan-out plan: each subscription checked against its event types' Avro schemas, as routes.

`SubscriptionPlan.build` runs at start (worker, deliverer, `simpul topology check`), so a typo
in a field name fails with its field path, not in delivery. Each `Route` carries the derived
Avro schema of what the subscriber receives (`derive_schema`: the projected fields, a masked
one a string) and its subject. The subscription models and their cross-checks against the
topology stay in the core (`simpul.topology.subscriptions`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simpul.topology.model import Topology
from simpul.topology.subscriptions import Mask, Subscription, mask


class SubscriptionError(ValueError):
    """A subscription does not fit the event types' schemas; the message names the field."""


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def derive_schema(definition: Mapping[str, Any], subscription: Subscription) -> dict[str, Any]:
    """The Avro schema of the projected record: the source schema's fields in the source's
    order, only those projected; a masked field becomes a (nullable) string."""
    masks = subscription.masks()
    keep = set(subscription.fields)
    fields = []
    for source in definition["fields"]:
        if source["name"] not in keep:
            continue
        if source["name"] in masks:
            nullable = _is_nullable(source["type"])
            rule = masks[source["name"]]
            fields.append(
                {
                    "name": source["name"],
                    "type": ["null", "string"] if nullable else "string",
                    **({"default": None} if nullable else {}),
                    "doc": f"Masked: only the first {rule.keep_first} and last "
                    f"{rule.keep_last} characters are shown.",
                }
            )
        else:
            fields.append(dict(source))
    namespace = f"simpul.sub.{_sanitize(subscription.name)}"
    source_namespace = definition.get("namespace")
    return {
        "type": "record",
        "name": definition["name"],
        "namespace": namespace,
        "doc": f"{definition['name']} as subscription {subscription.name} "
        f"({subscription.agency}) receives it. Purpose: {subscription.purpose}",
        "fields": [_qualify(f, source_namespace) for f in fields],
    }


def _is_nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def _qualify(field: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    """Named types (enums) inside the field keep their original full names."""
    if namespace is None:
        return field

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            node = {k: walk(v) for k, v in node.items()}
            if node.get("type") in {"enum", "fixed", "record"} and "namespace" not in node:
                node["namespace"] = namespace
            return node
        return node

    return {**field, "type": walk(field["type"])}


def record_full_name(schema: Mapping[str, Any]) -> str:
    return f"{schema['namespace']}.{schema['name']}"


def out_subject(subscription: Subscription, schema: Mapping[str, Any]) -> str:
    """Confluent TopicRecordNameStrategy: ``<topic>-<record full name>``."""
    return f"{subscription.topic}-{record_full_name(schema)}"


@dataclass(frozen=True, slots=True)
class Route:
    """One subscription applied to one event type."""

    subscription: Subscription
    event_type: str
    key_field: str
    schema: dict[str, Any]
    subject: str
    masks: dict[str, Mask]
    subject_field: str | None  # the NIK/NIP field that identifies the person, for the audit


class SubscriptionPlan:
    """Every route by event type, built once at start after checking field names and types."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self.by_type: dict[str, list[Route]] = {}
        for route in self.routes:
            self.by_type.setdefault(route.event_type, []).append(route)

    @classmethod
    def build(cls, topology: Topology, schemas_dir: Path) -> SubscriptionPlan:
        definitions = {
            t.name: json.loads((schemas_dir / t.schema_file).read_text(encoding="utf-8"))
            for t in topology.event_types
        }
        return cls.from_definitions(topology, definitions)

    @classmethod
    def from_definitions(
        cls, topology: Topology, definitions: Mapping[str, Mapping[str, Any]]
    ) -> SubscriptionPlan:
        routes = []
        problems = []
        for i, sub in enumerate(topology.subscriptions):
            for type_name in sub.event_types:
                definition = definitions[type_name]
                types = {f["name"]: f["type"] for f in definition["fields"]}
                where = f"subscriptions.{i}"
                for j, name in enumerate(sub.fields):
                    if name not in types:
                        problems.append(
                            f"{where}.fields.{j}: {name!r} is not a field of {type_name} "
                            f"(fields: {', '.join(types)})"
                        )
                for j, condition in enumerate(sub.filter):
                    if condition.field not in types:
                        problems.append(
                            f"{where}.filter.{j}.field: {condition.field!r} is not a field "
                            f"of {type_name}"
                        )
                    elif condition.prefix is not None and not _is_string(types[condition.field]):
                        problems.append(
                            f"{where}.filter.{j}.prefix: {condition.field!r} of {type_name} "
                            "is not a string"
                        )
                for j, rule in enumerate(sub.masked):
                    if rule.field in types and not _is_string(types[rule.field]):
                        problems.append(
                            f"{where}.masked.{j}.field: {rule.field!r} of {type_name} is not "
                            "a string; only strings can be masked"
                        )
                if problems:
                    continue
                identifiers = {
                    f["name"]: f["simpul.identifier"]
                    for f in definition["fields"]
                    if f.get("simpul.identifier") in {"nik", "nip"}
                }
                clear = [f for f in sub.fields if f in identifiers and f not in sub.masks()]
                if clear and not (sub.legal_basis or "").strip():
                    problems.append(
                        f"{where}.legal_basis: {sub.name} receives "
                        + ", ".join(f"{f} ({identifiers[f].upper()})" for f in clear)
                        + f" of {type_name} unmasked; name the legal basis, or mask it"
                    )
                    continue
                schema = derive_schema(definition, sub)
                event_type = topology.event_type(type_name)
                subject_field = (
                    event_type.key
                    if event_type.key in identifiers
                    else next(iter(identifiers), None)
                )
                routes.append(
                    Route(
                        sub,
                        type_name,
                        event_type.key,
                        schema,
                        out_subject(sub, schema),
                        sub.masks(),
                        subject_field,
                    )
                )
        if problems:
            raise SubscriptionError(
                "subscriptions do not fit the event schemas:\n"
                + "\n".join(f"  {p}" for p in problems)
            )
        return cls(routes)

    def routes_for(self, event_type: str) -> list[Route]:
        return self.by_type.get(event_type, [])


def _is_string(avro_type: Any) -> bool:
    if isinstance(avro_type, list):
        return all(t in {"null", "string"} for t in avro_type) and "string" in avro_type
    if isinstance(avro_type, dict):
        return bool(avro_type.get("type") == "string")
    return bool(avro_type == "string")


def out_key(route: Route, payload: Mapping[str, Any], key: bytes | None) -> bytes | None:
    """The business key, masked when the subscription masks the key field, withheld (None)
    when the key field is not in the projection. The producer still partitions by the
    original key, so one entity's events stay in order."""
    if route.key_field not in route.subscription.fields:
        return None
    rule = route.masks.get(route.key_field)
    if rule is None:
        return key
    value = payload.get(route.key_field)
    return None if value is None else mask(str(value), rule.keep_first, rule.keep_last).encode()
