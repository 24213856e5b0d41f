"""Pure join logic: one partition's join state and what each event does to it; no I/O.

The right side of a join is a table (the newest event per key by ``(ce_time, ce_id)``); left
events look it up, wait when their key is not there yet, and are decided when the right side
arrives or when the wait runs out. Every change to the state is returned as a `StateChange`
for the changelog topic, so that a restarted process rebuilds exactly this state.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from simpul.envelope import Envelope
from simpul.topology.joins import DERIVED_AGENCY, Join
from simpul.topology.model import EventType
from streams.ingest.pipeline import RawRecord

#: uuid5 namespace of derived events' ce_id: the same inputs always give the same id, so a
#: re-derived event (after a restart) is dropped by the ingest's dedup and the store.
DERIVED_ID_NAMESPACE = uuid.UUID("5b1b7a7e-6a2f-5d8e-9c1f-53494d50554c")
_SEP = "\x00"


@dataclass(frozen=True, slots=True)
class JoinEvent:
    """One decoded event on either side of a join, and where it was read."""

    record: RawRecord
    envelope: Envelope
    payload: dict[str, Any]
    since: float  # wall-clock seconds when the join first saw it: a left's wait starts here

    @property
    def order(self) -> tuple[dt.datetime, str]:
        return (self.envelope.time, self.envelope.id)


@dataclass(frozen=True, slots=True)
class DerivedEvent:
    join: str
    type: str
    key: str
    envelope: Envelope
    payload: dict[str, Any]
    left: JoinEvent


@dataclass(frozen=True, slots=True)
class StateChange:
    """One changelog record: the state key and the event kept under it (None deletes it)."""

    key: bytes
    event: JoinEvent | None


@dataclass(slots=True)
class Effects:
    """What processing did: derived events to publish, left events to dead-letter (with the
    reason), changelog records to write, and counts for the metrics."""

    derived: list[DerivedEvent] = field(default_factory=list)
    expired: list[tuple[JoinEvent, str]] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)
    waits: int = 0
    timeouts: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class JoinPartition:
    """The state of one join on one partition: latest right events and waiting left ones."""

    right: dict[str, JoinEvent] = field(default_factory=dict)
    pending: dict[str, dict[str, JoinEvent]] = field(default_factory=dict)

    @property
    def pending_count(self) -> int:
        return sum(len(waiting) for waiting in self.pending.values())


def right_state_key(key: str) -> bytes:
    return f"R{_SEP}{key}".encode()


def left_state_key(key: str, ce_id: str) -> bytes:
    return f"L{_SEP}{key}{_SEP}{ce_id}".encode()


def derived_id(join: str, left_id: str, right_id: str | None) -> str:
    return str(uuid.uuid5(DERIVED_ID_NAMESPACE, _SEP.join((join, left_id, right_id or ""))))


class JoinLogic:
    """The behaviour of one declared join; the state it works on is passed in."""

    def __init__(self, join: Join, output_type: EventType, wait_s: float) -> None:
        self.join = join
        self.output_type = output_type
        self.wait_s = join.wait_s or wait_s

    @property
    def name(self) -> str:
        return self.join.name

    def left_key(self, payload: dict[str, Any]) -> str:
        return str(payload[self.join.left.key])

    def on_left(self, state: JoinPartition, event: JoinEvent, effects: Effects) -> None:
        if not self.join.left.matches(event.payload):
            return
        key = self.left_key(event.payload)
        right = state.right.get(key)
        if right is not None:
            self._decide(event, right, effects)
            return
        waiting = state.pending.setdefault(key, {})
        if event.envelope.id in waiting:
            return  # a re-delivered copy of a left event already waiting
        waiting[event.envelope.id] = event
        effects.changes.append(StateChange(left_state_key(key, event.envelope.id), event))
        effects.waits += 1

    def on_right(self, state: JoinPartition, event: JoinEvent, effects: Effects) -> None:
        key = str(event.payload[self.join.right.key])
        current = state.right.get(key)
        if current is not None and current.order >= event.order:
            return  # older than (or a copy of) what the table holds
        state.right[key] = event
        effects.changes.append(StateChange(right_state_key(key), event))
        for left in state.pending.pop(key, {}).values():
            effects.changes.append(StateChange(left_state_key(key, left.envelope.id), None))
            self._decide(left, event, effects)

    def expire(self, state: JoinPartition, now: float, effects: Effects) -> None:
        """Decide every left event that waited ``wait_s`` or longer without a right side."""
        for key in list(state.pending):
            waiting = state.pending[key]
            for ce_id, left in list(waiting.items()):
                if now - left.since < self.wait_s:
                    continue
                del waiting[ce_id]
                effects.changes.append(StateChange(left_state_key(key, ce_id), None))
                effects.timeouts[self.join.on_timeout] += 1
                if self.join.on_timeout == "dead_letter":
                    effects.expired.append((left, self.timeout_reason(key)))
                elif self.join.on_timeout == "emit":
                    self._decide(left, None, effects)
            if not waiting:
                del state.pending[key]

    def timeout_reason(self, key: str) -> str:
        right = self.join.right
        return (
            f"join {self.name}: no {right.type} with {right.key} {key} "
            f"arrived within {self.wait_s:g} s"
        )

    def restore(self, state: JoinPartition, key: bytes, event: JoinEvent | None) -> None:
        """Apply one changelog record (oldest first) while rebuilding the state."""
        kind, _, rest = key.decode().partition(_SEP)
        if kind == "R":
            if event is None:
                state.right.pop(rest, None)
            else:
                state.right[rest] = event
        elif kind == "L":
            join_key, _, ce_id = rest.partition(_SEP)
            if event is None:
                waiting = state.pending.get(join_key, {})
                waiting.pop(ce_id, None)
                if not waiting:
                    state.pending.pop(join_key, None)
            else:
                state.pending.setdefault(join_key, {})[ce_id] = event

    def _decide(self, left: JoinEvent, right: JoinEvent | None, effects: Effects) -> None:
        matched = right is not None and self.join.right.matches(right.payload)
        if matched == (self.join.emit == "matched"):
            effects.derived.append(self.derive(left, right))

    def derive(self, left: JoinEvent, right: JoinEvent | None) -> DerivedEvent:
        """The output event: fields mapped from both sides, a deterministic ce_id, and as its
        time the later of the two events' times (so a re-derivation is byte-identical)."""
        sides = {"left": left, "right": right}
        payload: dict[str, Any] = {}
        for name, source in self.join.fields.items():
            side_name, _, field_name = source.partition(".")
            side = sides[side_name]
            if side is None:
                payload[name] = None
            elif field_name == "$id":
                payload[name] = side.envelope.id
            else:
                payload[name] = side.payload.get(field_name)
        time = max(left.envelope.time, right.envelope.time) if right else left.envelope.time
        envelope = Envelope(
            type=self.output_type.name,
            source=f"/agency/{DERIVED_AGENCY}",
            id=derived_id(self.name, left.envelope.id, right.envelope.id if right else None),
            time=time,
        )
        key = str(payload[self.output_type.key])
        return DerivedEvent(self.name, self.output_type.name, key, envelope, payload, left)
