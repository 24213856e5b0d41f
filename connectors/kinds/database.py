"""Database sources: read an agency's own database through any SQLAlchemy URL.

* ``outbox``: a Debezium-style outbox table (``id, aggregatetype, aggregateid, type, payload,
  created_at``) the agency system writes in the same transaction as its change; ``payload`` is
  the event as JSON.
* ``polling``: a plain table (e.g. SIMPEG's ``pegawai``) read in Kafka Connect JDBC's modes:
  ``timestamp+incrementing`` (default: new and updated rows), ``incrementing`` (new rows only)
  or ``timestamp``; columns are renamed to event fields by ``field.mapping``.

Delivery guarantee: at-least-once. The position (last timestamp and id) is written to the
central store's ``connector_offsets`` only after the broker acked the batch, and each event's
``ce_id`` is derived from the row's identity, so a read repeated after SIGKILL duplicates
nothing the bus keeps. Rows committed later with an older timestamp than the position are
missed in the timestamp modes, as in Kafka Connect: set ``timestamp.delay.interval.ms`` to the
longest transaction of the source system.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine, MetaData, Table, and_, or_, select
from sqlalchemy.exc import NoSuchTableError

from connectors.base import BatchOutcome, SourceConnector, SourceRecord
from connectors.state import OffsetStore
from simpul import jsontext
from simpul.db import make_engine
from simpul.errors import Problem

Mode = Literal["timestamp+incrementing", "incrementing", "timestamp"]


class _DatabaseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    connection_url: Annotated[str, Field(alias="connection.url", min_length=8)]
    table_schema: Annotated[str | None, Field(alias="table.schema")] = None
    batch_max_rows: Annotated[int, Field(alias="batch.max.rows", ge=1, le=100_000)] = 1000
    poll_interval_ms: Annotated[int | None, Field(alias="poll.interval.ms", ge=10)] = None
    timestamp_delay_ms: Annotated[int, Field(alias="timestamp.delay.interval.ms", ge=0)] = 0

    @property
    def poll_interval_s(self) -> float | None:
        return self.poll_interval_ms / 1000 if self.poll_interval_ms else None


class OutboxOptions(_DatabaseOptions):
    table: Annotated[str, Field(alias="table.name", min_length=1)] = "outbox"
    aggregate_type: Annotated[str | None, Field(alias="outbox.aggregatetype")] = None


class PollingOptions(_DatabaseOptions):
    table: Annotated[str, Field(alias="table.name", min_length=1)]
    mode: Mode = "timestamp+incrementing"
    timestamp_column: Annotated[str | None, Field(alias="timestamp.column.name")] = None
    incrementing_column: Annotated[str | None, Field(alias="incrementing.column.name")] = None

    @model_validator(mode="after")
    def _columns_for_mode(self) -> PollingOptions:
        if "timestamp" in self.mode and not self.timestamp_column:
            raise ValueError(f"timestamp.column.name: required in mode {self.mode}")
        if "incrementing" in self.mode and not self.incrementing_column:
            raise ValueError(f"incrementing.column.name: required in mode {self.mode}")
        return self


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, int | str | float) or value is None:
        return value
    return str(value)


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "datetime" in value:
        return dt.datetime.fromisoformat(value["datetime"])
    if isinstance(value, dict) and "date" in value:
        return dt.date.fromisoformat(value["date"])
    return value


def _aware(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return None


class _DatabaseSource(SourceConnector):
    """Reads rows after the stored position, ordered by (timestamp, incrementing id)."""

    options: _DatabaseOptions
    timestamp_column: str | None
    incrementing_column: str | None

    def start(self) -> None:
        self.offsets = OffsetStore(self.context.store_engine)
        try:
            self.engine: Engine = make_engine(self.options.connection_url)
        except ModuleNotFoundError as error:
            raise ValueError(
                f"connection.url: its database driver is not installed: pip install {error.name}"
            ) from None
        try:
            self.table = Table(
                self.table_name,
                MetaData(),
                autoload_with=self.engine,
                schema=self.options.table_schema,
            )
        except NoSuchTableError:
            raise ValueError(f"table.name: no table {self.table_name!r} in the source") from None
        for column in (self.timestamp_column, self.incrementing_column):
            if column is not None and column not in self.table.c:
                raise ValueError(f"column {column!r} is not in table {self.table_name!r}")
        stored = self.offsets.load(self.spec.name) or {}
        self.cursor: dict[str, Any] = {k: _decode(v) for k, v in stored.items()}

    @property
    def table_name(self) -> str:
        return str(getattr(self.options, "table"))  # noqa: B009

    def stop(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.dispose()

    def position(self) -> Mapping[str, Any] | None:
        return {k: _encode(v) for k, v in self.cursor.items()} or None

    def query(self) -> Any:
        t = self.table
        ts = t.c[self.timestamp_column] if self.timestamp_column else None
        inc = t.c[self.incrementing_column] if self.incrementing_column else None
        last_ts, last_inc = self.cursor.get("timestamp"), self.cursor.get("incrementing")
        query = select(t)
        if ts is not None and inc is not None:
            if last_ts is not None:
                query = query.where(or_(ts > last_ts, and_(ts == last_ts, inc > last_inc)))
            query = query.order_by(ts, inc)
        elif inc is not None:
            if last_inc is not None:
                query = query.where(inc > last_inc)
            query = query.order_by(inc)
        elif ts is not None:
            if last_ts is not None:
                query = query.where(ts > last_ts)
            query = query.order_by(ts)
        if ts is not None and self.options.timestamp_delay_ms:
            horizon = dt.datetime.now(dt.UTC) - dt.timedelta(
                milliseconds=self.options.timestamp_delay_ms
            )
            query = query.where(ts < horizon)
        return query.limit(self.options.batch_max_rows)

    def poll(self) -> Sequence[SourceRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(self.query()).mappings().all()
        return [self.record(dict(row)) for row in rows]

    def row_position(self, row: Mapping[str, Any]) -> dict[str, Any]:
        position = {}
        if self.timestamp_column:
            position["timestamp"] = row[self.timestamp_column]
        if self.incrementing_column:
            position["incrementing"] = row[self.incrementing_column]
        return position

    def record(self, row: dict[str, Any]) -> SourceRecord:
        raise NotImplementedError

    def commit(self, outcome: BatchOutcome) -> None:
        if not outcome.done:
            return
        position = dict(outcome.done[-1].position)
        self.offsets.save(self.spec.name, {k: _encode(v) for k, v in position.items()})
        self.cursor = position


class OutboxConnector(_DatabaseSource):
    """``connector.class: outbox`` — events written to a transactional outbox table."""

    Options = OutboxOptions
    timestamp_column = "created_at"
    incrementing_column = "id"

    def query(self) -> Any:
        query = super().query()
        if aggregate := getattr(self.options, "aggregate_type", None):
            query = query.where(self.table.c["aggregatetype"] == aggregate)
        return query

    def record(self, row: dict[str, Any]) -> SourceRecord:
        raw = row.get("payload")
        problem = None
        data: Mapping[str, Any] = {}
        if isinstance(raw, str | bytes):
            try:
                data = jsontext.loads(raw)
            except json.JSONDecodeError as error:
                problem = Problem("payload", f"not JSON ({error.msg} at {error.pos})")
                data = {"payload": raw if isinstance(raw, str) else raw.decode(errors="replace")}
            except ValueError as error:  # nested too deep, or bytes that are not UTF-8
                problem = Problem("payload", f"not usable JSON ({error})")
                data = {"payload": raw if isinstance(raw, str) else raw.decode(errors="replace")}
        elif isinstance(raw, Mapping):
            data = raw
        else:
            problem = Problem("payload", f"expected a JSON object, got {type(raw).__name__}")
        if not problem and not isinstance(data, Mapping):
            problem = Problem("payload", f"expected a JSON object, got {type(data).__name__}")
            data = {}
        return SourceRecord(
            data=data,
            identity=str(row["id"]),
            ref=f"outbox id={row['id']}",
            position=self.row_position(row),
            time=_aware(row.get("created_at")),
            problem=problem,
        )


class PollingConnector(_DatabaseSource):
    """``connector.class: polling`` — new and changed rows of a plain table."""

    Options = PollingOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options: PollingOptions = self.options  # type: ignore[assignment]
        mode = options.mode
        self.timestamp_column = options.timestamp_column if "timestamp" in mode else None
        self.incrementing_column = options.incrementing_column if "incrementing" in mode else None

    def record(self, row: dict[str, Any]) -> SourceRecord:
        position = self.row_position(row)
        identity = "|".join(str(_encode(position[k])) for k in sorted(position))
        ref = ", ".join(f"{k}={v}" for k, v in position.items())
        return SourceRecord(
            data=row,
            identity=identity,
            ref=f"{self.table_name} {ref}",
            position=position,
            time=_aware(position.get("timestamp")),
        )
