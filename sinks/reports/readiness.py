"""Onboarding and data readiness per agency, and the weekly "N of M agencies connected".

For a city connecting its OPD in waves (Kota Malang: four or five first; Kota Batu: 15 of 32,
the others' data "not tidy, not updated"): per agency, whether it is connected, how much it
sends per day, what share is rejected and why, which fields are most often missing or
malformed, and how fresh its data is against its cadence. Read from the central store's
``event_log`` and ``dead_letters`` (the indexes the scorecard uses); nothing personal is shown:
dead-letter reasons are reduced to codes and field names.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, select

from simpul.topology.model import Topology
from sinks.central_store import event_log
from sinks.dead_letters import dead_letters
from sinks.reports.scorecard import ERROR_STAGES, AgencyStatus, _as_datetime, build_scorecard

#: "kelurahan_code: village code ..." / "nip: missing" -> the field named before the colon.
_FIELD = re.compile(r"(?:^|; )([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): ")
_MISSING = re.compile(r"\bmissing\b|\brequired\b|\bis <?None\b", re.IGNORECASE)
#: Field-like prefixes that are envelope parts, not payload fields.
_NOT_FIELDS = {"ce_source", "ce_id", "ce_type", "ce_time", "key", "schema", "payload"}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    missing: int
    malformed: int

    @property
    def total(self) -> int:
        return self.missing + self.malformed


@dataclass
class AgencyReadiness:
    code: str
    name: str
    onboarded: bool
    status: str  # the scorecard's: connected | stale | never | receives-only
    cadence: str
    events: int
    rejected: int
    days: int
    last_event_at: dt.datetime | None
    cadence_seconds: int
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    fields: list[FieldProblem] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        return self.status == "connected"

    @property
    def events_per_day(self) -> float:
        return self.events / self.days

    @property
    def rejected_share(self) -> float | None:
        total = self.events + self.rejected
        return self.rejected / total if total else None

    def freshness(self, now: dt.datetime) -> float | None:
        """Age of the newest event as a share of the cadence: above 1 is stale."""
        if self.last_event_at is None:
            return None
        return (now - self.last_event_at).total_seconds() / self.cadence_seconds

    def as_dict(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "onboarded": self.onboarded,
            "status": self.status,
            "connected": self.connected,
            "cadence": self.cadence,
            "events_per_day": round(self.events_per_day, 2),
            "rejected_share": self.rejected_share,
            "top_reasons": [{"code": c, "count": n} for c, n in self.top_reasons],
            "fields": [
                {"field": f.field, "missing": f.missing, "malformed": f.malformed}
                for f in self.fields
            ],
            "last_event_at": self.last_event_at.isoformat() if self.last_event_at else None,
            "freshness": self.freshness(now),
        }


@dataclass(frozen=True, slots=True)
class WeekConnected:
    week_start: dt.date
    connected: int
    expected: int

    @property
    def label(self) -> str:
        return f"{self.connected} of {self.expected} agencies connected"


@dataclass
class Readiness:
    city: str
    generated_at: dt.datetime
    days: int
    agencies: list[AgencyReadiness]
    weeks: list[WeekConnected]

    def as_dict(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "generated_at": self.generated_at.isoformat(),
            "days": self.days,
            "agencies": [a.as_dict(self.generated_at) for a in self.agencies],
            "weeks": [
                {
                    "week_start": w.week_start.isoformat(),
                    "connected": w.connected,
                    "expected": w.expected,
                }
                for w in self.weeks
            ],
        }


def field_problems(reasons: list[str], limit: int = 5) -> list[FieldProblem]:
    """The fields most often named in dead-letter reasons, missing apart from malformed."""
    missing: Counter[str] = Counter()
    malformed: Counter[str] = Counter()
    for reason in reasons:
        for part in reason.split("; "):
            match = _FIELD.match(part)
            if not match or match.group(1) in _NOT_FIELDS:
                continue
            (missing if _MISSING.search(part) else malformed)[match.group(1)] += 1
    names = sorted(set(missing) | set(malformed), key=lambda n: (-missing[n] - malformed[n], n))
    return [FieldProblem(n, missing[n], malformed[n]) for n in names[:limit]]


def _event_counts(engine: Engine, codes: list[str], since: dt.datetime) -> dict[str, int]:
    sources = {f"/agency/{c}": c for c in codes}
    stmt = (
        select(event_log.c.source, func.count())
        .where(and_(event_log.c.source.in_(sources), event_log.c.stored_at >= since))
        .group_by(event_log.c.source)
    )
    with engine.connect() as conn:
        return {sources[s]: int(n) for s, n in conn.execute(stmt)}


def _rejections(
    engine: Engine, since: dt.datetime
) -> tuple[dict[str, Counter[str]], dict[str, list[str]]]:
    codes: dict[str, Counter[str]] = {}
    reasons: dict[str, list[str]] = {}
    d = dead_letters.c
    stmt = select(d.agency, d.code, d.reason).where(
        and_(d.dead_lettered_at >= since, d.stage.not_in(ERROR_STAGES))
    )
    with engine.connect() as conn:
        for agency, code, reason in conn.execute(stmt):
            codes.setdefault(agency, Counter())[code] += 1
            reasons.setdefault(agency, []).append(reason)
    return codes, reasons


def weekly_connected(
    engine: Engine, topology: Topology, expected: list[AgencyStatus], now: dt.datetime, weeks: int
) -> list[WeekConnected]:
    """For each of the last ``weeks`` weeks (Monday to Sunday): how many of the agencies
    expected to publish had sent within their cadence at the week's end."""
    agencies = {f"/agency/{a.code}": a for a in expected}
    longest = max((a.cadence_seconds for a in expected), default=86400)
    monday = (now - dt.timedelta(days=now.weekday())).date()
    history = []
    for back in range(weeks - 1, -1, -1):
        start = monday - dt.timedelta(weeks=back)
        end = min(dt.datetime.combine(start + dt.timedelta(days=7), dt.time(), tzinfo=dt.UTC), now)
        stmt = (
            select(event_log.c.source, func.max(event_log.c.stored_at))
            .where(
                and_(
                    event_log.c.source.in_(agencies),
                    event_log.c.stored_at <= end,
                    event_log.c.stored_at > end - dt.timedelta(seconds=longest),
                )
            )
            .group_by(event_log.c.source)
        )
        with engine.connect() as conn:
            last = {s: _as_datetime(t) for s, t in conn.execute(stmt)}
        connected = sum(
            1
            for source, agency in agencies.items()
            if (when := last.get(source)) is not None
            and (end - when).total_seconds() <= agency.cadence_seconds
        )
        history.append(WeekConnected(start, connected, len(agencies)))
    return history


