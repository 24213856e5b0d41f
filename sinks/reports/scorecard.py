"""The integration scorecard: per agency, is it connected, how fresh is its data, what fails.

Read side of the central store for operations (``simpul status``, the worker's ``/status``
page and its freshness gauges). Everything comes from two indexed tables:

* ``event_log`` -- index (source, stored_at): the newest stored event of an agency and its
  events in the last 24 h are index range scans, one scalar subquery per agency, all in one
  statement (one round trip whatever the number of agencies).
* ``dead_letters`` -- index (agency, dead_lettered_at): dead letters in the last 24 h.

"Last event" is when the event reached the central store (``stored_at``, the server's
clock), not the agency's own ``ce_time``: a monthly export of old letters is fresh when it
arrives, and an agency's clock cannot make it look connected.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import html
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, select

from simpul.topology.connectors import ConnectorConfigError, ConnectorSpec, located_connectors
from simpul.topology.model import Agency, Topology
from simpul.topology.subscriptions import Subscription
from sinks.central_store import event_log
from sinks.dead_letters import dead_letters

WINDOW = dt.timedelta(hours=24)
#: Dead-letter stages that are failures on Simpul's side or downstream, not the agency's data.
ERROR_STAGES = ("store", "join", "webhook")


@dataclass(frozen=True, slots=True)
class AgencyStatus:
    code: str
    name: str
    cadence: str
    cadence_seconds: int
    publishes: bool
    status: str  # connected | stale | never | receives-only
    last_event_at: dt.datetime | None
    events_24h: int
    dead_letters_24h: int
    errors_24h: int
    connectors: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        return self.status == "connected"

    @property
    def dead_letter_rate(self) -> float | None:
        total = self.events_24h + self.dead_letters_24h
        return self.dead_letters_24h / total if total else None

    @property
    def error_rate(self) -> float | None:
        total = self.events_24h + self.dead_letters_24h
        return self.errors_24h / total if total else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_event_at"] = self.last_event_at.isoformat() if self.last_event_at else None
        data["connected"] = self.connected
        data["dead_letter_rate"] = self.dead_letter_rate
        data["error_rate"] = self.error_rate
        return data


@dataclass(frozen=True, slots=True)
class Scorecard:
    city: str
    generated_at: dt.datetime
    agencies: list[AgencyStatus]

    @property
    def expected(self) -> list[AgencyStatus]:
        """Agencies expected to publish (the M of "N of M connected")."""
        return [a for a in self.agencies if a.publishes]

    @property
    def connected_count(self) -> int:
        return sum(a.connected for a in self.expected)

    @property
    def summary(self) -> str:
        return f"{self.connected_count} of {len(self.expected)} agencies connected"

    def as_dict(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "generated_at": self.generated_at.isoformat(),
            "summary": self.summary,
            "connected": self.connected_count,
            "expected": len(self.expected),
            "window_hours": WINDOW.total_seconds() / 3600,
            "agencies": [a.as_dict() for a in self.agencies],
        }


def connectors_by_agency(connectors: Iterable[ConnectorSpec]) -> dict[str, list[str]]:
    """Connector names and kinds per agency, e.g. ``{"bkpsdm": ["simpeg-pegawai (polling)"]}``."""
    found: dict[str, list[str]] = {}
    for connector in connectors:
        found.setdefault(connector.agency, []).append(f"{connector.name} ({connector.kind})")
    return found


def declared_connectors(topology: Topology, directory: Path | None) -> list[ConnectorSpec]:
    """The topology's connectors plus those in ``directory``'s files; an invalid file is left
    out here (``simpul topology check`` and ``simpul connect`` report it by name)."""
    if directory is None:
        return list(topology.connectors)
    try:
        return [spec for spec, _ in located_connectors(topology, directory)]
    except ConnectorConfigError:
        return list(topology.connectors)


def subscriptions_by_agency(subscriptions: Iterable[Subscription]) -> dict[str, list[str]]:
    """Subscription names per subscriber agency, e.g. ``{"bkd": ["bkd-tpp"]}``."""
    found: dict[str, list[str]] = {}
    for subscription in subscriptions:
        found.setdefault(subscription.agency, []).append(subscription.name)
    return found


def _publishes(topology: Topology, agency: Agency, connectors: dict[str, list[str]]) -> bool:
    if agency.code in connectors:
        return True
    return any(
        fnmatch.fnmatchcase(agency.code, pattern)
        for event_type in topology.event_types
        for pattern in event_type.producers
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _facts(
    engine: Engine, codes: Iterable[str], since: dt.datetime
) -> dict[str, tuple[Any, int, int, int]]:
    """(last stored_at, events since, dead letters since, errors since) per agency code."""
    codes = list(codes)
    if not codes:
        return {}
    columns = []
    for i, code in enumerate(codes):
        source = f"/agency/{code}"
        columns += [
            select(func.max(event_log.c.stored_at))
            .where(event_log.c.source == source)
            .scalar_subquery()
            .label(f"last_{i}"),
            select(func.count())
            .select_from(event_log)
            .where(and_(event_log.c.source == source, event_log.c.stored_at >= since))
            .scalar_subquery()
            .label(f"events_{i}"),
            select(func.count())
            .select_from(dead_letters)
            .where(and_(dead_letters.c.agency == code, dead_letters.c.dead_lettered_at >= since))
            .scalar_subquery()
            .label(f"dead_{i}"),
            select(func.count())
            .select_from(dead_letters)
            .where(
                and_(
                    dead_letters.c.agency == code,
                    dead_letters.c.dead_lettered_at >= since,
                    dead_letters.c.stage.in_(ERROR_STAGES),
                )
            )
            .scalar_subquery()
            .label(f"errors_{i}"),
        ]
    with engine.connect() as conn:
        row = conn.execute(select(*columns)).one()
    return {
        code: (row[4 * i], row[4 * i + 1] or 0, row[4 * i + 2] or 0, row[4 * i + 3] or 0)
        for i, code in enumerate(codes)
    }


def _as_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return _utc(value)
    # SQLite returns a scalar subquery's max() as text: 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC).
    return _utc(dt.datetime.fromisoformat(str(value)))


def build_scorecard(
    engine: Engine,
    topology: Topology,
    now: dt.datetime | None = None,
    connectors_dir: Path | None = None,
) -> Scorecard:
    """Per agency: connected or not, freshness, volumes, failures, connectors, subscriptions.

    ``connectors_dir`` adds the connectors declared in files beside the topology.
    """
    now = _utc(now) or dt.datetime.now(dt.UTC)
    connectors = connectors_by_agency(declared_connectors(topology, connectors_dir))
    subscriptions = subscriptions_by_agency(topology.subscriptions)
    agencies = [a for a in topology.agencies if not a.system]
    facts = _facts(engine, [a.code for a in agencies], now - WINDOW)
    statuses = []
    for agency in agencies:
        raw_last, events, dead, errors = facts[agency.code]
        last = _as_datetime(raw_last)
        publishes = _publishes(topology, agency, connectors)
        if not publishes:
            status = "receives-only"
        elif last is None:
            status = "never"
        elif (now - last).total_seconds() <= agency.cadence_seconds:
            status = "connected"
        else:
            status = "stale"
        statuses.append(
            AgencyStatus(
                code=agency.code,
                name=agency.name,
                cadence=agency.cadence,
                cadence_seconds=agency.cadence_seconds,
                publishes=publishes,
                status=status,
                last_event_at=last,
                events_24h=int(events),
                dead_letters_24h=int(dead),
                errors_24h=int(errors),
                connectors=connectors.get(agency.code, []),
                subscriptions=subscriptions.get(agency.code, []),
            )
        )
    return Scorecard(topology.city, now, statuses)


# Presentation, shared by the HTML page and the CLI.

STATUS_LABELS = {
    "connected": "connected",
    "stale": "STALE: silent past its cadence",
    "never": "never published",
    "receives-only": "receives only",
}


def age(last: dt.datetime | None, now: dt.datetime) -> str:
    if last is None:
        return "never"
    seconds = max(0, int((now - last).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def render_html(card: Scorecard) -> str:
    """A plain, self-contained HTML page (no scripts) that refreshes itself every 30 s."""
    e = html.escape
    rows = []
    for a in card.agencies:
        last = a.last_event_at.strftime("%Y-%m-%d %H:%M UTC") if a.last_event_at else "-"
        rows.append(
            f'<tr class="{e(a.status)}" data-agency="{e(a.code)}">'
            f"<td><b>{e(a.name)}</b><br><small>{e(a.code)}</small></td>"
            f'<td class="status">{e(STATUS_LABELS[a.status])}</td>'
            f"<td>{e(a.cadence if a.publishes else '-')}</td>"
            f"<td>{e(last)}<br><small>{e(age(a.last_event_at, card.generated_at))}</small></td>"
            f'<td class="num">{a.events_24h}</td>'
            f'<td class="num">{a.dead_letters_24h} ({e(percent(a.dead_letter_rate))})</td>'
            f'<td class="num">{a.errors_24h} ({e(percent(a.error_rate))})</td>'
            f"<td>{e(', '.join(a.connectors) or '-')}</td>"
            f"<td>{e(', '.join(a.subscriptions) or '-')}</td>"
            "</tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<title>Simpul status: {e(card.city)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left; }}
td.num {{ text-align: right; }}
tr.connected td.status {{ color: #176f2c; }}
tr.stale td.status, tr.never td.status {{ color: #b00020; font-weight: bold; }}
tr.stale, tr.never {{ background: #fff0f0; }}
tr.receives-only td.status {{ color: #666; }}
</style></head>
<body>
<h1>Simpul integration status: {e(card.city)}</h1>
<p id="summary"><strong>{e(card.summary)}</strong>
(generated {e(card.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))};
counts over the last 24 hours)</p>
<table id="agencies">
<thead><tr><th>Agency</th><th>Status</th><th>Cadence</th><th>Last event</th>
<th>Events 24 h</th><th>Dead letters 24 h</th><th>Errors 24 h</th>
<th>Connectors</th><th>Subscriptions</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""


def export_gauges(card: Scorecard) -> None:
    """Set the per-agency freshness gauges the dashboard and the alert rules read."""
    from simpul import metrics

    for a in card.expected:
        metrics.AGENCY_CADENCE.labels(a.code).set(a.cadence_seconds)
        metrics.AGENCY_CONNECTED.labels(a.code).set(1 if a.connected else 0)
        if a.last_event_at is not None:
            metrics.AGENCY_LAST_EVENT.labels(a.code).set(a.last_event_at.timestamp())
