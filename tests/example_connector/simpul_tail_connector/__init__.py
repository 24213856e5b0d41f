"""An example third-party connector kind: follow a JSON Lines file another program appends to.

Delivery guarantee: at-least-once. The position (lines consumed) is saved in the central store
after the broker acked; each event's ce_id derives from the line number, so lines re-read after
a crash are dropped by the bus.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import BatchOutcome, SourceConnector, SourceRecord
from connectors.state import OffsetStore


class TailOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: Path
    poll_interval_ms: Annotated[int, Field(alias="poll.interval.ms", ge=10)] = 500

    @property
    def poll_interval_s(self) -> float:
        return self.poll_interval_ms / 1000


class TailConnector(SourceConnector):
    """``connector.class: tail`` — one JSON object per line, appended over time."""

    Options = TailOptions
    options: TailOptions

    def start(self) -> None:
        self.offsets = OffsetStore(self.context.store_engine)
        self.line = int((self.offsets.load(self.spec.name) or {}).get("line", 0))

    def poll(self) -> Sequence[SourceRecord]:
        if not self.options.path.exists():
            return []
        lines = self.options.path.read_text(encoding="utf-8").split("\n")[:-1]  # whole lines
        records = []
        for number, text in enumerate(lines[self.line :], start=self.line + 1):
            data: Any = None
            problem = None
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                problem = f"line: not JSON ({error.msg})"
            records.append(
                SourceRecord(
                    data=data if isinstance(data, dict) else {},
                    identity=f"line:{number}",
                    ref=f"{self.options.path.name} line {number}",
                    position={"line": number},
                    problem=problem,
                )
            )
        return records

    def commit(self, outcome: BatchOutcome) -> None:
        if outcome.done:
            self.line = int(outcome.done[-1].position["line"])
            self.offsets.save(self.spec.name, {"line": self.line})

    def position(self) -> dict[str, Any]:
        return {"line": self.line}
