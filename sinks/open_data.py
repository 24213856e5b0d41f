"""Open data export for Satu Data Indonesia: aggregated, non-personal datasets as CSV + metadata.

Privacy by construction: the queries select only aggregate keys (kelurahan code, permit
type, document type, program) and counts -- never a NIK, NIP, name, business name, NIB or
document number -- and every count below `SUPPRESS_BELOW` is published as ``<5`` so that a
small cell cannot single out a resident (statistical disclosure control). No totals rows are
written, so a suppressed cell cannot be recovered by subtraction.

Reads the central store's current-state tables; works on SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, func, select

from simpul.topology import Topology
from sinks.central_store import documents, permits, recipients

SUPPRESS_BELOW = 5
SUPPRESSED = "<5"
LICENSE = "CC-BY-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
#: Kota Palu keeps Central Indonesia Time (WITA): a month is counted in local time.
TIMEZONE = "Asia/Makassar"
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
#: A category value is published only if it looks like a code, never free text.
_CATEGORY = re.compile(r"^[A-Z0-9][A-Z0-9_ .-]{0,39}$")


class ExportError(ValueError):
    """Bad export arguments; the message names the option and the reason."""


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    title: str
    type: str
    description: str
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Dataset:
    slug: str
    title: str
    title_id: str
    event_type: str
    description: str
    variables: tuple[Variable, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: Path
    files: list[Path]
    rows: dict[str, int]
    suppressed: dict[str, int]


def parse_period(period: str, timezone: str = TIMEZONE) -> tuple[dt.datetime, dt.datetime]:
    """``2026-11`` -> [start, end) of that month in local time, as UTC datetimes."""
    match = _PERIOD.fullmatch(period)
    if not match:
        raise ExportError(f"--period: {period!r} is not a month as YYYY-MM (e.g. 2026-11)")
    year, month = int(match.group(1)), int(match.group(2))
    zone = ZoneInfo(timezone)
    start = dt.datetime(year, month, 1, tzinfo=zone)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def _category(value: Any) -> str:
    text = str(value or "").strip().upper()
    return text if _CATEGORY.fullmatch(text) else "OTHER"


def _kelurahan_columns(topology: Topology) -> tuple[Variable, ...]:
    return (
        Variable("kode_kelurahan", "Kode kelurahan", "string", "Kepmendagri 10-digit code"),
        Variable("nama_kelurahan", "Nama kelurahan", "string", f"Kelurahan in {topology.city}"),
        Variable("kecamatan", "Kecamatan", "string", "District of the kelurahan"),
    )


def _kelurahan_names(topology: Topology, code: str) -> tuple[str, str, str]:
    kelurahan = {k.code: k for k in topology.kelurahan}.get(code)
    return (code, kelurahan.name, kelurahan.district) if kelurahan else (code, "", "")


COUNT = Variable(
    "jumlah",
    "Jumlah",
    "integer or '<5'",
    f"Count; values from 1 to {SUPPRESS_BELOW - 1} are published as '{SUPPRESSED}'",
    unit="count",
)


def _permits(engine: Engine, topology: Topology, start: dt.datetime, end: dt.datetime) -> Dataset:
    stmt = (
        select(permits.c.kelurahan_code, permits.c.permit_type, func.count())
        .where(and_(permits.c.issued_at >= start, permits.c.issued_at < end))
        .group_by(permits.c.kelurahan_code, permits.c.permit_type)
    )
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for kelurahan_code, permit_type, count in conn.execute(stmt):
            counts[(kelurahan_code, _category(permit_type))] += count
    rows = [(*_kelurahan_names(topology, k), t, n) for (k, t), n in sorted(counts.items())]
    return Dataset(
        slug="izin-terbit-per-kelurahan",
        title="Permits issued per kelurahan",
        title_id="Jumlah izin terbit per kelurahan",
        event_type="permit.issued",
        description="Permits issued in the month, by kelurahan of the business and permit type.",
        variables=(
            *_kelurahan_columns(topology),
            Variable("jenis_izin", "Jenis izin", "string", "Permit type (PBG, SIP, SLF, ...)"),
            COUNT,
        ),
        rows=rows,
    )


def _letters(engine: Engine, topology: Topology, start: dt.datetime, end: dt.datetime) -> Dataset:
    stmt = (
        select(documents.c.kelurahan_code, documents.c.document_type, func.count())
        .where(and_(documents.c.issued_at >= start, documents.c.issued_at < end))
        .group_by(documents.c.kelurahan_code, documents.c.document_type)
    )
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for kelurahan_code, document_type, count in conn.execute(stmt):
            counts[(kelurahan_code, _category(document_type))] += count
    rows = [(*_kelurahan_names(topology, k), t, n) for (k, t), n in sorted(counts.items())]
    return Dataset(
        slug="surat-keterangan-per-jenis",
        title="Letters issued by kelurahan offices, by type",
        title_id="Jumlah surat keterangan kelurahan per jenis",
        event_type="kelurahan.document.issued",
        description="Letters (SKTM, domisili, SKU, ...) issued in the month, by kelurahan.",
        variables=(
            *_kelurahan_columns(topology),
            Variable("jenis_surat", "Jenis surat", "string", "SKTM, DOMISILI, SKU, ..."),
            COUNT,
        ),
        rows=rows,
    )


def _recipients(engine: Engine, topology: Topology) -> Dataset:
    # Programs are a JSON list: exploded here, the same way on SQLite and PostgreSQL.
    stmt = select(recipients.c.kelurahan_code, recipients.c.programs).where(
        recipients.c.status == "ACTIVE"
    )
    counts: Counter[tuple[str, str]] = Counter()
    with engine.connect() as conn:
        for kelurahan_code, programs in conn.execute(stmt).yield_per(10_000):
            if isinstance(programs, str):
                programs = json.loads(programs)
            for program in set(programs or ()):
                counts[(kelurahan_code, _category(program))] += 1
    rows = [(*_kelurahan_names(topology, k), p, n) for (k, p), n in sorted(counts.items())]
    return Dataset(
        slug="penerima-bansos-per-program",
        title="Active social assistance recipients per program and kelurahan",
        title_id="Jumlah penerima bantuan sosial aktif per program per kelurahan",
        event_type="social.recipient.updated",
        description=(
            "Active DTKS recipients per program and kelurahan of residence, as held in the "
            "central store when the export ran (a snapshot, labelled with the period)."
        ),
        variables=(
            *_kelurahan_columns(topology),
            Variable("program", "Program", "string", "PKH, BPNT, PBI_JK, ATENSI"),
            COUNT,
        ),
        rows=rows,
    )


def _suppress(value: int) -> str:
    return SUPPRESSED if 0 < value < SUPPRESS_BELOW else str(value)


def _producer(topology: Topology, event_type: str) -> str:
    patterns = topology.event_type(event_type).producers
    names = [
        a.name
        for a in topology.agencies
        if any(fnmatch.fnmatchcase(a.code, pattern) for pattern in patterns)
    ]
    if len(names) == 1:
        return names[0]
    return f"{len(names)} kelurahan offices of {topology.city}" if names else topology.city


def _write(
    dataset: Dataset, topology: Topology, period: str, directory: Path, now: dt.datetime
) -> tuple[list[Path], int]:
    stem = f"{dataset.slug}-{period}"
    csv_path, meta_path = directory / f"{stem}.csv", directory / f"{stem}.json"
    suppressed = 0
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([v.name for v in dataset.variables])
        for *keys, count in dataset.rows:
            suppressed += 0 < count < SUPPRESS_BELOW
            writer.writerow([*keys, _suppress(count)])
    steward = topology.agencies_by_code.get("kominfo")
    metadata = {
        "title": f"{dataset.title}, {topology.city}, {period}",
        "title_id": f"{dataset.title_id}, {topology.city}, {period}",
        "description": dataset.description,
        "producer": _producer(topology, dataset.event_type),
        "data_steward": steward.name if steward else None,
        "region": {"name": topology.city, "code": topology.region_code},
        "period": period,
        "frequency": "monthly",
        "timezone": TIMEZONE,
        "source": f"Simpul central store, event type {dataset.event_type}",
        "variables": [
            {k: v for k, v in asdict(variable).items() if v is not None}
            for variable in dataset.variables
        ],
        "rows": len(dataset.rows),
        "disclosure_control": (
            f"Counts from 1 to {SUPPRESS_BELOW - 1} are published as '{SUPPRESSED}'; "
            f"{suppressed} cells suppressed. No totals, so suppressed cells cannot be derived."
        ),
        "license": LICENSE,
        "license_url": LICENSE_URL,
        "format": "text/csv",
        "file": csv_path.name,
        "generated_at": now.isoformat(),
    }
    meta_path.write_text(json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return [csv_path, meta_path], suppressed


def export_open_data(
    engine: Engine,
    topology: Topology,
    period: str,
    out: Path,
    now: dt.datetime | None = None,
) -> ExportResult:
    """Write the three datasets of ``period`` (YYYY-MM) to ``out`` as CSV + metadata JSON."""
    start, end = parse_period(period)
    out.mkdir(parents=True, exist_ok=True)
    now = now or dt.datetime.now(dt.UTC)
    datasets: Iterable[Dataset] = (
        _permits(engine, topology, start, end),
        _letters(engine, topology, start, end),
        _recipients(engine, topology),
    )
    files: list[Path] = []
    rows: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    for dataset in datasets:
        written, hidden = _write(dataset, topology, period, out, now)
        files += written
        rows[dataset.slug] = len(dataset.rows)
        suppressed[dataset.slug] = hidden
    return ExportResult(out, files, rows, suppressed)
