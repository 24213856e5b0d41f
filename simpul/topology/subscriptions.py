"""Subscriptions: which agency receives which events, filtered, projected and masked.

The models are the ``subscriptions:`` section of the topology, with their cross-checks against
the rest of it (`check_subscriptions`) and the topics they need. The functions below them are
pure (no Kafka, no database): ``matches`` applies the filter, ``project`` keeps only the
allowed fields and masks the masked ones. The fan-out plan — each subscription checked against
the event types' Avro schemas, with the derived schema of what a subscriber receives — is
``streams/fanout/plan.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from simpul.topology.model import Topology

MASK_CHAR = "•"
_NAME = r"^[a-z][a-z0-9_-]{1,60}$"
_ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"


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
