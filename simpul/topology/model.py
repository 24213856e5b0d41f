"""The topology model: agencies, event types and reference data, loaded from one YAML file.

Integration staff edit only the YAML; pydantic validates it at start and every error names
the field path (``event_types.2.key``) and the reason.
"""

from __future__ import annotations

import fnmatch
import json
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simpul import yamltext
from simpul.identifiers import check_kelurahan_code
from simpul.topology.connectors import ConnectorSpec, check_connectors
from simpul.topology.joins import Join, check_joins
from simpul.topology.payroll import TppPolicy
from simpul.topology.subscriptions import Subscription, check_subscriptions

_AGENCY_CODE = r"^[a-z][a-z0-9-]{1,40}$"
_TYPE_NAME = r"^[a-z]+(\.[a-z_]+)+$"

TopicKind = str  # "in" | "valid" | "dlq"

#: Indonesia's three time zones, by the abbreviation people read on a clock.
TIME_ZONES = {"Asia/Jakarta": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}
TimeZoneName = Literal["Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"]

_CADENCE = re.compile(r"^([1-9][0-9]{0,4})(m|h|d|w)$")
_CADENCE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: An agency without a declared cadence is expected to publish at least daily.
DEFAULT_CADENCE = "1d"


def cadence_seconds(cadence: str) -> int:
    """``"30m"``, ``"1h"``, ``"1d"``, ``"30d"`` (a monthly export), ``"1w"`` -> seconds."""
    match = _CADENCE.fullmatch(cadence)
    if not match:
        raise ValueError(
            f"cadence {cadence!r}: expected a number and a unit m, h, d or w, e.g. 1h, 1d, 30d"
        )
    return int(match.group(1)) * _CADENCE_UNITS[match.group(2)]


class TopologyError(ValueError):
    """The topology file is missing, unreadable or invalid; the message lists each field."""


class Agency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Annotated[str, Field(pattern=_AGENCY_CODE)]
    name: Annotated[str, Field(min_length=3)]
    kelurahan_code: str | None = None
    #: How often the agency is expected to publish; silent longer = not connected.
    cadence: str = DEFAULT_CADENCE
    #: Simpul's own producer identity (derived events), not an agency system: it is left
    #: out of the scorecard's "N of M agencies connected".
    system: bool = False
    #: False: declared but not sending yet (a city onboarding its OPD in waves); the
    #: simulator leaves it silent and the scorecard still counts it among the M agencies.
    onboarded: bool = True

    @field_validator("cadence")
    @classmethod
    def _valid_cadence(cls, value: str) -> str:
        cadence_seconds(value)
        return value

    @property
    def cadence_seconds(self) -> int:
        return cadence_seconds(self.cadence)

    @field_validator("kelurahan_code")
    @classmethod
    def _valid_kelurahan(cls, value: str | None) -> str | None:
        if value is not None and (reason := check_kelurahan_code(value)):
            raise ValueError(reason)
        return value

    @property
    def source(self) -> str:
        """The CloudEvents ``source`` attribute of events this agency produces."""
        return f"/agency/{self.code}"


class EventType(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_TYPE_NAME)]
    schema_file: Annotated[str, Field(alias="schema", min_length=6)]
    key: Annotated[str, Field(min_length=1)]
    #: The central store's current-state table; None: the type is kept in event_log only
    #: (derived events, whose entity is the event itself).
    entity: Annotated[str | None, Field(pattern=r"^[a-z_]+$")] = None
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    producers: Annotated[list[str], Field(min_length=1)]

    def topic(self, kind: TopicKind) -> str:
        return f"simpul.{kind}.{self.name}"

    @property
    def subject(self) -> str:
        """Schema registry subject (Confluent TopicNameStrategy)."""
        return f"{self.topic('in')}-value"

    def may_produce(self, agency_code: str) -> bool:
        return _may_produce(tuple(self.producers), agency_code)


@lru_cache(maxsize=4096)
def _may_produce(patterns: tuple[str, ...], agency_code: str) -> bool:
    return any(fnmatch.fnmatchcase(agency_code, pattern) for pattern in patterns)


class Kelurahan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    district: str

    @field_validator("code")
    @classmethod
    def _valid_code(cls, value: str) -> str:
        if reason := check_kelurahan_code(value):
            raise ValueError(reason)
        return value


