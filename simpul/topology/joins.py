"""The ``joins:`` section of the topology: derived events declared as data, checked at start.

A join pairs each *left* event with the latest *right* event of the same key (the right side
is a table: the newest event per key wins by ``(ce_time, ce_id)``). Whether the pair yields the
output event is said by ``right_when`` (which right-side values count as a match) and ``emit``
(``matched`` or ``unmatched``). A left event whose right side has not arrived waits at most
``wait_s`` seconds; then ``on_timeout`` decides: ``dead_letter`` it, ``emit`` it as unmatched,
or ``drop`` it (the absence of a right side is itself the answer).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from simpul.topology.model import EventType, Topology

_JOIN_NAME = r"^[a-z][a-z0-9-]{1,60}$"
#: ``left.<field>``, ``right.<field>``, or the joined events' ids ``left.$id`` / ``right.$id``.
_SOURCE = re.compile(r"^(left|right)\.(\$id|[A-Za-z_][A-Za-z0-9_]*)$")

#: The agency code Simpul publishes derived events as (``ce_source: /agency/simpul``).
DERIVED_AGENCY = "simpul"


class JoinSide(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, Field(min_length=3)]
    key: Annotated[str, Field(min_length=1, description="Payload field holding the join key")]
    when: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Left side: only events whose field value is one of the listed values "
        "take part. Right side: a right event counts as a match only if its values are listed.",
    )

    def matches(self, payload: dict[str, object]) -> bool:
        return all(str(payload.get(name)) in allowed for name, allowed in self.when.items())


class Join(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_JOIN_NAME)]
    left: JoinSide
    right: JoinSide
    output: Annotated[str, Field(min_length=3, description="The derived event type")]
    emit: Literal["matched", "unmatched"] = "matched"
    on_timeout: Literal["dead_letter", "emit", "drop"] = "dead_letter"
    wait_s: Annotated[float | None, Field(gt=0)] = None
    fields: Annotated[dict[str, str], Field(min_length=1)]

    @field_validator("fields")
    @classmethod
    def _valid_sources(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            if not _SOURCE.match(source):
                raise ValueError(
                    f"{name}: {source!r} is not left.<field>, right.<field>, left.$id or right.$id"
                )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Join:
        if self.on_timeout == "emit" and self.emit != "unmatched":
            raise ValueError("on_timeout: 'emit' needs emit: unmatched (no right side = unmatched)")
        return self

    def state_topic(self) -> str:
        """Compacted changelog of the join's state: latest right per key, pending lefts."""
        return f"simpul.join.{self.name}.state"

    def repartition_topic(self) -> str:
        """Left events re-keyed by the join key, so both sides are co-partitioned."""
        return f"simpul.join.{self.name}.left"

    def needs_repartition(self, left_type: EventType) -> bool:
        return self.left.key != left_type.key


def check_joins(topology: Topology) -> None:
    """Cross-checks against the event types; raises ValueError naming ``joins.<i>.<field>``."""
    names = [j.name for j in topology.joins]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"joins: {', '.join(dupes)} declared more than once")
    types = {t.name: t for t in topology.event_types}
    for i, join in enumerate(topology.joins):
        for side in ("left", "right", "output"):
            type_name = join.output if side == "output" else getattr(join, side).type
            if type_name not in types:
                raise ValueError(f"joins.{i}.{side}: {type_name!r} is not a declared event type")
        right = types[join.right.type]
        if join.right.key != right.key:
            raise ValueError(
                f"joins.{i}.right.key: {join.right.key!r} must be the key of {right.name} "
                f"({right.key}); the right side is a table by its business key"
            )
        left = types[join.left.type]
        if not join.needs_repartition(left) and left.partitions != right.partitions:
            raise ValueError(
                f"joins.{i}.left: {left.name} has {left.partitions} partitions and "
                f"{right.name} {right.partitions}; co-partitioned sides need the same count"
            )
        output = types[join.output]
        if DERIVED_AGENCY not in output.producers:
            raise ValueError(
                f"joins.{i}.output: {output.name} must list {DERIVED_AGENCY!r} among its producers"
            )
        if output.key not in join.fields:
            raise ValueError(f"joins.{i}.fields: the output key {output.key!r} is not mapped")
