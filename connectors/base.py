"""What every connector kind is: an options model plus one class with poll/commit.

Kinds are found through the ``simpul.connectors`` entry-point group, so a third party adds
one with ``pip install``: the entry point names the kind (``connector.class``) and points at a
`SourceConnector` subclass.

Delivery guarantee of every source: at-least-once. The runtime publishes a batch, waits for
the broker's acknowledgement (acks=all), and only then calls `SourceConnector.commit`, which
stores the position durably. Each record's ``ce_id`` is derived from the connector name and the
record's identity, so a batch read again after a crash carries the same ids and the bus drops
the copies.
"""

from __future__ import annotations

import datetime as dt
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Engine

from simpul.settings import Settings
from simpul.topology.connectors import ConnectorConfigError, ConnectorSpec

ENTRY_POINT_GROUP = "simpul.connectors"
_CE_NAMESPACE = uuid.UUID("6f1c3a52-7d55-4d0e-9b43-2f9e1a7c5b10")


def record_ce_id(connector: str, identity: str) -> str:
    """Deterministic ``ce_id``: the same row read twice is the same event."""
    return str(uuid.uuid5(_CE_NAMESPACE, f"{connector}\x00{identity}"))


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One row, line or object read from an agency system, before mapping and validation."""

    data: Mapping[str, Any]
    identity: str  # stable within the connector: the outbox id, "<ts>|<id>", "<sha256>:<line>"
    ref: str  # for people: "line 7", "id=42"
    position: Mapping[str, Any] = field(default_factory=dict)  # where to resume after it
    time: dt.datetime | None = None  # ce_time; now when unknown
    #: Why the record could not even be read: a `Problem`, or a plain "line 4: not JSON".
    problem: str | None = None


@dataclass(slots=True)
class Rejected:
    record: SourceRecord
    reason: str


@dataclass(slots=True)
class BatchOutcome:
    """What became of a batch; handed to `SourceConnector.commit` after the broker acked.

    ``done`` is every record handled (published or rejected), in read order. Under
    ``errors.tolerance: none`` a bad record stops the batch: ``failed`` is that record and
    ``done`` holds only the records before it, so the position never moves past it.
    """

    done: list[SourceRecord] = field(default_factory=list)
    published: list[SourceRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    failed: Rejected | None = None


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ConnectorContext:
    """What the runtime gives a connector: settings and the central store's engine."""

    settings: Settings
    store_engine: Engine


class SourceConnector(ABC):
    """A connector kind. Subclasses set ``Options`` (their own keys, ``extra="forbid"``).

    The runtime calls `start`, then `poll` in a loop (an empty list means "nothing now"), then
    `commit` after every batch, and `stop` at the end. All on one thread per task.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    #: True when the kind reports bad records itself (the file drop's rejects file) instead of
    #: sending them to the dead-letter topic.
    writes_rejects: ClassVar[bool] = False
    #: True when a batch is all-or-nothing under ``errors.tolerance: none`` (a file).
    atomic_batches: ClassVar[bool] = False

    def __init__(self, spec: ConnectorSpec, options: BaseModel, context: ConnectorContext) -> None:
        self.spec = spec
        self.options = options
        self.context = context

    def start(self) -> None:  # noqa: B027  (optional hook)
        """Open connections, load the durable position."""

    @abstractmethod
    def poll(self) -> Sequence[SourceRecord]:
        """The next records after the current position; empty when there are none yet."""

    @abstractmethod
    def commit(self, outcome: BatchOutcome) -> None:
        """Store the position after ``outcome.done`` durably (the broker has acked them)."""

    def stop(self) -> None:  # noqa: B027  (optional hook)
        """Close connections; called once, also after a failure."""

    def position(self) -> Mapping[str, Any] | None:
        """The durable position, for the status endpoint."""
        return None


def installed_kinds() -> dict[str, Any]:
    """Kind name -> entry point, for every installed distribution."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_kind(spec: ConnectorSpec, where: str) -> tuple[type[SourceConnector], BaseModel]:
    """The kind class and its validated options; `ConnectorConfigError` names the field."""
    kinds = installed_kinds()
    entry = kinds.get(spec.kind)
    if entry is None:
        raise ConnectorConfigError(
            f"{where}.connector.class: unknown kind {spec.kind!r}; installed: "
            f"{', '.join(sorted(kinds)) or '(none)'}"
        )
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, SourceConnector)):
        raise ConnectorConfigError(
            f"{where}.connector.class: entry point {entry.value} is not a SourceConnector"
        )
    try:
        options = cls.Options.model_validate(spec.options)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            path = ".".join(str(p) for p in (where, *item["loc"]))
            lines.append(f"{path}: {item['msg'].removeprefix('Value error, ')}")
        raise ConnectorConfigError("\n".join(lines)) from None
    return cls, options


def resolve_all(
    specs: Sequence[ConnectorSpec], where: Sequence[str] | None = None
) -> list[tuple[type[SourceConnector], BaseModel]]:
    """Resolve every connector, collecting every problem before raising."""
    resolved, problems = [], []
    for i, spec in enumerate(specs):
        try:
            resolved.append(resolve_kind(spec, where[i] if where else f"connectors.{i}"))
        except ConnectorConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConnectorConfigError(
            "connector declarations are invalid:\n  " + "\n  ".join(problems)
        )
    return resolved
