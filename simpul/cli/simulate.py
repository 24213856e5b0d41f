"""`simpul simulate`: publish generated events from every onboarded agency, paced, with a
share of duplicates and deliberately invalid events."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from simpul.cli.common import checked_settings, checked_topology, console
from simpul.settings import Settings

if TYPE_CHECKING:  # Avro and Kafka load when a simulation runs, not for `simpul --help`
    from simpul.citydata import PaluData
    from simpul.publisher import Publisher

INVALID_KINDS = ("bad_nik", "bad_kelurahan", "unauthorized", "undecodable", "missing_header")


@dataclass
class SimulationReport:
    published: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    invalid_kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return (
            sum(self.published.values())
            + sum(self.duplicates.values())
            + sum(self.invalid.values())
        )


def simulate(
    publishers: Callable[[str], Publisher],
    data: PaluData,
    *,
    rate: float,
    duration: float,
    duplicates: float = 0.0,
    invalid: float = 0.0,
    on_tick: Callable[[int, int], None] | None = None,
    limit: int | None = None,
) -> SimulationReport:
    """Publish ``rate`` events/s for ``duration`` s (or ``limit`` events), paced.

    ``publishers(agency_code)`` returns a `Publisher`. A duplicate re-sends an earlier event
    with its original ``ce_id``; an invalid event is broken in one of `INVALID_KINDS`.
    """
    from simpul.citydata import WEIGHTS

    rng = data.rng
    report = SimulationReport()
    total = limit if limit is not None else int(rate * duration)
    types = data.simulated_types
    weights = [WEIGHTS[t] for t in types]
    recent: list[tuple[str, str, dict[str, Any], str, dt.datetime]] = []
    started = time.monotonic()
    for i in range(total):
        due = started + i / rate if rate > 0 else started
        if (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        now = dt.datetime.now(dt.UTC)
        roll = rng.random()
        if recent and roll < duplicates:
            event_type, agency, payload, ce_id, when = rng.choice(recent)
            publishers(agency).publish(event_type, payload, id=ce_id, time=when)
            report.duplicates[event_type] += 1
        elif roll < duplicates + invalid:
            event_type = rng.choices(types, weights)[0]
            kind = rng.choice(INVALID_KINDS)
            _publish_invalid(publishers, data, event_type, kind, now)
            report.invalid[event_type] += 1
            report.invalid_kinds[kind] += 1
        else:
            event_type = rng.choices(types, weights)[0]
            payload = data.payload(event_type, now)
            agency = data.producer_of(event_type, payload)
            ce_id = str(uuid.uuid4())
            publishers(agency).publish(event_type, payload, id=ce_id, time=now)
            report.published[event_type] += 1
            recent.append((event_type, agency, payload, ce_id, now))
            if len(recent) > 1000:
                recent.pop(0)
        if on_tick and (i % 50 == 0 or i == total - 1):
            on_tick(i + 1, total)
    report.seconds = time.monotonic() - started
    return report


def _publish_invalid(
    publishers: Callable[[str], Publisher],
    data: PaluData,
    event_type: str,
    kind: str,
    now: dt.datetime,
) -> None:
    from simpul.codec import frame
    from simpul.envelope import Envelope

    payload = data.payload(event_type, now)
    agency = data.producer_of(event_type, payload)
    publisher = publishers(agency)
    etype = publisher.catalog.topology.event_type(event_type)
    if kind in ("bad_nik", "bad_kelurahan"):
        publisher.publish(event_type, data.corrupt(kind, payload), time=now, validate=False)
    elif kind == "unauthorized":
        intruder = data.intruder(event_type)
        publishers(intruder).publish(event_type, payload, time=now, validate=False)
    elif kind == "undecodable":
        key = str(payload[etype.key]).encode()
        schema_id = publisher.catalog.latest_schema(event_type).id
        headers = Envelope(type=event_type, source=f"/agency/{agency}", time=now).to_headers()
        publisher.send_signed(etype.topic("in"), key, frame(schema_id, b"\xff\xffgarbage"), headers)
    elif kind == "missing_header":
        key = str(payload[etype.key]).encode()
        schema = publisher.catalog.latest_schema(event_type)
        headers = [
            h
            for h in Envelope(type=event_type, source=f"/agency/{agency}", time=now).to_headers()
            if h[0] != "ce_id"
        ]
        publisher.send_signed(etype.topic("in"), key, schema.encode(payload), headers)
    else:
        raise ValueError(f"unknown invalid kind {kind!r}")


def simulate_command(
    rate: Annotated[float, typer.Option(min=0.1, help="Events per second")] = 50.0,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds to run")] = 10.0,
    duplicates: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share re-sent with the same ce_id")
    ] = 0.05,
    invalid: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share deliberately invalid")
    ] = 0.02,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same city)")] = 7271,
) -> None:
    """Publish realistic generated events from every onboarded agency of the topology's city."""
    report = run_simulation(
        checked_settings(),
        rate=rate,
        duration=duration,
        duplicates=duplicates,
        invalid=invalid,
        seed=seed,
    )
    table = Table("event type", "published", "duplicates", "invalid", title="simulated")
    for name in sorted(set(report.published) | set(report.invalid) | set(report.duplicates)):
        table.add_row(
            name,
            str(report.published[name]),
            str(report.duplicates[name]),
            str(report.invalid[name]),
        )
    console.print(table)


def run_simulation(
    settings: Settings,
    *,
    rate: float,
    duration: float,
    duplicates: float,
    invalid: float,
    seed: int,
    quiet: bool = False,
) -> SimulationReport:
    from simpul.catalog import EventCatalog
    from simpul.citydata import PaluData
    from simpul.publisher import PublisherPool
    from simpul.registry.client import make_resolver

    topology = checked_topology(settings)
    catalog = EventCatalog(topology, make_resolver(settings))
    data = PaluData(topology, seed=seed)
    with (
        PublisherPool(settings, catalog) as publishers,
        Progress(
            TextColumn("publishing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        ) as progress,
    ):
        task = progress.add_task("publish", total=int(rate * duration))
        report = simulate(
            publishers,
            data,
            rate=rate,
            duration=duration,
            duplicates=duplicates,
            invalid=invalid,
            on_tick=lambda done, _: progress.update(task, completed=done),
        )
    return report
