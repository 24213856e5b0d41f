"""Staff whose local SIMPEG record differs from the national register (BKN's SIASN), field by field.

Both arrive as ``hr.employee.updated``: the city's personnel agency (BKPP, BKPSDM) from its
SIMPEG, and the national register through a ``rest`` connector under its own agency code
(``bkn``). The central store's ``event_log`` keeps every event with its source, so the newest
record of each NIP from each side is compared here, read-only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from sinks.central_store import event_log

EVENT_TYPE = "hr.employee.updated"
#: The master-data fields compared (the NIP is the key).
FIELDS = ("name", "unit_code", "position", "grade", "status")


@dataclass(frozen=True, slots=True)
class Difference:
    nip: str
    field: str
    local: Any
    national: Any


@dataclass
class Reconciliation:
    local_agency: str
    national_agency: str
    compared: int = 0
    matching: int = 0
    differences: list[Difference] = field(default_factory=list)
    only_local: list[str] = field(default_factory=list)
    only_national: list[str] = field(default_factory=list)

    @property
    def differing(self) -> int:
        return len({d.nip for d in self.differences})

    def summary(self) -> str:
        return (
            f"{self.compared} staff in both registers: {self.matching} match, "
            f"{self.differing} differ ({len(self.differences)} fields); "
            f"{len(self.only_local)} only in {self.local_agency}'s SIMPEG, "
            f"{len(self.only_national)} only in {self.national_agency}'s register"
        )


def _normal(value: Any) -> Any:
    # Registers differ in case and spacing ("Analis  kepegawaian"); that is not a difference.
    return " ".join(value.split()).casefold() if isinstance(value, str) else value


def _latest(engine: Engine, source: str) -> dict[str, dict[str, Any]]:
    latest: dict[str, tuple[dt.datetime, dict[str, Any]]] = {}
    stmt = (
        select(event_log.c.key, event_log.c.event_time, event_log.c.payload)
        .where(event_log.c.type == EVENT_TYPE, event_log.c.source == source)
        .execution_options(yield_per=10_000)
    )
    with engine.connect() as conn:
        for key, when, payload in conn.execute(stmt):
            when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
            if key not in latest or when >= latest[key][0]:
                latest[key] = (when, payload)
    return {key: payload for key, (_, payload) in latest.items()}


def reconcile(engine: Engine, local_agency: str, national_agency: str) -> Reconciliation:
    """Compare the newest record of every NIP from ``local_agency`` and ``national_agency``."""
    local = _latest(engine, f"/agency/{local_agency}")
    national = _latest(engine, f"/agency/{national_agency}")
    report = Reconciliation(local_agency, national_agency)
    for nip in sorted(set(local) & set(national)):
        report.compared += 1
        found = [
            Difference(nip, name, local[nip].get(name), national[nip].get(name))
            for name in FIELDS
            if _normal(local[nip].get(name)) != _normal(national[nip].get(name))
        ]
        report.differences.extend(found)
        report.matching += not found
    report.only_local = sorted(set(local) - set(national))
    report.only_national = sorted(set(national) - set(local))
    return report