def build_readiness(
    engine: Engine,
    topology: Topology,
    *,
    days: int = 7,
    weeks: int = 12,
    now: dt.datetime | None = None,
    connectors_dir: Path | None = None,
) -> Readiness:
    now = now or dt.datetime.now(dt.UTC)
    card = build_scorecard(engine, topology, now, connectors_dir)
    since = now - dt.timedelta(days=days)
    events = _event_counts(engine, [a.code for a in card.agencies], since)
    codes, reasons = _rejections(engine, since)
    agencies = []
    for status in card.agencies:
        agency = topology.agency(status.code)
        agencies.append(
            AgencyReadiness(
                code=status.code,
                name=status.name,
                onboarded=agency.onboarded,
                status=status.status,
                cadence=status.cadence,
                events=events.get(status.code, 0),
                rejected=sum(codes.get(status.code, Counter()).values()),
                days=days,
                last_event_at=status.last_event_at,
                cadence_seconds=status.cadence_seconds,
                top_reasons=codes.get(status.code, Counter()).most_common(3),
                fields=field_problems(reasons.get(status.code, [])),
            )
        )
    return Readiness(
        topology.city,
        now,
        days,
        agencies,
        weekly_connected(engine, topology, card.expected, now, weeks),
    )


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f} %"


def render_html(report: Readiness) -> str:
    """The readiness page: one row per agency and the weekly history."""
    e = html.escape
    rows = []
    for a in report.agencies:
        fresh = a.freshness(report.generated_at)
        problems = ", ".join(
            f"{f.field} ({f.missing} missing, {f.malformed} malformed)" for f in a.fields
        )
        rows.append(
            "<tr>"
            f"<td>{e(a.name)}<br><small>{e(a.code)}</small></td>"
            f"<td>{'yes' if a.onboarded else 'not yet'}</td>"
            f"<td class='{e(a.status)}'>{e(a.status)}</td>"
            f"<td>{a.events_per_day:.1f}</td><td>{_pct(a.rejected_share)}</td>"
            f"<td>{e(', '.join(f'{c} ({n})' for c, n in a.top_reasons)) or '-'}</td>"
            f"<td>{e(problems) or '-'}</td>"
            f"<td>{'-' if fresh is None else f'{fresh:.2f} × {e(a.cadence)}'}</td>"
            "</tr>"
        )
    weeks = "".join(
        f"<tr><td>{w.week_start.isoformat()}</td><td>{e(w.label)}</td></tr>" for w in report.weeks
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data readiness: {e(report.city)}</title>
<style>body{{font-family:sans-serif}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}
.connected{{color:#070}}.stale,.never{{color:#b00}}.receives-only{{color:#777}}</style></head>
<body><h1>Data readiness: {e(report.city)}</h1>
<p>Last {report.days} days; generated {e(report.generated_at.isoformat(timespec="seconds"))}.
Freshness: age of the newest event as a multiple of the agency's cadence (above 1 is stale).</p>
<table id="agencies"><tr><th>agency</th><th>onboarded</th><th>status</th><th>events/day</th>
<th>rejected</th><th>top reasons</th><th>fields missing or malformed</th><th>freshness</th></tr>
{"".join(rows)}</table>
<h2>Agencies connected, week by week</h2>
<table id="weeks"><tr><th>week from</th><th>connected</th></tr>{weeks}</table>
</body></html>"""