class Retention(BaseModel):
    """How long topics holding personal data keep it (UU 27/2022: no longer than needed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dead_letter_days: Annotated[int, Field(ge=1, le=3650)] = 30
    inbox_days: Annotated[int, Field(ge=1, le=3650)] = 14


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    city: str
    region_code: Annotated[str, Field(pattern=r"^[0-9]{4}$")]
    #: The city's clock, for dates shown to people (the console): WIB, WITA or WIT.
    timezone: TimeZoneName = "Asia/Jakarta"
    replication: Annotated[int, Field(ge=1, le=5)] = 1
    #: Whether a kelurahan/desa office may issue a letter for a resident of another kelurahan
    #: (Kota Kupang's Soda Molek: any office, any resident). The letter then carries the
    #: office's own code in ``issuing_kelurahan_code`` beside the resident's ``kelurahan_code``.
    offices_issue_for_any_kelurahan: bool = False
    agencies: Annotated[list[Agency], Field(min_length=1)]
    event_types: Annotated[list[EventType], Field(min_length=1)]
    kelurahan: list[Kelurahan] = []
    joins: list[Join] = []
    connectors: list[ConnectorSpec] = []
    subscriptions: list[Subscription] = []
    #: The TPP amounts BKD pays from hr.allowance.basis (`simpul payroll control`).
    tpp: TppPolicy | None = None
    retention: Retention = Retention()

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        codes = [a.code for a in self.agencies]
        if dupes := sorted({c for c in codes if codes.count(c) > 1}):
            raise ValueError(f"agencies: code {', '.join(dupes)} declared more than once")
        names = [t.name for t in self.event_types]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"event_types: {', '.join(dupes)} declared more than once")
        for i, event_type in enumerate(self.event_types):
            for pattern in event_type.producers:
                if not any(fnmatch.fnmatchcase(c, pattern) for c in codes):
                    raise ValueError(
                        f"event_types.{i}.producers: {pattern!r} matches no declared agency"
                    )
        for i, kel in enumerate(self.kelurahan):
            if not kel.code.startswith(self.region_code):
                raise ValueError(
                    f"kelurahan.{i}.code: {kel.code} is outside region {self.region_code}"
                )
        if problems := check_connectors(self, self.connectors, "connectors"):
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _joins_consistent(self) -> Topology:
        check_joins(self)
        return self

    @model_validator(mode="after")
    def _subscriptions_consistent(self) -> Topology:
        check_subscriptions(self)
        return self

    @property
    def timezone_abbreviation(self) -> str:
        """``WIB``, ``WITA`` or ``WIT``."""
        return TIME_ZONES[self.timezone]

    @cached_property
    def agencies_by_code(self) -> dict[str, Agency]:
        return {a.code: a for a in self.agencies}

    @cached_property
    def types_by_name(self) -> dict[str, EventType]:
        return {t.name: t for t in self.event_types}

    def event_type(self, name: str) -> EventType:
        try:
            return self.types_by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.types_by_name))
            raise KeyError(f"unknown event type {name!r}; known: {known}") from None

    def agency(self, code: str) -> Agency:
        try:
            return self.agencies_by_code[code]
        except KeyError:
            raise KeyError(f"unknown agency {code!r}") from None

    def agency_for_source(self, source: str) -> Agency | None:
        match = re.fullmatch(r"/agency/([a-z0-9-]+)", source)
        return self.agencies_by_code.get(match.group(1)) if match else None

    def topics(self) -> list[tuple[str, int]]:
        """Every topic Simpul needs, with its partition count."""
        return [
            (t.topic(kind), t.partitions)
            for t in self.event_types
            for kind in ("in", "valid", "dlq")
        ] + self.join_topics()

    def topic_config(self, topic: str) -> dict[str, str]:
        """The declared configuration of one of Simpul's topics (retention of personal data
        in dead letters and inboxes; join changelogs compacted)."""
        day_ms = 86_400_000
        if topic.startswith("simpul.dlq."):
            return {"retention.ms": str(self.retention.dead_letter_days * day_ms)}
        if topic.startswith("simpul.out."):
            return {"retention.ms": str(self.retention.inbox_days * day_ms)}
        if topic in {join.state_topic() for join in self.joins}:
            return {"cleanup.policy": "compact"}
        return {}

    def join_topics(self) -> list[tuple[str, int]]:
        """Each join's state changelog and, when the left side is re-keyed, its repartition
        topic; both have the right side's partition count so all sides are co-partitioned."""
        topics = []
        for join in self.joins:
            partitions = self.types_by_name[join.right.type].partitions
            topics.append((join.state_topic(), partitions))
            if join.needs_repartition(self.types_by_name[join.left.type]):
                topics.append((join.repartition_topic(), partitions))
        return topics


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_topology(data: Any, origin: str = "<topology>") -> Topology:
    try:
        return Topology.model_validate(data)
    except ValidationError as error:
        raise TopologyError(f"{origin} is invalid:\n{format_validation_error(error)}") from None


def load_topology(path: Path) -> Topology:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TopologyError(f"cannot read topology {path}: {error.strerror}") from None
    try:
        data = yamltext.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise TopologyError(f"{path} is not valid YAML: {error}") from None
    return parse_topology(data, str(path))
