"""Subscriptions: which agency receives which events, filtered, projected and masked.

The models are the ``subscriptions:`` section of the topology. The functions below them are
pure (no Kafka, no database): ``matches`` applies the filter, ``project`` keeps only the
allowed fields and masks the masked ones, ``derive_schema`` builds the Avro schema of what a
subscriber receives. ``SubscriptionPlan`` checks every subscription against the event types'
Avro schemas at start, so a typo in a field name fails with its field path, not in delivery.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from simpul.topology.model import Topology

MASK_CHAR = "•"
_NAME = r"^[a-z][a-z0-9_-]{1,60}$"
_ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"


class SubscriptionError(ValueError):
    """A subscription does not fit the event types' schemas; the message names the field."""


class Filter(BaseModel):
    """One condition on a payload field: exactly one of ``equals``, ``prefix`` or ``in``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    field: Annotated[str, Field(min_length=1)]
    equals: str | int | float | bool | None = None
    prefix: Annotated[str | None, Field(min_length=1)] = None
    in_: Annotated[list[str | int | float | bool] | None, Field(alias="in", min_length=1)] = None

    @model_validator(mode="after")
    def _one_operator(self) -> Filter:
        given = [
            name
            for name, value in (("equals", self.equals), ("prefix", self.prefix), ("in", self.in_))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of equals, prefix, in (got {', '.join(given) or 'none'})"
            )
        return self

    def matches(self, payload: Mapping[str, Any]) -> bool:
        value = payload.get(self.field)
        if self.prefix is not None:
            return isinstance(value, str) and value.startswith(self.prefix)
        if self.in_ is not None:
            return value in self.in_
        return bool(value == self.equals)


class Mask(BaseModel):
    """Show only the first and last characters: NIK 7271011204900003 → 7271••••••••0003."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: Annotated[str, Field(min_length=1)]
    keep_first: Annotated[int, Field(ge=0, le=8)] = 4
    keep_last: Annotated[int, Field(ge=0, le=8)] = 4

    @model_validator(mode="after")
    def _at_most_eight_shown(self) -> Mask:
        if self.keep_first + self.keep_last > 8:
            raise ValueError(
                f"keep_first + keep_last: {self.keep_first + self.keep_last} characters shown; "
                "a masked identifier shows at most 8"
            )
        return self


class Webhook(BaseModel):
    """Where `simpul deliver` POSTs; the signing secret is read from an environment variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    secret_env: Annotated[str, Field(pattern=_ENV_NAME)]


class Subscription(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME)]
    agency: Annotated[str, Field(min_length=1)]
    event_types: Annotated[list[str], Field(min_length=1)]
    purpose: Annotated[str, Field(min_length=1)]
    fields: Annotated[list[str], Field(min_length=1)]
    filter: list[Filter] = []
    masked: list[Mask] = []
    webhook: Webhook | None = None
    #: Why the law lets this agency see a NIK/NIP in clear (UU 27/2022 art. 20); required
    #: when an identifier field is sent unmasked.
    legal_basis: str | None = None

    @field_validator("purpose")
    @classmethod
    def _purpose_said(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("purpose must say why the agency receives the data (UU 27/2022)")
        return value.strip()

    @model_validator(mode="after")
    def _masked_are_sent(self) -> Subscription:
        for i, mask in enumerate(self.masked):
            if mask.field not in self.fields:
                raise ValueError(f"masked.{i}.field: {mask.field!r} is not in fields")
        if dupes := sorted({f for f in self.fields if self.fields.count(f) > 1}):
            raise ValueError(f"fields: {', '.join(dupes)} listed more than once")
        return self

    @property
    def topic(self) -> str:
        return inbox_topic(self.agency)

    def masks(self) -> dict[str, Mask]:
        return {m.field: m for m in self.masked}

    def matches(self, payload: Mapping[str, Any]) -> bool:
        return all(f.matches(payload) for f in self.filter)


def inbox_topic(agency: str) -> str:
    return f"simpul.out.{agency}"


def webhook_dlq_topic(agency: str) -> str:
    return f"simpul.dlq.out.{agency}"


def check_subscriptions(topology: Topology) -> None:
    """Cross-checks against the rest of the topology; raises ValueError naming the path."""
    names = [s.name for s in topology.subscriptions]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"subscriptions: {', '.join(dupes)} declared more than once")
    for i, sub in enumerate(topology.subscriptions):
        if sub.agency not in topology.agencies_by_code:
            raise ValueError(f"subscriptions.{i}.agency: {sub.agency!r} is not a declared agency")
        for j, name in enumerate(sub.event_types):
            if name not in topology.types_by_name:
                raise ValueError(
                    f"subscriptions.{i}.event_types.{j}: {name!r} is not a declared event type"
                )


# --- pure functions: what a subscriber receives -------------------------------------------


def mask(value: str, keep_first: int = 4, keep_last: int = 4) -> str:
    """Replace all but the first and last characters; a value too short is masked entirely,
    so the hidden middle never shows."""
    if len(value) <= keep_first + keep_last:
        return MASK_CHAR * len(value)
    hidden = len(value) - keep_first - keep_last
    return value[:keep_first] + MASK_CHAR * hidden + value[len(value) - keep_last :]


def project(
    payload: Mapping[str, Any], fields: Sequence[str], masks: Mapping[str, Mask]
) -> dict[str, Any]:
    """Only ``fields``, masked where a mask says so; masked values become strings."""
    out: dict[str, Any] = {}
    for name in fields:
        value = payload.get(name)
        rule = masks.get(name)
        if rule is not None and value is not None:
            value = mask(str(value), rule.keep_first, rule.keep_last)
        out[name] = value
    return out


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


# --- the plan: subscriptions checked against the schemas -----------------------------------


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
        return avro_type.get("type") == "string"
    return avro_type == "string"


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


#: Partitions of each agency's inbox and webhook dead-letter topic.
OUT_PARTITIONS = 4


def subscription_topics(topology: Topology) -> list[tuple[str, int]]:
    """``simpul.out.<agency>`` per subscribing agency, ``simpul.dlq.out.<agency>`` per agency
    with a webhook; declared by `simpul topics apply` next to ``Topology.topics()``."""
    inboxes = sorted({s.agency for s in topology.subscriptions})
    hooked = sorted({s.agency for s in topology.subscriptions if s.webhook})
    return [(inbox_topic(a), OUT_PARTITIONS) for a in inboxes] + [
        (webhook_dlq_topic(a), OUT_PARTITIONS) for a in hooked
    ]
