"""What the console reads from the central store and the broker, beyond the scorecard:
hourly trends, the dead-letter log, one dead letter's content (masked), replay outcomes."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from simpul.catalog import EventCatalog
from simpul.codec import unframe
from simpul.deadletter import DeadLetter, list_dead_letters
from simpul.errors import InvalidMessage
from simpul.settings import Settings
from simpul.topology.model import EventType
from simpul.topology.subscriptions import mask
from sinks.central_store import event_log
from sinks.dead_letters import DeadLetterRow, dead_letters

HOURS = 24
#: Runs of 12+ digits are NIK (16), NIP (18), NIB (13) or worse: never shown whole. Kelurahan
#: codes (10 digits) stay readable.
_LONG_NUMBER = re.compile(r"\d{12,}")
#: Payload fields that name a person; masked whatever their declared identifier kind.
PERSONAL_FIELDS = frozenset({"name", "nama", "nama_lengkap", "applicant_name", "resident_name"})


def mask_text(text: str) -> str:
    """Mask every long digit run (NIK, NIP) inside free text, such as a reason or header."""
    return _LONG_NUMBER.sub(lambda m: mask(m.group(0)), text)


def _hour_bucket(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "postgresql":
        return func.to_char(func.date_trunc("hour", column), "YYYY-MM-DD HH24")
    return func.strftime("%Y-%m-%d %H", column)


def hourly_trend(
    engine: Engine, codes: Sequence[str], now: dt.datetime
) -> dict[str, tuple[list[int], list[int]]]:
    """Per agency, events stored and dead letters in each of the last 24 hours (oldest first).

    Hours are UTC buckets; both queries use the (source|agency, time) indexes.
    """
    now = now.astimezone(dt.UTC)
    since = (now - dt.timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    labels = [(since + dt.timedelta(hours=i)).strftime("%Y-%m-%d %H") for i in range(HOURS)]
    index = {label: i for i, label in enumerate(labels)}
    result = {code: ([0] * HOURS, [0] * HOURS) for code in codes}
    sources = {f"/agency/{code}": code for code in codes}
    # SQLite keeps naive UTC text; compare with a naive bound there.
    bound = since if engine.dialect.name == "postgresql" else since.replace(tzinfo=None)
    ev_bucket = _hour_bucket(engine, event_log.c.stored_at)
    dl_bucket = _hour_bucket(engine, dead_letters.c.dead_lettered_at)
    with engine.connect() as conn:
        for source, bucket, count in conn.execute(
            select(event_log.c.source, ev_bucket, func.count())
            .where(event_log.c.source.in_(sources), event_log.c.stored_at >= bound)
            .group_by(event_log.c.source, ev_bucket)
        ):
            if bucket in index:
                result[sources[source]][0][index[bucket]] = int(count)
        for agency, bucket, count in conn.execute(
            select(dead_letters.c.agency, dl_bucket, func.count())
            .where(dead_letters.c.agency.in_(list(codes)), dead_letters.c.dead_lettered_at >= bound)
            .group_by(dead_letters.c.agency, dl_bucket)
        ):
            if bucket in index and agency in result:
                result[agency][1][index[bucket]] = int(count)
    return result


@dataclass(frozen=True, slots=True)
class LoggedLetter:
    row: DeadLetterRow
    stored_at: dt.datetime | None  # the event is in the store now (replayed after a fix)

    @property
    def reason(self) -> str:
        return mask_text(self.row.reason)


def logged_dead_letters(
    engine: Engine,
    *,
    event_type: str | None = None,
    agency: str | None = None,
    code: str | None = None,
    limit: int = 200,
) -> list[LoggedLetter]:
    """The dead-letter log, newest first, with whether each event has since been stored."""
    d = dead_letters.c
    query = (
        select(dead_letters, event_log.c.stored_at)
        .outerjoin(event_log, event_log.c.ce_id == d.ce_id)
        .order_by(d.dead_lettered_at.desc())
        .limit(limit)
    )
    if event_type:
        query = query.where(d.type == event_type)
    if agency:
        query = query.where(d.agency == agency)
    if code:
        query = query.where(d.code == code)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    found = []
    for r in rows:
        data = dict(r._mapping)
        stored = data.pop("stored_at")
        found.append(LoggedLetter(DeadLetterRow(**data), stored))
    return found


def facets(engine: Engine) -> dict[str, list[str]]:
    """The distinct types, agencies and codes in the dead-letter log (the filter choices)."""
    d = dead_letters.c
    with engine.connect() as conn:
        return {
            name: list(conn.scalars(select(column).distinct().order_by(column)))
            for name, column in (("type", d.type), ("agency", d.agency), ("code", d.code))
        }


@dataclass(frozen=True, slots=True)
class Inspected:
    letter: DeadLetter
    headers: list[tuple[str, str]]
    key: str | None
    payload: dict[str, Any] | None
    decode_problem: str | None


def inspect_dead_letter(
    bootstrap: str | Settings, event_type: EventType, catalog: EventCatalog, ce_id: str
) -> Inspected | None:
    """One dead letter from ``simpul.dlq.<type>``, decoded where possible, NIK/NIP and names
    masked. None when the topic holds no letter with that ``ce_id``."""
    letter = next(
        (item for item in list_dead_letters(bootstrap, event_type) if item.ce_id == ce_id), None
    )
    if letter is None:
        return None
    headers = [
        (name, mask_text(value.decode("utf-8", "replace")) if value is not None else "")
        for name, value in letter.headers
    ]
    key = mask_text(letter.key.decode("utf-8", "replace")) if letter.key is not None else None
    payload: dict[str, Any] | None = None
    problem = None
    try:
        schema_id, body = unframe(letter.value)
        schema = catalog.resolver.by_id(schema_id)
        decoded = schema.decode_body(body)
        kinds = catalog.identifiers(schema)
        payload = {}
        for name, value in decoded.items():
            if isinstance(value, str) and (
                kinds.get(name) in ("nik", "nip") or name in PERSONAL_FIELDS
            ):
                payload[name] = mask(value)
            elif isinstance(value, str):
                payload[name] = mask_text(value)
            else:
                payload[name] = value
    except InvalidMessage as error:
        problem = error.reason
    except Exception as error:  # undecodable bytes are what some dead letters are
        problem = f"{type(error).__name__}: {mask_text(str(error))}"
    return Inspected(letter, headers, key, payload, problem)


@dataclass(frozen=True, slots=True)
class Outcome:
    ce_id: str
    state: str  # stored | dead_lettered | waiting
    detail: str | None = None


def replay_outcomes(engine: Engine, ce_ids: Sequence[str], since: dt.datetime) -> list[Outcome]:
    """What became of replayed events: stored, dead-lettered again (with the reason), or not
    yet seen by the worker."""
    if not ce_ids:
        return []
    bound = since if engine.dialect.name == "postgresql" else since.replace(tzinfo=None)
    with engine.connect() as conn:
        stored = set(conn.scalars(select(event_log.c.ce_id).where(event_log.c.ce_id.in_(ce_ids))))
        again = {
            r.ce_id: r.reason
            for r in conn.execute(
                select(dead_letters.c.ce_id, dead_letters.c.reason).where(
                    dead_letters.c.ce_id.in_(ce_ids), dead_letters.c.dead_lettered_at >= bound
                )
            )
        }
    outcomes = []
    for ce_id in ce_ids:
        if ce_id in stored:
            outcomes.append(Outcome(ce_id, "stored"))
        elif ce_id in again:
            outcomes.append(Outcome(ce_id, "dead_lettered", mask_text(again[ce_id])))
        else:
            outcomes.append(Outcome(ce_id, "waiting"))
    return outcomes
